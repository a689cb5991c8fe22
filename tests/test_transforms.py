"""The logit transform (``logit_scale``, ``softcap``), the extra statistics and the fp32 head of
SPEC 10 at the op level: every backend of the machine against the float64 judge (tests/judge.py),
in-place gradients, the linear ops, ``logits_dtype=float32`` and parity with TRL 1.16's own
``ChunkedLogProbFunction`` (its torch path). The native kernels of this branch take only the
defaults: their transformed calls must refuse clearly (ops/routing.py)."""
from __future__ import annotations

import pytest
import torch

from actfocus_kernels.contract import RowGradientInputs, RowLossInputs, TokenStatsOutputs
from actfocus_kernels.testing import GRAD_RTOL, OUTPUT_RTOL, assert_rel_close, relative_error

from judge import judge_extra_stats, judge_stats

try:  # a one-op kernel around the Triton kernels' tanh (conftest switched the interpreter on before this)
    import triton
    import triton.language as tl

    from actfocus_kernels.triton.row_stats import tanh as triton_tanh

    @triton.jit
    def _tanh_kernel(x_ptr, out_ptr, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(out_ptr + offs, triton_tanh(tl.load(x_ptr + offs)))
except ImportError:
    _tanh_kernel = None

IGNORE = -100
# (logit_scale, softcap): the defaults, a scale alone, a cap alone, both (softcap 0 = off at the op level)
TRANSFORMS = [(1.0, 0.0), (0.6, 0.0), (1.0, 4.0), (2.5, 7.0)]
TOKEN_STATS_NAMES = ("logp", "energy", "entropy")


def rows(n: int, vocab: int, dtype, device, seed: int):
    """Logits ``[n, vocab]`` with entries large enough to saturate the cap (``|z| ~ 60``), ``-inf``
    entries, an ignored target, a target at the row's max and a saturated tie before the max."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=g) * 4
    logits[1] *= 15  # scale * z / softcap far beyond tanh's fp32 saturation
    logits[2, ::5] = float("-inf")  # an excluded (padded) vocabulary
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[3] = IGNORE
    targets[4] = logits[4].argmax()
    logits[5, 3], logits[5, 7] = 200.0, 300.0  # both saturate to the same capped value: index 3 is the top-1
    targets[5] = 7
    logits[2, targets[2]] = logits[2, 1]  # the target itself finite (index 1 is not a multiple of 5)
    return logits.to(dtype).to(device), targets.to(device)


def judge_inputs(logits: torch.Tensor) -> torch.Tensor:
    """The float64 judge's input: the same (rounded) values, upcast."""
    return logits.detach().double().cpu()


def token_stats_op(logits, targets, temperature, logit_scale, softcap, extra_stats, backend) -> TokenStatsOutputs:
    return TokenStatsOutputs(*torch.ops.actfocus.token_stats(logits, targets, temperature, IGNORE,
                                                             logit_scale=logit_scale,
                                          softcap=softcap, extra_stats=extra_stats, backend=backend))


def check_is_top1(value: torch.Tensor, expected: torch.Tensor, s: torch.Tensor, targets: torch.Tensor) -> None:
    """``is_top1`` equals the judge's except where the target's ``s`` ties the max within fp32 rounding."""
    safe = torch.where(targets != IGNORE, targets, 0).cpu()
    gap = (s.max(-1).values - s.gather(-1, safe.unsqueeze(-1)).squeeze(-1)).abs()
    near_tie = gap <= 1e-6 * (1 + s.max(-1).values.abs())
    differs = value.cpu() != expected
    assert not (differs & ~near_tie).any(), f"is_top1 {value.tolist()} != judge {expected.tolist()}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("logit_scale,softcap", TRANSFORMS)
def test_token_stats_and_extras_match_judge(backend, device, dtype, logit_scale, softcap):
    logits, targets = rows(8, 97, dtype, device, seed=int(10 * logit_scale + softcap))
    stats = token_stats_op(logits, targets, 0.7, logit_scale, softcap, True, backend)
    z = judge_inputs(logits)
    expected = judge_stats(z, targets.cpu(), 0.7, IGNORE, logit_scale, softcap or None)
    for name, value, ref in zip(TOKEN_STATS_NAMES, stats, expected):
        assert value.dtype == torch.float32 and torch.isfinite(value).all(), name
        assert_rel_close(value, ref, OUTPUT_RTOL, name)
    log_sum_sq, mean_logits, is_top1, s = judge_extra_stats(z, targets.cpu(), 0.7, IGNORE, logit_scale,
                                                            softcap or None)
    assert_rel_close(stats.log_sum_sq_probs, log_sum_sq, OUTPUT_RTOL, "log_sum_sq_probs")
    finite = torch.isfinite(mean_logits)
    assert torch.equal(stats.mean_logits.cpu()[~finite], mean_logits[~finite].float())  # -inf logits: -inf mean
    assert_rel_close(stats.mean_logits[finite], mean_logits[finite], OUTPUT_RTOL, "mean_logits")
    assert stats.is_top1.dtype == torch.bool
    check_is_top1(stats.is_top1, is_top1, s, targets)
    assert bool(stats.is_top1[4]) and not bool(stats.is_top1[3])
    if softcap:
        assert not bool(stats.is_top1[5])  # tied with an earlier saturated entry


def test_extras_off_are_empty(backend, device):
    logits, targets = rows(8, 40, torch.float32, device, seed=3)
    stats = token_stats_op(logits, targets, 1.0, 1.0, 0.0, False, backend)
    assert [tuple(x.shape) for x in stats[3:]] == [(0,), (0,), (0,)]
    assert [x.dtype for x in stats[3:]] == [torch.float32, torch.float32, torch.bool]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("logit_scale,softcap", TRANSFORMS)
def test_token_stats_gradient_through_the_transform(backend, device, dtype, logit_scale, softcap):
    logits, targets = rows(8, 97, dtype, device, seed=5)
    g = torch.Generator().manual_seed(6)
    weights = [torch.randn(8, generator=g) for _ in range(3)]
    ours = logits.detach().clone().requires_grad_(True)
    stats = token_stats_op(ours, targets, 0.8, logit_scale, softcap, False, backend)
    sum(w.to(device) * x for w, x in zip(weights, stats[:3])).sum().backward()
    z = judge_inputs(logits).requires_grad_(True)
    sum(w.double() * x for w, x in zip(weights, judge_stats(z, targets.cpu(), 0.8, IGNORE, logit_scale,
                                                            softcap or None))).sum().backward()
    assert ours.grad.dtype == dtype
    assert_rel_close(ours.grad, z.grad, GRAD_RTOL[dtype], "dlogits")


def judge_row_loss(logits: torch.Tensor, row: RowLossInputs):
    """float64 ``sum_t token_loss_t`` of SPEC 4's fused loss (PPO clip, k3 KL, entropy bonus) over the
    transformed logits, and its gradient by autograd."""
    z = judge_inputs(logits).requires_grad_(True)
    logp, _, entropy = judge_stats(z, row.targets.cpu(), row.temperature, IGNORE, row.logit_scale,
                                   row.softcap or None)
    old, adv, ref, w, scale = (x.double().cpu() for x in (row.old_logp, row.advantages, row.ref_logp, row.weights,
                                                          row.scale))
    ratio = torch.exp(logp - old)
    pg = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - row.clip_low, 1 + row.clip_high))
    kl = torch.exp(ref - logp) - (ref - logp) - 1
    active = (scale != 0) & (row.targets.cpu() != IGNORE)
    token = torch.where(active, scale * (w * pg + row.kl_coef * kl - row.entropy_coef * entropy), 0.0)
    loss = token.sum()
    loss.backward()
    return loss.detach(), z.grad


def loss_rows(n: int, vocab: int, dtype, device, logit_scale: float, softcap: float):
    logits, targets = rows(n, vocab, dtype, device, seed=7)
    g = torch.Generator().manual_seed(8)
    logp = judge_stats(judge_inputs(logits), targets.cpu(), 0.9, IGNORE, logit_scale, softcap or None)[0].float()
    scale = torch.rand(n, generator=g)
    scale[6] = 0.0  # an inactive row
    row = RowLossInputs(
        targets=targets, old_logp=(logp + 0.3 * torch.randn(n, generator=g)).to(device),
        advantages=torch.randn(n, generator=g).to(device),
        ref_logp=(logp + 0.2 * torch.randn(n, generator=g)).to(device),
        weights=(torch.rand(n, generator=g) + 0.5).to(device), scale=scale.to(device), temperature=0.9,
        logit_scale=logit_scale, softcap=softcap, clip_low=0.2, clip_high=0.28, dual_clip=0.0, kl_coef=0.1,
        kl_type=3, entropy_coef=0.05, ignore_index=IGNORE)
    return logits, row


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("logit_scale,softcap", TRANSFORMS)
def test_policy_loss_functional_and_in_place_match_judge(backend, device, dtype, logit_scale, softcap):
    logits, row = loss_rows(8, 97, dtype, device, logit_scale, softcap)
    expected_loss, expected_grad = judge_row_loss(logits, row)
    loss, *_per_token, dlogits = torch.ops.actfocus.policy_loss(logits, **row.as_kwargs(), compute_grad=True,
                                                                 backend=backend)
    assert_rel_close(loss, expected_loss, OUTPUT_RTOL, "loss")
    assert_rel_close(dlogits, expected_grad, GRAD_RTOL[dtype], "dlogits")
    buffer = logits.clone()
    in_place = torch.ops.actfocus.policy_loss_inplace(buffer, **row.as_kwargs(), backend=backend)
    assert torch.equal(in_place[0], loss)
    assert torch.equal(buffer, dlogits)  # the gradient written over the logits, bit for bit


@pytest.mark.parametrize("logit_scale,softcap", TRANSFORMS)
def test_row_gradient_in_place_equals_out_of_place(backend, device, logit_scale, softcap):
    logits, targets = rows(8, 97, torch.float32, device, seed=9)
    g = torch.Generator().manual_seed(10)
    a, b, h = (torch.randn(8, generator=g).to(device) for _ in range(3))
    inputs = RowGradientInputs(targets, a, b, h, 0.8, logit_scale, softcap, IGNORE)
    out = torch.ops.actfocus.row_gradient(logits, **inputs.as_kwargs(), backend=backend)
    buffer = logits.clone()
    torch.ops.actfocus.row_gradient_inplace(buffer, **inputs.as_kwargs(), backend=backend)
    assert torch.equal(buffer, out)


def test_minus_inf_stays_excluded_under_the_cap(backend, device):
    """A ``-inf`` logit has probability 0 and no gradient under the cap (it does not become ``-softcap``)."""
    logits = torch.tensor([[0.5, float("-inf"), 1.0, -2.0]], device=device)
    targets = torch.tensor([2], device=device)
    ours = logits.clone().requires_grad_(True)
    stats = token_stats_op(ours, targets, 1.0, 1.0, 3.0, False, backend)
    finite = logits[:, [0, 2, 3]]
    expected = judge_stats(judge_inputs(finite), torch.tensor([1]), 1.0, IGNORE, 1.0, 3.0)
    for name, value, ref in zip(TOKEN_STATS_NAMES, stats, expected):
        assert_rel_close(value, ref, OUTPUT_RTOL, name)
    (stats[0] + stats[2]).sum().backward()
    assert ours.grad[0, 1] == 0 and torch.isfinite(ours.grad).all()


# --- the linear ops ----------------------------------------------------------------------------


def linear_inputs(n: int, hidden_size: int, vocab: int, dtype, device, seed: int):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, hidden_size, generator=g)
    weight = torch.randn(vocab, hidden_size, generator=g) * (3 / hidden_size ** 0.5)
    bias = torch.randn(vocab, generator=g)
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[2] = IGNORE
    return (*(x.to(dtype).to(device) for x in (hidden, weight, bias)), targets.to(device))


def linear_stats_op(hidden, weight, bias, targets, logit_scale, softcap, extra_stats, logits_dtype, backend,
                    temperature=0.9) -> TokenStatsOutputs:
    return TokenStatsOutputs(*torch.ops.actfocus.linear_token_stats(
        hidden, weight, bias, targets, None, temperature, IGNORE, logit_scale=logit_scale, softcap=softcap,
        extra_stats=extra_stats, logits_dtype=logits_dtype, chunk_size=3, backend=backend))


@pytest.mark.parametrize("logit_scale,softcap", TRANSFORMS)
def test_linear_token_stats_matches_judge_with_gradients(backend, device, logit_scale, softcap):
    hidden, weight, bias, targets = linear_inputs(7, 16, 50, torch.float32, device, seed=11)
    params = [x.clone().requires_grad_(True) for x in (hidden, weight, bias)]
    stats = linear_stats_op(*params, targets, logit_scale, softcap, True, None, backend)
    (stats[0] + 0.5 * stats[1] - stats[2]).sum().backward()
    judged = [judge_inputs(x).requires_grad_(True) for x in (hidden, weight, bias)]
    z = judged[0] @ judged[1].T + judged[2]
    expected = judge_stats(z, targets.cpu(), 0.9, IGNORE, logit_scale, softcap or None)
    (expected[0] + 0.5 * expected[1] - expected[2]).sum().backward()
    for name, value, ref in zip(TOKEN_STATS_NAMES, stats, expected):
        assert_rel_close(value, ref, OUTPUT_RTOL, name)
    extras = judge_extra_stats(z.detach(), targets.cpu(), 0.9, IGNORE, logit_scale, softcap or None)
    assert_rel_close(stats.log_sum_sq_probs, extras[0], OUTPUT_RTOL, "log_sum_sq_probs")
    assert_rel_close(stats.mean_logits, extras[1], OUTPUT_RTOL, "mean_logits")
    check_is_top1(stats.is_top1, extras[2], extras[3], targets)
    for name, param, ref in zip(("hidden", "head_weight", "head_bias"), params, judged):
        assert_rel_close(param.grad, ref.grad, GRAD_RTOL[torch.float32], name)


@pytest.mark.parametrize("logit_scale,softcap", [(1.0, 0.0), (2.5, 7.0)])
def test_fp32_logits_from_a_bf16_head(backend, device, logit_scale, softcap):
    """bf16 hidden states and head with ``logits_dtype=float32`` equal a float64 computation from the
    same bf16 values within 1e-5 (relative); the default bf16 path's error is printed beside it."""
    hidden, weight, bias, targets = linear_inputs(9, 64, 80, torch.bfloat16, device, seed=12)
    z = judge_inputs(hidden) @ judge_inputs(weight).T + judge_inputs(bias)
    expected = judge_stats(z, targets.cpu(), 0.9, IGNORE, logit_scale, softcap or None)
    wide = linear_stats_op(hidden, weight, bias, targets, logit_scale, softcap, False, torch.float32, backend)
    narrow = linear_stats_op(hidden, weight, bias, targets, logit_scale, softcap, False, None, backend)
    for name, value, rounded, ref in zip(TOKEN_STATS_NAMES, wide, narrow, expected):
        print(f"{backend} {name}: logits_dtype=float32 error {relative_error(value, ref):.2e}, "
              f"bf16 logits {relative_error(rounded, ref):.2e}")
        assert_rel_close(value, ref, 1e-5, name)
    assert relative_error(narrow[2], expected[2]) > relative_error(wide[2], expected[2])


def test_fp32_logits_gradients_round_once(backend, device):
    """With ``logits_dtype=float32`` the head's gradients are the float64 ones rounded once to bf16."""
    hidden, weight, bias, targets = linear_inputs(9, 32, 40, torch.bfloat16, device, seed=13)
    params = [x.clone().requires_grad_(True) for x in (hidden, weight, bias)]
    stats = linear_stats_op(*params, targets, 1.0, 5.0, False, torch.float32, backend)
    (stats[0] - 0.1 * stats[2]).sum().backward()
    judged = [judge_inputs(x).requires_grad_(True) for x in (hidden, weight, bias)]
    expected = judge_stats(judged[0] @ judged[1].T + judged[2], targets.cpu(), 0.9, IGNORE, 1.0, 5.0)
    (expected[0] - 0.1 * expected[2]).sum().backward()
    for name, param, ref in zip(("hidden", "head_weight", "head_bias"), params, judged):
        assert param.grad.dtype == torch.bfloat16
        # one bf16 rounding of an fp32-exact value: within half an ulp (2^-9 relative) of float64
        assert_rel_close(param.grad, ref.grad, 2 ** -8, name)


def test_linear_policy_loss_with_transform_matches_logits_op(backend, device):
    """``linear_policy_loss`` with the transform and fp32 logits equals ``policy_loss`` on the
    materialised fp32 logits (loss, and the head's gradients by the chain rule)."""
    hidden, weight, bias, targets = linear_inputs(8, 32, 97, torch.bfloat16, device, seed=14)
    z = hidden.float() @ weight.float().T + bias.float()
    _, row = loss_rows(8, 97, torch.float32, device, 2.5, 7.0)
    row = RowLossInputs(**{**row.as_kwargs(), "targets": targets})
    loss, *_, dlogits = torch.ops.actfocus.policy_loss(z, **row.as_kwargs(), compute_grad=True, backend=backend)
    out = torch.ops.actfocus.linear_policy_loss(
        hidden, weight, bias, **row.as_kwargs(), logits_dtype=torch.float32, chunk_size=3, grad_hidden=True,
        grad_weight=True, grad_bias=True, backend=backend)
    assert_rel_close(out[0], loss, OUTPUT_RTOL, "loss")
    assert_rel_close(out[-3], (dlogits @ weight.float()), 2 ** -8, "grad_hidden")
    assert_rel_close(out[-2], (dlogits.T @ hidden.float()), 2 ** -8, "grad_weight")
    assert_rel_close(out[-1], dlogits.sum(0), 2 ** -8, "grad_bias")


# --- parity with TRL 1.16's fused LM head --------------------------------------------------------

TRL_OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


@pytest.mark.parametrize("temperature,logit_scale,softcap", [(1.0, 1.0, None), (0.7, 1.0, None), (0.9, 0.25, None),
                                                             (1.0, 1.0, 30.0), (0.7, 2.0, 5.0)])
def test_parity_with_trl_chunked_logprob(backend, device, temperature, logit_scale, softcap):
    """Per token, ``actfocus::linear_token_stats`` (hidden + head) agrees within 1e-5 with TRL 1.16.0's
    own ``ChunkedLogProbFunction`` (its torch path) on log-probs, entropy, ``log_sum_sq_probs``,
    ``mean_logits`` and ``is_top1`` for the same inputs and options. Definitions that differ (docs/
    transforms.md): an ignored target (TRL has no ignore index: compared on the other tokens) and a
    ``-inf`` logit under the cap (TRL counts it as ``-softcap``; none here)."""
    chunked_logprob = pytest.importorskip("trl.kernels.chunked_logprob")
    hidden, weight, bias, targets = linear_inputs(12, 32, 300, torch.float32, device, seed=15)
    hidden[5] *= 20  # logits far into the cap's saturation
    targets[4] = torch.argmax(hidden[4] @ weight.T + bias)
    theirs = chunked_logprob.ChunkedLogProbFunction.apply(
        hidden.cpu(), weight.cpu(), bias.cpu(), torch.where(targets != IGNORE, targets, 0).cpu(), temperature, 128,
        softcap, logit_scale, TRL_OUTPUTS)
    ours = linear_stats_op(hidden, weight, bias, targets, logit_scale, softcap or 0.0, True, None, backend,
                           temperature=temperature)
    active = (targets != IGNORE).cpu()
    pairs = {"logp": (ours.logp, theirs[0]), "entropy": (ours.entropy, theirs[1]),
             "log_sum_sq_probs": (ours.log_sum_sq_probs, theirs[2]), "mean_logits": (ours.mean_logits, theirs[3])}
    for name, (value, trl_value) in pairs.items():
        value, trl_value = value.cpu()[active].double(), trl_value[active].double()
        error = ((value - trl_value).abs() / trl_value.abs().clamp(min=1.0)).max().item()
        assert error <= 1e-5, f"{name}: {error:.2e} from TRL"
    assert torch.equal(ours.is_top1.cpu()[active], theirs[4][active])
    assert bool(ours.is_top1[4])


@pytest.mark.parametrize("field,value", [("logit_scale", 0.0), ("logit_scale", -1.0), ("logit_scale", float("nan")),
                                         ("logit_scale", float("inf")), ("softcap", -1.0), ("softcap", float("nan")),
                                         ("softcap", float("inf"))])
def test_bad_transform_values_name_the_field(field, value):
    logits, row = loss_rows(8, 40, torch.float32, "cpu", 1.0, 0.0)
    transform = {"logit_scale": 1.0, "softcap": 0.0, field: value}
    calls = [
        lambda: token_stats_op(logits, row.targets, 1.0, transform["logit_scale"], transform["softcap"], False,
                               "reference"),
        lambda: torch.ops.actfocus.policy_loss(logits, **{**row.as_kwargs(), **transform}, compute_grad=False,
                                               backend="reference"),
        lambda: torch.ops.actfocus.row_gradient(logits, row.targets, row.scale, row.scale, row.scale, 1.0,
                                                ignore_index=IGNORE, backend="reference", **transform),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=field):
            call()


def test_nan_propagates_on_active_rows_only_under_the_transform(backend, device):
    """SPEC 2 under the transform: a NaN logit makes its active row's outputs NaN; an inactive row
    holding NaN still gets an exactly zero gradient."""
    logits, row = loss_rows(8, 40, torch.float32, device, 2.5, 7.0)
    logits[0, 5] = float("nan")  # active (scale > 0)
    logits[6, 5] = float("nan")  # inactive (scale 0)
    stats = token_stats_op(logits, row.targets, 0.9, 2.5, 7.0, True, backend)
    assert all(torch.isnan(x[0]) for x in stats[:3]) and torch.isfinite(stats.logp[1])
    loss, *_, dlogits = torch.ops.actfocus.policy_loss(logits, **row.as_kwargs(), compute_grad=True, backend=backend)
    assert torch.isnan(loss) and torch.isnan(dlogits[0]).all()
    assert torch.all(dlogits[6] == 0) and torch.isfinite(dlogits[1:]).all()


def test_triton_tanh_matches_torch():
    """The libm-free ``tanh`` of the Triton kernels within a few fp32 ulps of ``torch.tanh``, near 0
    (the series) and across the switch to the exponential form included."""
    if _tanh_kernel is None:
        pytest.skip("triton is not installed")
    magnitudes = torch.cat([torch.logspace(-30, 1.5, 1000), torch.linspace(0.2, 0.3, 24)])
    x = torch.cat([magnitudes, -magnitudes, torch.tensor([0.0, float("inf"), float("-inf"), 20.0])])
    x = torch.nn.functional.pad(x, (0, 2048 - x.numel()))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = torch.empty(2048, device=device)
    _tanh_kernel[(1,)](x.to(device), out, N=2048)
    expected = torch.tanh(x.double())
    ulp = torch.finfo(torch.float32).eps * expected.abs().clamp(min=torch.finfo(torch.float32).tiny)
    assert ((out.cpu().double() - expected).abs() <= 4 * ulp).all()
