"""Every registered op (``tests/samples.py``): ``torch.library.opcheck`` and
``torch.compile(fullgraph=True)`` against eager, plus the public functions under both compilers."""
import pytest
import torch
from torch.utils._pytree import tree_map

import actfocus_kernels  # noqa: F401  (registers the ops)
from actfocus_kernels import ActFocusConfig, PolicyLossConfig, native, policy_loss, token_stats

from compiled import compare_compiled_step
from devices import BACKENDS, DEVICE
from judge import make_batch
from samples import NATIVE_PREFIX, SAMPLES, op_of, registered_ops


def op_cases():
    for qualname in SAMPLES:
        if qualname.startswith(NATIVE_PREFIX):
            if native.has_backend(DEVICE.type):
                yield pytest.param(qualname, DEVICE.type, id=f"{qualname}")
        else:
            for backend in BACKENDS:
                yield pytest.param(qualname, backend, id=f"{qualname}-{backend}")


def test_every_registered_op_has_samples():
    missing = set(registered_ops()) - set(SAMPLES)
    assert not missing, f"registered ops without samples in tests/samples.py: {sorted(missing)}"
    assert set(SAMPLES) <= set(registered_ops()) | {name for name in SAMPLES if name.startswith(NATIVE_PREFIX)
                                                    and not native.BUILT_BACKENDS}


@pytest.mark.parametrize("qualname,backend", list(op_cases()))
def test_opcheck(qualname, backend):
    for sample in SAMPLES[qualname](DEVICE, backend):
        torch.library.opcheck(op_of(qualname), sample.args, sample.kwargs, test_utils=sample.checks)


def _fresh(value):
    """A copy of a sample argument (mutating ops write into theirs), keeping ``requires_grad``."""
    return value.detach().clone().requires_grad_(value.requires_grad) if isinstance(value, torch.Tensor) else value


def _assert_same(compiled, eager):
    for got, expected in zip(torch.utils._pytree.tree_leaves(compiled), torch.utils._pytree.tree_leaves(eager)):
        if isinstance(expected, torch.Tensor):
            assert got.shape == expected.shape and got.dtype == expected.dtype
            assert torch.allclose(got, expected, rtol=1e-6, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("qualname,backend", list(op_cases()))
def test_torch_compile_fullgraph(qualname, backend):
    op = op_of(qualname)
    torch._dynamo.reset()  # one code object compiled for every op: start each from a clean cache
    compiled = torch.compile(lambda *args, **kwargs: op(*args, **kwargs), fullgraph=True, backend="aot_eager")
    for sample in SAMPLES[qualname](DEVICE, backend):
        eager_args, eager_kwargs = tree_map(_fresh, (sample.args, sample.kwargs))
        compiled_args, compiled_kwargs = tree_map(_fresh, (sample.args, sample.kwargs))
        expected = op(*eager_args, **eager_kwargs)
        result = compiled(*compiled_args, **compiled_kwargs)
        _assert_same(result, expected)
        _assert_same((compiled_args, compiled_kwargs), (eager_args, eager_kwargs))  # mutated buffers too


def check_compiled_step(backend, device, compiler):
    batch = make_batch(2, 4, 64, device=device, seed=3)
    cfg = PolicyLossConfig(kl_coef=0.05, entropy_coef=0.01, agg="seq-mean-token-mean")
    actfocus = ActFocusConfig(source="current")

    def step(logits):
        out = policy_loss(logits, batch["targets"], batch["old_logp"], batch["advantages"], batch["loss_mask"],
                          action_mask=batch["action_mask"], ref_logp=batch["ref_logp"], cfg=cfg, actfocus=actfocus,
                          backend=backend)
        return out.loss, out.clip_frac

    compare_compiled_step(step, batch["logits"], compiler)


def test_policy_loss_compiles_fullgraph(backend, device):
    check_compiled_step(backend, device, "aot_eager")


def test_policy_loss_compiles_with_inductor(device):
    # one inductor build (~15 s on 2 cores) is enough: the ops are opaque to it whatever the backend
    check_compiled_step("reference", device, "inductor")


def test_token_stats_compiles_fullgraph(device):
    batch = make_batch(2, 4, 64, device=device)
    compiled = torch.compile(lambda z: token_stats(z, batch["targets"]).energy, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(batch["logits"]), token_stats(batch["logits"], batch["targets"]).energy)
