"""The actfocus_native ops of the C++ extension (csrc/): build info, opcheck, the C++ argument checks,
and the row kernels against the float64 reference at small shapes. The CPU kernels are tested here;
the CUDA kernels run the same tests where a GPU and a CUDA build exist."""
import os
import subprocess
import sys

import pytest
import torch

from actfocus_kernels import native, reference
from actfocus_kernels.contract import RowLossInputs
from actfocus_kernels.testing import GRAD_RTOL, OUTPUT_RTOL, assert_rel_close

DEVICES = [name for name in ("cpu", "cuda") if native.has_backend(name)
           and (name == "cpu" or torch.cuda.is_available())]
pytestmark = pytest.mark.skipif(not DEVICES, reason="actfocus_kernels._C is not built")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
IGNORE = -100


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def ops():
    return torch.ops.actfocus_native


def token_stats(logits, targets, temperature, ignore_index=IGNORE):
    """``actfocus_native::token_stats`` without transform or extras: (logp, energy, entropy)."""
    return ops().token_stats(logits, targets, temperature, ignore_index, 1.0, 0.0, False)[:3]


def make_rows(n, vocab, dtype, device, seed=0, row_stride=None):
    """Logits rows (a view with ``row_stride`` when given), with padded -inf entries, an ignored
    target, an inactive row whose per-token inputs are NaN, and ratios on both sides of the clip."""
    g = torch.Generator().manual_seed(seed)
    width = row_stride or vocab
    storage = (torch.randn(n, width, generator=g) * 3).to(dtype)
    logits = storage[:, :vocab]
    logits[0, max(1, vocab // 2):] = float("-inf")
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[0] = 0
    targets[min(2, n - 1)] = IGNORE
    logp = reference.token_stats(logits.double(), targets, 1.0, IGNORE)[0].float()
    old_logp = logp + torch.empty(n).uniform_(-0.6, 0.6, generator=g)
    advantages = torch.randn(n, generator=g)
    ref_logp = logp + 0.3 * torch.randn(n, generator=g)
    weights = torch.rand(n, generator=g) + 0.5
    scale = torch.rand(n, generator=g) / n
    inactive = min(3, n - 1)
    scale[inactive] = 0
    for values in (old_logp, advantages, ref_logp, weights):
        values[inactive] = float("nan")
    rows = dict(logits=logits, targets=targets, old_logp=old_logp, advantages=advantages, ref_logp=ref_logp,
                weights=weights, scale=scale)
    return {name: value.to(device) for name, value in rows.items()}


LOSS_OPTIONS = {
    # temperature, clip_low, clip_high, dual_clip, kl_coef, kl_type, entropy_coef
    "plain": (1.0, 0.2, 0.2, 0.0, 0.0, 3, 0.0),
    "dual-k1-T": (0.7, 0.1, 0.28, 1.5, 0.1, 1, 0.0),
    "k2-entropy": (1.0, 0.2, 0.2, 0.0, 0.2, 2, 0.05),
    "k3-entropy-T": (1.3, 0.2, 0.2, 3.0, 0.05, 3, 0.01),
}


OPTION_NAMES = ("temperature", "clip_low", "clip_high", "dual_clip", "kl_coef", "kl_type", "entropy_coef")


def loss_inputs(rows, options, with_old=True, with_ref=True) -> RowLossInputs:
    return RowLossInputs(
        targets=rows["targets"], old_logp=rows["old_logp"] if with_old else None, advantages=rows["advantages"],
        ref_logp=rows["ref_logp"] if with_ref else None, weights=rows["weights"], scale=rows["scale"],
        **dict(zip(OPTION_NAMES, options)), logit_scale=1.0, softcap=0.0, ignore_index=IGNORE)


def loss_kwargs(rows, options, with_old=True, with_ref=True):
    """The named arguments of ``actfocus_native::policy_loss`` after the logits (the row contract)."""
    return loss_inputs(rows, options, with_old, with_ref).as_kwargs()


def judge(rows, options, with_old=True, with_ref=True):
    """The float64 reference: (outputs, dlogits)."""
    logits = rows["logits"].double().cpu()
    inputs = loss_inputs({k: v.cpu() for k, v in rows.items()}, options, with_old, with_ref)
    dlogits = torch.empty_like(logits)
    outputs = reference.policy_loss(logits, inputs, dlogits)
    return outputs, dlogits


def check_outputs(outputs, expected, dtype, dlogits=None, expected_dlogits=None):
    names = ("token_loss", "logp", "energy", "entropy", "ratio")
    for name, value, ref in zip(names, outputs, expected):
        assert value.dtype == torch.float32, name
        assert_rel_close(value.cpu(), ref, OUTPUT_RTOL, name)
    assert outputs[5].dtype == torch.bool and torch.equal(outputs[5].cpu(), expected[5])
    if dlogits is not None:
        assert dlogits.dtype == dtype
        assert_rel_close(dlogits.cpu(), expected_dlogits, GRAD_RTOL[dtype], "dlogits")


def test_build_info():
    info = native.build_info()
    assert "cpu" in info["backends"] and native.has_backend("cpu")
    assert set(info) >= {"backends", "cuda_version", "archs", "cpu_capability"}
    assert info["cpu_capability"] in ("avx512", "avx2", "default")
    if "cuda" in info["backends"]:
        assert info["cuda_version"] and info["archs"]
    else:
        assert info["cuda_version"] is None and info["archs"] == []


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", [1, 7, 1000, 4099])
def test_token_stats_matches_reference(device, dtype, vocab):
    rows = make_rows(9, vocab, dtype, device, seed=vocab)
    for temperature in (1.0, 0.6):
        stats = token_stats(rows["logits"], rows["targets"], temperature)
        expected = reference.token_stats(rows["logits"].double().cpu(), rows["targets"].cpu(), temperature, IGNORE)
        for name, value, ref in zip(("logp", "energy", "entropy"), stats, expected):
            assert value.dtype == torch.float32 and value.device == device
            assert_rel_close(value.cpu(), ref, OUTPUT_RTOL, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(LOSS_OPTIONS))
def test_policy_loss_matches_reference(device, dtype, name):
    rows = make_rows(12, 1000, dtype, device, seed=len(name))
    options = LOSS_OPTIONS[name]
    dlogits = torch.full_like(rows["logits"], float("nan"))
    outputs = ops().policy_loss(rows["logits"], **loss_kwargs(rows, options), dlogits=dlogits)
    expected, expected_dlogits = judge(rows, options)
    check_outputs(outputs, expected, dtype, dlogits, expected_dlogits)
    # inactive (scale 0, NaN inputs) and ignored rows: exactly zero gradient, ratio 1, not clipped
    for row in (2, 3):
        assert torch.all(dlogits[row] == 0) and outputs[0][row] == 0 and outputs[4][row] == 1
        assert not outputs[5][row]


@pytest.mark.parametrize("with_old,with_ref", [(False, True), (True, False), (False, False)])
def test_optional_inputs(device, with_old, with_ref):
    rows = make_rows(10, 500, torch.float32, device, seed=3)
    options = LOSS_OPTIONS["k3-entropy-T"]
    dlogits = torch.empty_like(rows["logits"])
    outputs = ops().policy_loss(rows["logits"], **loss_kwargs(rows, options, with_old, with_ref), dlogits=dlogits)
    expected, expected_dlogits = judge(rows, options, with_old, with_ref)
    check_outputs(outputs, expected, torch.float32, dlogits, expected_dlogits)
    if not with_old:
        assert torch.all(outputs[4] == 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_inplace_gradient_and_row_stride(device, dtype):
    """dlogits may be the logits themselves; rows may be strided (row stride > V)."""
    rows = make_rows(8, 999, dtype, device, seed=5, row_stride=1040)
    options = LOSS_OPTIONS["k2-entropy"]
    expected, expected_dlogits = judge(rows, options)
    logits = rows["logits"]
    assert logits.stride(0) == 1040
    outputs = ops().policy_loss(logits, **loss_kwargs(rows, options), dlogits=logits)
    check_outputs(outputs, expected, dtype, logits, expected_dlogits)
    # a separate, contiguous gradient buffer for strided logits
    rows = make_rows(8, 999, dtype, device, seed=5, row_stride=1040)
    dlogits = torch.empty(8, 999, dtype=dtype, device=device)
    outputs = ops().policy_loss(rows["logits"], **loss_kwargs(rows, options), dlogits=dlogits)
    check_outputs(outputs, expected, dtype, dlogits, expected_dlogits)


def test_extreme_logits(device):
    """+-1e4 logits, one finite entry per row and all-equal rows give finite, correct results."""
    logits = torch.randn(6, 300) * 1e4
    logits[1] = float("-inf")
    logits[1, 17] = 5.0
    logits[2] = 3.0
    logits[3, ::2] = float("-inf")
    targets = torch.tensor([0, 17, 5, 1, 299, 42])
    rows = make_rows(6, 300, torch.float32, "cpu")
    rows.update(logits=logits, targets=targets)
    logp = reference.token_stats(logits.double(), targets, 1.0, IGNORE)[0].float()
    rows["old_logp"], rows["ref_logp"] = logp + 0.1, logp - 0.1  # keeps exp(ref - logp) finite
    rows = {name: value.to(device) for name, value in rows.items()}
    options = LOSS_OPTIONS["k3-entropy-T"]
    dlogits = torch.empty_like(rows["logits"])
    outputs = ops().policy_loss(rows["logits"], **loss_kwargs(rows, options), dlogits=dlogits)
    expected, expected_dlogits = judge(rows, options)
    assert all(torch.isfinite(value[torch.isfinite(ref)]).all() for value, ref in zip(outputs[:5], expected[:5]))
    assert torch.isfinite(dlogits).all()
    check_outputs(outputs, expected, torch.float32, dlogits, expected_dlogits)


def test_empty_batch(device):
    logits = torch.randn(0, 50, device=device)
    empty = torch.empty(0, device=device)
    targets = torch.empty(0, dtype=torch.int64, device=device)
    for extra_stats in (False, True):
        outputs = ops().token_stats(logits, targets, 1.0, IGNORE, 1.0, 0.0, extra_stats)
        assert [o.shape for o in outputs] == [(0,)] * 6
    outputs = ops().policy_loss(logits, targets=targets, old_logp=empty, advantages=empty, ref_logp=None,
                                weights=empty, scale=empty, temperature=1.0, logit_scale=1.0, softcap=0.0,
                                clip_low=0.2, clip_high=0.2, dual_clip=0.0,
                                kl_coef=0.0, kl_type=3, entropy_coef=0.0, ignore_index=IGNORE,
                                dlogits=torch.empty_like(logits))
    assert [o.shape for o in outputs] == [(0,)] * 6


def test_default_and_avx2_kernels_agree(tmp_path):
    """ATEN_CPU_CAPABILITY=default forces the portable row kernels: same results."""
    script = (
        "import torch, actfocus_kernels.native as n; torch.manual_seed(0); "
        "z = torch.randn(5, 1003) * 3; y = torch.randint(0, 1003, (5,)); d = torch.empty_like(z); "
        "s = torch.rand(5); o = torch.ops.actfocus_native.policy_loss(z, y, None, torch.randn(5), None, "
        "torch.ones(5), s, 0.8, 1.0, 0.0, 0.2, 0.2, 0.0, 0.0, 3, 0.05, -100, d); "
        "torch.save((n.build_info()['cpu_capability'], o, d), sys.argv[1])"
    )
    results = []
    for capability in ("default", None):
        env = dict(os.environ)
        env.pop("ATEN_CPU_CAPABILITY", None)
        if capability:
            env["ATEN_CPU_CAPABILITY"] = capability
        path = str(tmp_path / f"{capability}.pt")
        subprocess.run([sys.executable, "-c", "import sys; " + script, path], env=env, check=True)
        results.append(torch.load(path))
    (cap_default, out_default, grad_default), (cap_best, out_best, grad_best) = results
    assert cap_default == "default"
    for a, b in zip(out_default[:5], out_best[:5]):
        assert_rel_close(a, b, OUTPUT_RTOL)
    assert_rel_close(grad_default, grad_best, GRAD_RTOL[torch.float32])


# opcheck and torch.compile of the actfocus_native ops: tests/test_ops.py, samples in tests/samples.py

def test_compile_fullgraph(device):
    rows = make_rows(6, 64, torch.float32, device, seed=1)
    options = LOSS_OPTIONS["plain"]

    def step(logits, kwargs):
        dlogits = torch.empty_like(logits)
        token_loss, logp, energy, entropy, ratio, clipped = ops().policy_loss(logits, **kwargs, dlogits=dlogits)
        return token_loss.sum(), dlogits

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    kwargs = loss_kwargs(rows, options)
    expected = step(rows["logits"], kwargs)
    result = compiled(rows["logits"], kwargs)
    assert torch.equal(result[0], expected[0]) and torch.equal(result[1], expected[1])


# --- the C++ checks: clear errors, never a crash -------------------------------------------------

def bad_calls(device):
    rows = make_rows(4, 32, torch.float32, device)
    z, y = rows["logits"], rows["targets"]
    def loss(**changes):
        values = {**loss_kwargs(rows, LOSS_OPTIONS["plain"]), "dlogits": None, **changes}
        logits = values.pop("logits", z)
        return lambda: ops().policy_loss(logits, **values)

    yield "2-D", lambda: token_stats(z[None], y, 1.0)
    yield "float32, float16 or bfloat16", lambda: token_stats(z.double(), y, 1.0)
    yield "contiguous along the vocabulary", lambda: token_stats(z.t().contiguous().t(), y, 1.0)
    yield "targets must have shape", lambda: token_stats(z, y[:3], 1.0)
    yield "targets must be Long", lambda: token_stats(z, y.int(), 1.0)
    yield "temperature", lambda: token_stats(z, y, 0.0)
    yield "vocabulary of size >= 1", lambda: token_stats(z[:, :0], y, 1.0)
    yield "advantages must be Float", loss(advantages=rows["advantages"].double())
    yield "weights must have shape", loss(weights=rows["weights"][:2])
    yield "scale must have shape", loss(scale=rows["scale"][None])
    yield "old_logp must be Float", loss(old_logp=rows["old_logp"].half())
    yield "kl_type", loss(kl_type=4)
    yield "temperature", loss(temperature=-1.0)
    yield "dlogits must have the shape", loss(dlogits=torch.empty(4, 31, device=device))
    yield "dlogits must have the dtype", loss(dlogits=torch.empty(4, 32, dtype=torch.bfloat16, device=device))
    yield "dlogits must be contiguous", loss(dlogits=torch.empty(32, 4, device=device).t())
    yield "logits must be float32", loss(logits=z.to(torch.int32))


@pytest.mark.parametrize("case", range(17))
def test_bad_arguments_raise(device, case):
    message, call = list(bad_calls(device))[case]
    with pytest.raises(RuntimeError, match=message):
        call()


def test_bad_device_raises():
    if not (native.has_backend("cuda") and torch.cuda.is_available()):
        pytest.skip("needs the CUDA backend")
    rows = make_rows(4, 32, torch.float32, "cuda")
    with pytest.raises(RuntimeError, match="must be on cuda"):
        token_stats(rows["logits"], rows["targets"].cpu(), 1.0)


@pytest.mark.parametrize("target", [32, -1, 10**12])
def test_out_of_range_target_is_value_error(target):
    rows = make_rows(4, 32, torch.float32, "cpu")
    rows["targets"][1] = target
    with pytest.raises(ValueError, match=f"target {target} at position 1"):
        token_stats(rows["logits"], rows["targets"], 1.0)
    with pytest.raises(ValueError, match=f"target {target} at position 1"):
        ops().policy_loss(rows["logits"], **loss_kwargs(rows, LOSS_OPTIONS["plain"]), dlogits=None)
