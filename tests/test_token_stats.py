"""token_stats against the float64 judge (SPEC sections 2 and 6)."""
import pytest
import torch

from actfocus_kernels import token_stats
from actfocus_kernels.testing import OUTPUT_RTOL, assert_rel_close

from judge import judge_stats


def check(logits, targets, temperature, backend, ignore_index=-100):
    stats = token_stats(logits, targets, temperature, backend=backend, ignore_index=ignore_index)
    expected = judge_stats(logits.double(), targets, temperature, ignore_index)
    for name, value, ref in zip(("logp", "energy", "entropy"), stats, expected):
        assert value.dtype == torch.float32 and value.shape == targets.shape
        assert torch.isfinite(value).all(), name
        assert_rel_close(value, ref, OUTPUT_RTOL, name)
    return stats


@pytest.mark.parametrize("vocab", [1000, 4099])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_judge(backend, device, vocab, dtype, temperature):
    g = torch.Generator().manual_seed(vocab)
    logits = (torch.randn(3, 4, vocab, generator=g) * 3).to(dtype).to(device)
    targets = torch.randint(0, vocab, (3, 4), generator=g).to(device)
    targets[1, 2] = -100
    stats = check(logits, targets, temperature, backend)
    assert stats.logp[1, 2] == 0


def test_packed_rows_and_other_leading_shapes(backend, device):
    logits = torch.randn(2, 3, 2, 50, device=device)
    targets = torch.randint(0, 50, (2, 3, 2), device=device)
    check(logits, targets, 1.0, backend)
    check(logits.reshape(-1, 50), targets.reshape(-1), 1.0, backend)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_extreme_logits(backend, device, temperature):
    vocab = 257
    logits = torch.randn(6, vocab, device=device)
    logits[0] = 1e4
    logits[0, 7] = -1e4  # huge spread
    logits[1] = float("-inf")
    logits[1, 3] = 2.0  # one finite entry
    logits[2] = 0.0  # all equal: entropy log V
    logits[3, :100] = float("-inf")  # padded vocabulary
    logits[4] = -1e4
    logits[4, 11] = 1e4
    targets = torch.tensor([7, 3, 5, 150, 11, 0], device=device)
    stats = check(logits, targets, temperature, backend)
    assert stats.logp[1] == 0 and stats.entropy[1] == 0
    assert torch.isclose(stats.entropy[2].double(), torch.log(torch.tensor(float(vocab), dtype=torch.float64)))


def test_strided_logits_are_accepted(backend, device):
    full = torch.randn(2, 6, 101, device=device)
    shifted = full[:, :-1]  # the usual one-token shift: not viewable as rows
    targets = torch.randint(0, 101, (2, 5), device=device)
    check(shifted, targets, 1.0, backend)
    check(full.transpose(0, 1), torch.randint(0, 101, (6, 2), device=device), 1.0, backend)


def test_empty_batch(backend, device):
    stats = token_stats(torch.randn(0, 10, device=device), torch.zeros(0, dtype=torch.long, device=device),
                        backend=backend)
    assert all(x.shape == (0,) for x in stats)


def test_grad_only_when_asked(backend, device):
    # SPEC section 5: differentiable when the logits require grad (tests/test_differentiable_stats.py
    # checks the values); nothing is recorded under no_grad or for logits without grad
    logits = torch.randn(4, 30, device=device, requires_grad=True)
    targets = torch.randint(0, 30, (4,), device=device)
    assert all(x.requires_grad for x in token_stats(logits, targets, backend=backend))
    with torch.no_grad():
        assert not any(x.requires_grad for x in token_stats(logits, targets, backend=backend))
    assert not any(x.requires_grad for x in token_stats(logits.detach(), targets, backend=backend))
