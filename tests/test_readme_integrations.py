"""The README's "Use with TRL", "Use with verl" and "Use with OpenRLHF" snippets run as written (at most
10 lines each; OpenRLHF's with torch alone).

The only substitution: the TRL snippet's Hub model id becomes a local directory holding a tiny
random Qwen2 and its tokenizer (``toy_lm``), so that nothing is downloaded.
"""
import re
from pathlib import Path

import pytest
import torch

from toy_lm import toy_model_dir, toy_tokenizer

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


def snippet(section: str) -> str:
    """The first ```python block of the README section headed ``## <section>``."""
    text = README.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", body, flags=re.DOTALL)
    assert match, f"no python block under '## {section}'"
    return match.group(1)


@pytest.mark.parametrize("section", ["Use with TRL", "Use with verl", "Use with OpenRLHF"])
def test_snippet_is_short(section):
    assert len(snippet(section).strip().splitlines()) <= 10


def test_use_with_trl_runs(tmp_path, monkeypatch):
    pytest.importorskip("trl")
    code = snippet("Use with TRL")
    assert HUB_MODEL in code
    model_dir = toy_model_dir(tmp_path / "model")
    toy_tokenizer().save_pretrained(model_dir)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code.replace(HUB_MODEL, model_dir), "README: Use with TRL", "exec"), namespace)
    history = namespace["trainer"].state.log_history
    assert any("actfocus/energy_action" in h for h in history)


def test_use_with_verl_runs():
    pytest.importorskip("verl")
    namespace = {}
    exec(compile(snippet("Use with verl"), "README: Use with verl", "exec"), namespace)
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

    assert "actfocus" in POLICY_LOSS_REGISTRY
    weights = namespace["batch"]["rollout_is_weights"]
    assert weights.shape == (2, 6) and float(weights.max()) > 0


def test_use_with_openrlhf_runs():
    namespace = {}
    exec(compile(snippet("Use with OpenRLHF"), "README: Use with OpenRLHF", "exec"), namespace)
    grad = namespace["log_probs"].grad
    assert grad is not None and float(grad.abs().sum()) > 0
    assert namespace["vllm_kl"] is None and namespace["is_filter_ratio"] is None
    assert torch.isfinite(namespace["loss"]) and 0 <= float(namespace["clip_ratio"]) <= 1
