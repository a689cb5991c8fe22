"""The gradient pass of given per-row coefficients (``row_gradient``) on every backend against
float64 autograd: ``dz = a dlogp/dz + (a - b) dlse/dz - h dH/dz`` with ``lse = logsumexp(z / T)``
(``a = 0`` where the target is ignored: no one-hot term)."""
import pytest
import torch

from actfocus_kernels.contract import RowGradientInputs
from actfocus_kernels.ops.routing import row_kernels
from actfocus_kernels.testing import GRAD_RTOL, assert_rel_close

from judge import judge_stats

IGNORE = -100


def judge_row_gradient(logits, targets, a, b, h, temperature):
    z = logits.detach().double().requires_grad_(True)
    logp, energy, entropy = judge_stats(z, targets, temperature, IGNORE)
    lse = -energy / temperature
    a = torch.where(targets != IGNORE, a.double(), 0.0)  # no one-hot term (nor its -a p) where y is ignored
    objective = (a * logp + (a - b.double()) * lse - h.double() * entropy).sum()
    (grad,) = torch.autograd.grad(objective, z)
    return grad


def coefficients(n, device, seed):
    g = torch.Generator().manual_seed(seed)
    a, b, h = (torch.randn(n, generator=g).to(device) for _ in range(3))
    a[2] = b[2] = h[2] = 0.0  # an inactive row
    b[3] = a[3]  # the fused policy loss's a = b
    return a, b, h


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_matches_float64_autograd(backend, device, dtype, temperature):
    n, vocab = 7, 301
    g = torch.Generator().manual_seed(int(temperature * 10))
    logits = (torch.randn(n, vocab, generator=g) * 3).to(dtype).to(device)
    logits[2] = float("nan")  # inactive: exactly 0 whatever it holds
    logits[4, ::3] = float("-inf")  # a padded vocabulary
    targets = torch.randint(0, vocab, (n,), generator=g).to(device)
    targets[5] = IGNORE  # energy and entropy still have a gradient, no one-hot term
    a, b, h = coefficients(n, device, seed=n)
    inputs = RowGradientInputs(targets=targets, target_coef=a, prob_coef=b, centred_coef=h,
                               temperature=temperature, logit_scale=1.0, softcap=0.0, ignore_index=IGNORE)
    dlogits = torch.full_like(logits, float("nan"))
    row_kernels(backend).row_gradient(logits, inputs, dlogits)
    active = torch.arange(n, device=device) != 2
    expected = judge_row_gradient(logits[active].cpu(), targets[active].cpu(), a[active].cpu(), b[active].cpu(),
                                  h[active].cpu(), temperature)
    assert torch.all(dlogits[2] == 0)
    assert dlogits.dtype == dtype
    assert_rel_close(dlogits[active].cpu(), expected, GRAD_RTOL[dtype], "dlogits")


def test_in_place(backend, device):
    logits = torch.randn(4, 50, device=device)
    targets = torch.randint(0, 50, (4,), device=device)
    a, b, h = (torch.randn(4, device=device) for _ in range(3))
    inputs = RowGradientInputs(targets=targets, target_coef=a, prob_coef=b, centred_coef=h, temperature=1.0,
                               logit_scale=1.0, softcap=0.0, ignore_index=IGNORE)
    expected = judge_row_gradient(logits.cpu(), targets.cpu(), a.cpu(), b.cpu(), h.cpu(), 1.0)
    row_kernels(backend).row_gradient(logits, inputs, logits)
    assert_rel_close(logits.cpu(), expected, GRAD_RTOL[torch.float32], "in-place dlogits")
