"""Bad input gives a clear error naming the problem (SPEC section 5); each path is tested."""
import pytest
import torch

from actfocus_kernels import ActFocusConfig, PolicyLossConfig, TokenStats, actfocus_weights, policy_loss, token_stats

from judge import make_batch


@pytest.fixture
def batch():
    return make_batch(2, 3, 20)


def call(batch, **changes):
    args = {k: batch[k] for k in ("logits", "targets", "old_logp", "advantages", "loss_mask")}
    kwargs = {k: changes.pop(k) for k in list(changes) if k not in args}
    args.update(changes)
    return policy_loss(args["logits"], args["targets"], args["old_logp"], args["advantages"], args["loss_mask"],
                       backend=kwargs.pop("backend", "reference"), **kwargs)


@pytest.mark.parametrize("changes, error, match", [
    (dict(logits=[[1.0]]), TypeError, "logits must be a torch.Tensor"),
    (dict(logits=torch.randn(20)), ValueError, r"logits must be \[B, L, V\]"),
    (dict(logits=torch.randint(0, 3, (2, 3, 20))), TypeError, "logits dtype"),
    (dict(logits=torch.randn(2, 3, 0)), ValueError, "empty vocabulary"),
    (dict(targets=torch.zeros(2, 4, dtype=torch.long)), ValueError, r"targets must have shape \(2, 3\)"),
    (dict(targets=torch.zeros(2, 3)), TypeError, "targets must be an integer tensor"),
    (dict(loss_mask=torch.ones(3, 2)), ValueError, r"loss_mask must have shape \(2, 3\)"),
    (dict(old_logp=torch.zeros(2, 3, dtype=torch.long)), TypeError, "old_logp must be a floating tensor"),
    (dict(advantages=torch.zeros(3)), ValueError, r"advantages must have shape \(2, 3\) \(per token\) or \[2\]"),
    (dict(loss_mask=torch.ones(2, 3, device="meta")), ValueError, "loss_mask is on meta"),
    (dict(cu_seqlens=torch.tensor([0, 6])), ValueError, "cu_seqlens is for packed"),
    (dict(cfg=PolicyLossConfig(kl_coef=0.1)), ValueError, "kl_coef > 0 needs ref_logp"),
    (dict(actfocus=ActFocusConfig(source="current")), ValueError, "needs action_mask"),
    (dict(actfocus=ActFocusConfig(), action_mask=torch.ones(2, 3)), ValueError, r"source='old'\) needs weights"),
    (dict(actfocus=ActFocusConfig(source="current"), action_mask=torch.ones(2, 3), weights=torch.ones(2, 3)),
     ValueError, "either weights or actfocus"),
    (dict(actfocus=ActFocusConfig(source="current", scope="turn"), action_mask=torch.ones(2, 3)), ValueError,
     "needs turn_ids"),
    (dict(backend="gpu"), ValueError, "backend must be one of"),
    (dict(cfg="token-mean"), TypeError, "cfg must be a PolicyLossConfig"),
    (dict(actfocus={"source": "old"}), TypeError, "actfocus must be an ActFocusConfig"),
])
def test_policy_loss_bad_input(batch, changes, error, match):
    with pytest.raises(error, match=match):
        call(batch, **changes)


def test_out_of_range_target_is_named(batch):
    batch["targets"][1, 2] = 20
    with pytest.raises(ValueError, match=r"target 20 at position \(1, 2\) is outside \[0, 20\)"):
        call(batch)
    batch["targets"][1, 2] = -3
    with pytest.raises(ValueError, match="target -3"):
        token_stats(batch["logits"], batch["targets"])


def test_packed_inputs_are_checked():
    logits, targets = torch.randn(5, 7), torch.zeros(5, dtype=torch.long)
    ones = torch.ones(5)
    with pytest.raises(ValueError, match="cu_seqlens must rise from 0 to N=5"):
        policy_loss(logits, targets, None, ones, ones, cu_seqlens=torch.tensor([0, 3, 4]))
    with pytest.raises(ValueError, match=r"cu_seqlens must be 1-D"):
        policy_loss(logits, targets, None, ones, ones, cu_seqlens=torch.tensor([0]))
    with pytest.raises(ValueError, match=r"per token\) or \[2\]"):
        policy_loss(logits, targets, None, torch.ones(3), ones, cu_seqlens=torch.tensor([0, 3, 5]))


def test_backend_availability(monkeypatch):
    logits, targets = torch.randn(2, 7), torch.zeros(2, dtype=torch.long)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        token_stats(logits, targets, backend="triton")
    from actfocus_kernels import native

    monkeypatch.setattr(native, "has_backend", lambda name: False)
    with pytest.raises(ValueError, match="built without it"):
        token_stats(logits, targets, backend="cpu")
    with pytest.raises(ValueError, match="built without it"):
        token_stats(logits, targets, backend="cuda")
    monkeypatch.setattr(native, "has_backend", lambda name: name == "cuda")
    with pytest.raises(ValueError, match="needs cuda tensors"):
        token_stats(logits, targets, backend="cuda")


def test_float64_only_for_reference(device):
    logits = torch.randn(2, 7, dtype=torch.float64, device=device)
    targets = torch.zeros(2, dtype=torch.long, device=device)
    assert token_stats(logits, targets, backend="reference").logp.dtype == torch.float32
    with pytest.raises(TypeError, match="not supported by backend 'triton'"):
        token_stats(logits, targets, backend="triton")


def test_temperature_and_config_validation():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        token_stats(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), temperature=0.0)
    for bad in (dict(agg="sum"), dict(kl_type="k4"), dict(dual_clip=0.5), dict(clip_low=-1), dict(temperature=-1),
                dict(norm_tokens=0), dict(norm_len=0), dict(kl_coef=-1)):
        with pytest.raises(ValueError):
            PolicyLossConfig(**bad)
    for bad in (dict(uncertainty="logits"), dict(scope="batch"), dict(source="new"), dict(energy_temperature=0),
                dict(max_weight=0), dict(reasoning_weight=-1)):
        with pytest.raises(ValueError):
            ActFocusConfig(**bad)


def test_inplace_grad_needs_a_viewable_buffer(batch):
    logits = torch.randn(2, 4, 20, requires_grad=True) * 1.0
    with pytest.raises(ValueError, match="inplace_grad=True needs logits whose rows"):
        call(batch, logits=logits[:, 1:], inplace_grad=True)
    with pytest.raises(ValueError, match="unit stride"):
        call(batch, logits=(torch.randn(2, 20, 3, requires_grad=True) * 1.0).transpose(1, 2), inplace_grad=True)


def test_weights_bad_input():
    stats = TokenStats(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(TypeError, match="TokenStats"):
        actfocus_weights(torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"action_mask must have shape \(2, 3\)"):
        actfocus_weights(stats, torch.ones(2, 3), torch.ones(3, 2))
    with pytest.raises(TypeError, match="cfg must be an ActFocusConfig"):
        actfocus_weights(stats, torch.ones(2, 3), torch.ones(2, 3), cfg={})
