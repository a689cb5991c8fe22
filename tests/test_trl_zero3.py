"""ActFocusGRPOTrainer under DeepSpeed ZeRO-3 on 2 CPU processes equals stock TRL 1.16 (issue 24): the
LM head, partitioned outside its forward, is gathered by running the loss as the head module's forward
(``integrations.trl.model.head_call``). The ranks are spawned by ``distributed.run_ranks`` (bounded in
time, none outlives the test); accelerate takes them as torchrun's (``zero3_checks``)."""
from __future__ import annotations

import pytest

pytest.importorskip("trl")
pytest.importorskip("deepspeed")

from distributed import run_ranks  # noqa: E402
from toy_lm import toy_model_dir  # noqa: E402
from zero3_checks import check_zero3_equal_to_stock_trl  # noqa: E402


def test_zero3_on_two_ranks_equals_stock_trl(tmp_path, monkeypatch):
    # DeepSpeed compiles its shared-memory collective on first use: kept with the test's files
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))
    model_dir = toy_model_dir(tmp_path / "model")
    run_ranks(check_zero3_equal_to_stock_trl, 2, model_dir, str(tmp_path / "out"), timeout_s=420)
