"""ActFocusGRPOTrainer (ActFocus off) on 2 CPU processes equals stock TRL 1.16 (SPEC 9): DDP through
accelerate; FSDP2 through torch's ``fully_shard`` (accelerate does not take FSDP on CPU), the LM head
in the root group, and sharded on its own (``trl_distributed_checks``). The ranks are spawned by
``distributed.run_ranks`` (bounded in time, none outlives the test) rather than torchrun;
accelerate takes them as torchrun's through the environment."""
from __future__ import annotations

import pytest

pytest.importorskip("trl")

from distributed import run_ranks  # noqa: E402
from toy_lm import toy_model_dir  # noqa: E402
from trl_distributed_checks import every_check  # noqa: E402


def test_ddp_and_fsdp2_on_two_ranks_equal_stock_trl(tmp_path):
    model_dir = toy_model_dir(tmp_path / "model")
    run_ranks(every_check, 2, model_dir, str(tmp_path / "out"), timeout_s=300)
