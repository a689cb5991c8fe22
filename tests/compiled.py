"""A training step under ``torch.compile(fullgraph=True)`` against eager (used by test_ops.py and
test_variants.py)."""
import torch


def compare_compiled_step(step, logits, compiler: str) -> None:
    """``step(logits) -> (loss, metric)`` compiled with ``fullgraph=True`` equals eager: loss, metric
    and the logits' gradient."""
    compiled = torch.compile(step, fullgraph=True, backend=compiler)
    eager_logits = logits.clone().requires_grad_(True)
    compiled_logits = logits.clone().requires_grad_(True)
    eager_loss, eager_metric = step(eager_logits)
    compiled_loss, compiled_metric = compiled(compiled_logits)
    eager_loss.backward()
    compiled_loss.backward()
    assert torch.allclose(compiled_loss, eager_loss, rtol=1e-6)
    assert torch.allclose(compiled_metric, eager_metric)
    assert torch.allclose(compiled_logits.grad, eager_logits.grad, rtol=1e-6, atol=1e-9)
