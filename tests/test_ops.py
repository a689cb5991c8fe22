"""The ``actfocus`` custom ops: ``torch.library.opcheck`` and ``torch.compile(fullgraph=True)``."""
import pytest
import torch

import actfocus_kernels.ops  # noqa: F401  (registers the ops)
from actfocus_kernels import ActFocusConfig, PolicyLossConfig, policy_loss, token_stats
from judge import make_batch


def row_args(batch, backend, compute_grad=None):
    n, vocab = batch["targets"].numel(), batch["logits"].shape[-1]
    mask = batch["loss_mask"].reshape(-1)
    args = [batch["logits"].reshape(n, vocab), batch["targets"].reshape(-1), batch["old_logp"].reshape(-1),
            batch["advantages"].reshape(-1), batch["ref_logp"].reshape(-1), torch.ones_like(mask), mask / mask.sum(),
            0.9, 0.2, 0.28, 3.0, 0.1, 3, 0.01, -100]
    return args + ([compute_grad] if compute_grad is not None else []) + [backend]


def test_opcheck_token_stats(backend, device):
    batch = make_batch(2, 3, 64, device=device)
    args = (batch["logits"].reshape(6, 64), batch["targets"].reshape(-1), 0.8, -100, backend)
    torch.library.opcheck(torch.ops.actfocus.token_stats.default, args)


@pytest.mark.parametrize("compute_grad", [True, False])
def test_opcheck_policy_loss(backend, device, compute_grad):
    batch = make_batch(2, 3, 64, device=device)
    args = row_args(batch, backend, compute_grad)
    if compute_grad:
        args[0] = args[0].detach().requires_grad_(True)
    # the gradient is an exact closed form, not a numerical derivative of the op: skip gradcheck
    tests = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.actfocus.policy_loss.default, tuple(args), test_utils=tests)


def test_opcheck_policy_loss_inplace(backend, device):
    batch = make_batch(2, 3, 64, device=device)
    args = row_args(batch, backend)
    args[0] = args[0].clone()
    torch.library.opcheck(torch.ops.actfocus.policy_loss_inplace.default, tuple(args),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_opcheck_weights(device):
    batch = make_batch(2, 5, 16, device=device)
    args = (torch.randn(10, device=device), batch["loss_mask"].reshape(-1).bool(),
            batch["action_mask"].reshape(-1).bool(), torch.arange(2, device=device).repeat_interleave(5),
            batch["turn_ids"].reshape(-1), 0.5, 1.0, 1.0, 1.0, 5.0, True)
    torch.library.opcheck(torch.ops.actfocus.actfocus_weights.default, args)


def check_compiled_step(backend, device, compiler):
    batch = make_batch(2, 4, 64, device=device, seed=3)
    cfg = PolicyLossConfig(kl_coef=0.05, entropy_coef=0.01, agg="seq-mean-token-mean")
    actfocus = ActFocusConfig(source="current")

    def step(logits):
        out = policy_loss(logits, batch["targets"], batch["old_logp"], batch["advantages"], batch["loss_mask"],
                          action_mask=batch["action_mask"], ref_logp=batch["ref_logp"], cfg=cfg, actfocus=actfocus,
                          backend=backend)
        return out.loss, out.clip_frac

    compiled = torch.compile(step, fullgraph=True, backend=compiler)
    eager_logits = batch["logits"].clone().requires_grad_(True)
    compiled_logits = batch["logits"].clone().requires_grad_(True)
    eager_loss, eager_clip = step(eager_logits)
    compiled_loss, compiled_clip = compiled(compiled_logits)
    eager_loss.backward()
    compiled_loss.backward()
    assert torch.allclose(compiled_loss, eager_loss, rtol=1e-6)
    assert torch.allclose(compiled_clip, eager_clip)
    assert torch.allclose(compiled_logits.grad, eager_logits.grad, rtol=1e-6, atol=1e-9)


def test_torch_compile_fullgraph(backend, device):
    check_compiled_step(backend, device, "aot_eager")


def test_torch_compile_inductor(device):
    # one inductor build (~15 s on 2 cores) is enough: the ops are opaque to it whatever the backend
    check_compiled_step("reference", device, "inductor")


def test_torch_compile_token_stats(device):
    batch = make_batch(2, 4, 64, device=device)
    compiled = torch.compile(lambda z: token_stats(z, batch["targets"]).energy, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(batch["logits"]), token_stats(batch["logits"], batch["targets"]).energy)
