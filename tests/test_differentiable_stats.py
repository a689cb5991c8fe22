"""``token_stats`` and ``linear_token_stats`` are differentiable (SPEC section 5): exact gradients of
``logp``, ``energy`` and ``entropy`` against float64 autograd of the judge, every backend; the linear
one with no N x V intermediate."""
import pytest
import torch

from actfocus_kernels import linear_token_stats, token_stats
from actfocus_kernels.testing import GRAD_RTOL, assert_rel_close

from judge import judge_stats


def incoming(shape, seed, which):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) if name in which else None for name in ("logp", "energy", "entropy")]


def weighted_sum(stats, grads, device):
    return sum((value * grad.to(device)).sum() for value, grad in zip(stats, grads) if grad is not None)


@pytest.mark.parametrize("which", [("logp", "energy", "entropy"), ("logp",), ("entropy",), ("energy",)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_stats_gradient(backend, device, which, dtype):
    g = torch.Generator().manual_seed(len(which))
    logits = (torch.randn(2, 5, 37, generator=g) * 2).to(dtype)
    targets = torch.randint(0, 37, (2, 5), generator=g)
    targets[1, 2] = -100
    grads = incoming((2, 5), 7, which)
    reference = logits.double().requires_grad_(True)
    weighted_sum(judge_stats(reference, targets, 0.8), grads, "cpu").backward()
    ours = logits.to(device).requires_grad_(True)
    weighted_sum(token_stats(ours, targets.to(device), 0.8, backend=backend), grads, device).backward()
    assert ours.grad.dtype == dtype
    assert_rel_close(ours.grad.cpu(), reference.grad, GRAD_RTOL[dtype], "dlogits")


def test_token_stats_without_grad_is_unchanged(backend, device):
    logits = torch.randn(3, 20, device=device)
    stats = token_stats(logits, torch.zeros(3, dtype=torch.long, device=device), backend=backend)
    assert not stats.logp.requires_grad


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_token_stats_gradient(backend, device, chunk_size, with_bias):
    g = torch.Generator().manual_seed(3)
    hidden, weight = torch.randn(2, 4, 16, generator=g), torch.randn(40, 16, generator=g) / 4
    bias = torch.randn(40, generator=g) if with_bias else None
    targets = torch.randint(0, 40, (2, 4), generator=g)
    grads = incoming((2, 4), 11, ("logp", "energy", "entropy"))
    params = {"hidden": hidden, "weight": weight} | ({"bias": bias} if with_bias else {})
    reference = {k: v.double().requires_grad_(True) for k, v in params.items()}
    logits = reference["hidden"] @ reference["weight"].T + (reference["bias"] if with_bias else 0)
    weighted_sum(judge_stats(logits, targets, 1.3), grads, "cpu").backward()
    ours = {k: v.to(device).requires_grad_(True) for k, v in params.items()}
    stats = linear_token_stats(ours["hidden"], ours["weight"], targets.to(device), 1.3, bias=ours.get("bias"),
                               chunk_size=chunk_size, backend=backend)
    weighted_sum(stats, grads, device).backward()
    for name in params:
        assert_rel_close(ours[name].grad.cpu(), reference[name].grad, 1e-5, name)


def test_linear_token_stats_gradient_needs_no_n_by_v_buffer(backend, device):
    from torch.utils._python_dispatch import TorchDispatchMode

    n, vocab, chunk = 64, 500, 8
    hidden = torch.randn(n, 16, device=device, requires_grad=True)
    weight = torch.randn(vocab, 16, device=device, requires_grad=True)
    targets = torch.randint(0, vocab, (n,), device=device)
    largest = []

    class Allocations(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for value in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(value, torch.Tensor):
                    largest.append(value.numel())
            return out

    with Allocations():
        stats = linear_token_stats(hidden, weight, targets, chunk_size=chunk, backend=backend)
        (stats.logp.sum() + stats.entropy.sum()).backward()
    assert max(largest) < n * vocab
    assert hidden.grad.shape == hidden.shape and weight.grad.shape == weight.shape
