"""The logit transforms (logit_scale, softcap) and the extra statistics of the actfocus_native ops
(SPEC section 10) against a naive float64 torch computation of the same formulas, written here:
s = softcap tanh(logit_scale z / softcap) / T (else logit_scale z / T), a -inf logit excluded, the
gradients by autograd through torch.tanh. CPU here; CUDA too where a GPU and a CUDA build exist."""
import math
import os
import subprocess
import sys

import pytest
import torch

from actfocus_kernels import native
from actfocus_kernels.testing import GRAD_RTOL, OUTPUT_RTOL, assert_rel_close

DEVICES = [name for name in ("cpu", "cuda") if native.has_backend(name)
           and (name == "cpu" or torch.cuda.is_available())]
pytestmark = pytest.mark.skipif(not DEVICES, reason="actfocus_kernels._C is not built")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
IGNORE = -100
# (temperature, logit_scale, softcap): off, scale only, softcap only, both with a temperature, a cap
# that large logits saturate, a wide cap (softcap / T = 2000: tanh near 0 must keep its relative accuracy,
# or x = (softcap / T) (tanh - tanh_max) carries 2000 times its absolute error)
TRANSFORMS = {
    "off": (1.0, 1.0, 0.0),
    "scale": (1.0, 0.37, 0.0),
    "softcap": (1.0, 1.0, 30.0),
    "both-T": (0.7, 2.5, 8.0),
    "saturated": (1.3, 1.0, 2.0),
    "wide-cap": (0.5, 1.0, 1000.0),
}


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def ops():
    return torch.ops.actfocus_native


def transformed(z, temperature, logit_scale, softcap):
    """s of SPEC section 10 in float64; -inf stays -inf."""
    u = logit_scale * z.double()
    s = softcap * torch.tanh(u / softcap) if softcap > 0 else u
    return torch.where(z == -math.inf, -math.inf, s / temperature)


def naive_stats(z, targets, temperature, logit_scale, softcap):
    """(logp, energy, entropy, log_sum_sq_probs, mean_logits, is_top1) and the float64 pieces of the
    gradient: per row, logp (0 where ignored), lse and the entropy, as functions of z (autograd)."""
    s = transformed(z, temperature, logit_scale, softcap)
    lse = torch.logsumexp(s, -1)
    logp_all = s - lse[:, None]
    p = logp_all.exp()
    entropy = lse - (p * torch.where(p > 0, s, 0.0)).sum(-1)
    has_target = targets != IGNORE
    index = torch.where(has_target, targets, 0)
    logp = torch.where(has_target, logp_all.gather(1, index[:, None])[:, 0], 0.0)
    log_sum_sq = torch.log((p * p).sum(-1))
    is_top1 = has_target & (s.argmax(-1) == targets)  # argmax: the first maximum
    return logp, -temperature * lse, entropy, log_sum_sq, s.mean(-1), is_top1, lse


def make_rows(n, vocab, dtype, device, seed, large=False):
    """Rows with -inf entries, an ignored target, a row whose target is its maximum, a tie for the
    maximum before the target, and (large) logits far past any cap."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, vocab, generator=g) * (400.0 if large else 3.0)
    targets = torch.randint(0, vocab, (n,), generator=g)
    z[0, vocab // 2:] = -math.inf
    targets[0] = 1
    targets[2] = IGNORE
    targets[3] = int(z[3].argmax())  # the target is the top-1 token
    z[4, 1] = z[4].max() + 1.0
    z[4, vocab - 1] = z[4, 1]
    targets[4] = vocab - 1  # tied with an earlier index: not top-1
    return z.to(dtype).to(device), targets.to(device)


def call_stats(z, targets, transform, extra_stats=True):
    temperature, logit_scale, softcap = transform
    return ops().token_stats(z, targets, temperature, IGNORE, logit_scale, softcap, extra_stats)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(TRANSFORMS))
@pytest.mark.parametrize("vocab", [7, 1000, 4099])
def test_token_stats_with_transform_and_extras(device, dtype, name, vocab):
    transform = TRANSFORMS[name]
    z, targets = make_rows(9, vocab, dtype, device, seed=vocab, large=name == "saturated")
    outputs = call_stats(z, targets, transform)
    expected = naive_stats(z.cpu(), targets.cpu(), *transform)
    for label, value, ref in zip(("logp", "energy", "entropy", "log_sum_sq_probs"), outputs, expected):
        assert value.dtype == torch.float32 and value.device == device
        assert_rel_close(value.cpu(), ref, OUTPUT_RTOL, label)
    mean, expected_mean = outputs[4].cpu(), expected[4]
    assert torch.isneginf(mean[0]) and torch.isneginf(expected_mean[0])  # a -inf logit: a -inf mean
    assert_rel_close(mean[1:], expected_mean[1:], OUTPUT_RTOL, "mean_logits")
    assert outputs[5].dtype == torch.bool
    # exact except where the two largest s tie within fp32 rounding (SPEC section 10)
    s = transformed(z.cpu(), *transform)
    s_max = s.max(-1, keepdim=True).values
    near_tie = (s != s_max) & (s >= s_max - (1e-6 * s_max.abs() + 1e-7))
    checked = ~near_tie.any(-1)
    assert torch.equal(outputs[5].cpu()[checked], expected[5][checked]), (outputs[5], expected[5])
    assert not outputs[5][2] and not outputs[5][4]
    assert outputs[5][3] or name == "saturated"  # past the cap an earlier logit ties with the maximum


def test_extras_are_empty_when_off(device):
    z, targets = make_rows(5, 100, torch.float32, device, seed=0)
    outputs = call_stats(z, targets, TRANSFORMS["both-T"], extra_stats=False)
    assert [tuple(o.shape) for o in outputs] == [(5,)] * 3 + [(0,)] * 3
    assert [o.dtype for o in outputs[3:]] == [torch.float32, torch.float32, torch.bool]
    with_extras = call_stats(z, targets, TRANSFORMS["both-T"])
    for a, b in zip(outputs[:3], with_extras[:3]):
        assert torch.equal(a, b)


def test_saturated_cap_ties_the_top1(device):
    """Past the cap distinct logits give the same s: the first of them is the top-1 index."""
    z = torch.full((2, 64), -1.0)
    z[:, 3], z[:, 9] = 1e4, 2e4
    targets = torch.tensor([9, 3])
    outputs = call_stats(z.to(device), targets.to(device), (1.0, 1.0, 5.0))
    assert outputs[5].tolist() == [False, True]
    outputs = call_stats(z.to(device), targets.to(device), (1.0, 1.0, 0.0))  # no cap: the raw maximum
    assert outputs[5].tolist() == [True, False]


def test_nan_rows_propagate(device):
    z, targets = make_rows(6, 300, torch.float32, device, seed=1)
    z[1, 7] = math.nan
    for transform in TRANSFORMS.values():
        outputs = call_stats(z, targets, transform)
        for value in outputs[:5]:
            assert torch.isnan(value[1]) and torch.isfinite(value[5])
        assert not outputs[5][1]


def gradient_coefficients(n, device, seed):
    g = torch.Generator().manual_seed(seed)
    a, b, h = (torch.randn(n, generator=g) for _ in range(3))
    a[1] = b[1] = h[1] = 0.0  # exactly zero rows
    return a.to(device), b.to(device), h.to(device)


def naive_row_gradient(z, targets, a, b, h, transform):
    """d/dz of sum(a logp + (a - b) lse - h H): the row_gradient of coefficients (a, b, h), by autograd
    in float64 through the transform (contract.RowGradientInputs)."""
    z = z.detach().double().requires_grad_(True)
    logp, _, entropy, _, _, _, lse = naive_stats(z, targets, *transform)
    a = torch.where(targets != IGNORE, a.double(), 0.0)
    (a * logp + (a - b.double()) * lse - h.double() * entropy).sum().backward()
    return z.grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_row_gradient_through_the_transform(device, dtype, name):
    transform = TRANSFORMS[name]
    z, targets = make_rows(8, 1000, dtype, device, seed=3, large=name == "saturated")
    a, b, h = gradient_coefficients(8, device, seed=4)
    expected = naive_row_gradient(z.cpu(), targets.cpu(), a.cpu(), b.cpu(), h.cpu(), transform)
    temperature, logit_scale, softcap = transform
    for inplace in (False, True):
        logits = z.clone()
        dlogits = logits if inplace else torch.full_like(z, math.nan)
        ops().row_gradient(logits, targets, a, b, h, temperature, logit_scale, softcap, IGNORE, dlogits)
        assert torch.isfinite(dlogits).all()
        assert torch.all(dlogits[1] == 0)
        assert torch.all(dlogits[0, 500:] == 0)  # -inf logits: ds/dz = 0
        assert_rel_close(dlogits.cpu(), expected, GRAD_RTOL[dtype], "dlogits")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_policy_loss_through_the_transform(device, dtype, name):
    """On-policy, unclipped, no KL: token_loss = scale (-w A - entropy_coef H), its gradient by autograd."""
    transform = TRANSFORMS[name]
    temperature, logit_scale, softcap = transform
    n, entropy_coef = 8, 0.05
    z, targets = make_rows(n, 1000, dtype, device, seed=5, large=name == "saturated")
    g = torch.Generator().manual_seed(6)
    advantages, weights = torch.randn(n, generator=g), torch.rand(n, generator=g) + 0.5
    scale = torch.rand(n, generator=g) / n
    scale[6] = 0.0  # inactive
    active = (scale != 0) & (targets.cpu() != IGNORE)

    zd = z.detach().cpu().double().requires_grad_(True)
    logp, energy, entropy, _, _, _, _ = naive_stats(zd, targets.cpu(), *transform)
    # d/dlogp of -w A ratio at ratio 1 is -w A: the loss l = -w A logp - c H has the same gradient
    surrogate = torch.where(active, scale * (-weights * advantages * logp - entropy_coef * entropy), 0.0).sum()
    surrogate.backward()
    token_loss = torch.where(active, scale * (-weights * advantages - entropy_coef * entropy.detach()), 0.0)

    kwargs = dict(targets=targets, old_logp=None, advantages=advantages.to(device), ref_logp=None,
                  weights=weights.to(device), scale=scale.to(device), temperature=temperature,
                  logit_scale=logit_scale, softcap=softcap, clip_low=0.2, clip_high=0.2, dual_clip=0.0,
                  kl_coef=0.0, kl_type=3, entropy_coef=entropy_coef, ignore_index=IGNORE)
    for inplace in (False, True):
        logits = z.clone()
        dlogits = logits if inplace else torch.full_like(z, math.nan)
        outputs = ops().policy_loss(logits, **kwargs, dlogits=dlogits)
        for label, value, ref in zip(("token_loss", "logp", "energy", "entropy"), outputs,
                                     (token_loss, logp.detach(), energy.detach(), entropy.detach())):
            assert_rel_close(value.cpu(), ref, OUTPUT_RTOL, label)
        assert torch.all(dlogits[~active.to(device)] == 0)
        assert_rel_close(dlogits.cpu(), zd.grad, GRAD_RTOL[dtype], "dlogits")


def test_scale_folds_into_the_temperature(device):
    """logit_scale c at temperature c T is the untransformed pass at T: the same centred logits, bit for
    bit; energy = -T' lse scales by c exactly (c a power of two)."""
    z, targets = make_rows(6, 777, torch.float32, device, seed=7)
    base = call_stats(z, targets, (0.8, 1.0, 0.0))
    scaled = call_stats(z, targets, (1.6, 2.0, 0.0))
    for index in (0, 2, 3, 5):
        assert torch.equal(base[index], scaled[index])
    assert torch.equal(2.0 * base[1], scaled[1])


@pytest.mark.parametrize("field, value", [("logit_scale", 0.0), ("logit_scale", -1.0), ("logit_scale", math.nan),
                                          ("logit_scale", math.inf), ("softcap", -1.0), ("softcap", math.nan),
                                          ("softcap", math.inf)])
def test_bad_transform_raises(device, field, value):
    z, targets = make_rows(6, 32, torch.float32, device, seed=0)
    transform = {"temperature": 1.0, "logit_scale": 1.0, "softcap": 0.0, field: value}
    coefficients = gradient_coefficients(6, device, seed=0)
    for mode in ("real", "fake"):  # the C++ checks, and the fakes' mirror of them
        with torch._subclasses.FakeTensorMode() if mode == "fake" else torch.no_grad():
            logits, rows_targets = (torch.empty(6, 32), torch.zeros(6, dtype=torch.int64)) if mode == "fake" \
                else (z, targets)
            a, b, h = (torch.empty(6) for _ in range(3)) if mode == "fake" else coefficients
            with pytest.raises(RuntimeError, match=field):
                ops().token_stats(logits, rows_targets, transform["temperature"], IGNORE, transform["logit_scale"],
                                  transform["softcap"], True)
            with pytest.raises(RuntimeError, match=field):
                ops().row_gradient(logits, rows_targets, a, b, h, *transform.values(), IGNORE,
                                   torch.empty_like(logits))


@pytest.mark.parametrize("extra_stats", [False, True])
def test_opcheck(device, extra_stats):
    z, targets = make_rows(6, 64, torch.float32, device, seed=2)
    a, b, h = gradient_coefficients(6, device, seed=2)
    samples = [
        (ops().token_stats, (z, targets, 0.9, IGNORE, 1.5, 7.0, extra_stats)),
        (ops().row_gradient, (z, targets, a, b, h, 0.9, 1.5, 7.0, IGNORE, torch.empty_like(z))),
        (ops().policy_loss, (z, targets, None, a, None, b.abs(), h.abs() / 6, 0.9, 1.5, 7.0, 0.2, 0.2, 0.0, 0.0, 3,
                             0.01, IGNORE, torch.empty_like(z))),
    ]
    for op, args in samples:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_portable_kernels_through_the_transforms(capability):
    """The at::vec row kernels (ATEN_CPU_CAPABILITY=default or avx2 instead of this machine's best) on
    this file's token_stats and row_gradient checks, every transform, in a subprocess."""
    if "cpu" not in DEVICES:
        pytest.skip("no CPU kernels")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    chosen = subprocess.run([sys.executable, "-c", "import actfocus_kernels.native as n; "
                             "print(n.build_info()['cpu_capability'])"], env=env, check=True, capture_output=True,
                            text=True).stdout.split()[-1]
    if chosen != capability:
        pytest.skip(f"this CPU has no {capability} kernels (got {chosen})")
    checks = "test_token_stats_with_transform_and_extras or test_row_gradient_through_the_transform"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                          f"({checks}) and cpu"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
