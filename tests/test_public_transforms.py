"""SPEC section 10 through the public functions: ``logit_scale``, ``softcap``, ``extra_stats`` and the
linear path's ``logits_dtype`` on every backend of the machine, against the float64 judge; fused and
two-pass variants, in-place gradients, padded and packed layouts; bad values name the field.
(tests/test_transforms.py holds the op-level cases, tests/tp_checks.py the vocab-parallel ones.)"""
import pytest
import torch

from actfocus_kernels import PolicyLossConfig, linear_policy_loss, linear_token_stats, policy_loss, token_stats
from actfocus_kernels.testing import GRAD_RTOL, OUTPUT_RTOL, assert_rel_close

from judge import judge_extra_stats, judge_policy_loss, judge_stats, make_batch

TRANSFORMS = [(1.0, None), (0.7, None), (1.0, 4.0), (1.3, 6.0)]
CONFIGS = {
    "ppo (fused)": PolicyLossConfig(clip_high=0.28, kl_coef=0.05, entropy_coef=0.01, temperature=0.8),
    "gspo (two passes)": PolicyLossConfig(policy="gspo", agg="seq-mean-token-mean", temperature=0.8),
}


def saturating(batch: dict, dtype, factor: float = 20.0) -> torch.Tensor:
    """The batch's logits with a row ``factor`` times larger (into the cap's saturation) and a
    padded-vocabulary entry."""
    logits = batch["logits"].double()
    logits[0, 1] *= factor
    logits[1, 2, 3] = float("-inf")
    return logits.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("logit_scale,softcap", TRANSFORMS)
def test_token_stats_with_transform_and_extras(backend, device, dtype, logit_scale, softcap):
    batch = make_batch(2, 5, 33, device=device, seed=1)
    logits = saturating(batch, dtype)
    targets = batch["targets"].clone()
    targets[0, 3] = -100
    ours = token_stats(logits, targets, 0.9, backend, logit_scale=logit_scale, softcap=softcap, extra_stats=True)
    expected = judge_stats(logits.cpu(), targets.cpu(), 0.9, -100, logit_scale, softcap)
    for name, value, ref in zip(("logp", "energy", "entropy"), ours, expected):
        assert_rel_close(value, ref, OUTPUT_RTOL, f"{backend} {name}")
    extras = judge_extra_stats(logits.cpu(), targets.cpu(), 0.9, -100, logit_scale, softcap)
    assert_rel_close(ours.log_sum_sq_probs, extras[0], OUTPUT_RTOL, "log_sum_sq_probs")
    finite = torch.isfinite(extras[1])
    assert_rel_close(ours.mean_logits.cpu()[finite], extras[1][finite], OUTPUT_RTOL, "mean_logits")
    assert torch.equal(ours.is_top1.cpu(), extras[2])
    assert token_stats(logits, targets, 0.9, backend).is_top1 is None  # no extras unless asked


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("logit_scale,softcap", TRANSFORMS[1:])
@pytest.mark.parametrize("inplace", [False, True])
def test_policy_loss_with_transform_matches_judge(backend, device, name, logit_scale, softcap, inplace):
    cfg = CONFIGS[name]
    batch = make_batch(3, 6, 40, device=device, seed=2)
    # a moderate factor: old_logp and ref_logp come from the plain logits, so the KL stays finite
    logits = saturating(batch, torch.float32, 3.0).requires_grad_(True)
    leaf = logits * 1.0 if inplace else logits
    out = policy_loss(leaf, batch["targets"], batch["old_logp"], batch["advantages"], batch["loss_mask"],
                      ref_logp=batch["ref_logp"], cfg=cfg, backend=backend, inplace_grad=inplace,
                      logit_scale=logit_scale, softcap=softcap)
    out.loss.backward()
    loss, grad, per_token = judge_policy_loss(
        logits.detach().cpu(), batch["targets"].cpu(), batch["old_logp"].cpu(), batch["advantages"].cpu(),
        batch["loss_mask"].cpu(), ref_logp=batch["ref_logp"].cpu(), cfg=cfg, logit_scale=logit_scale,
        softcap=softcap)
    assert_rel_close(out.loss, loss, OUTPUT_RTOL, f"{backend} {name} loss")
    assert_rel_close(logits.grad, grad, GRAD_RTOL[torch.float32], f"{backend} {name} grad")
    assert_rel_close(out.energy, per_token["energy"], OUTPUT_RTOL, "energy")


def test_packed_policy_loss_with_transform(backend, device):
    batch = make_batch(1, 9, 30, device=device, seed=3)
    cu_seqlens = torch.tensor([0, 4, 9], device=device)
    flat = {k: v.reshape(9, *v.shape[2:]) for k, v in batch.items() if k != "advantages"}
    cfg = PolicyLossConfig(agg="seq-mean-token-mean")
    logits = flat["logits"].clone().requires_grad_(True)
    advantages = torch.tensor([1.0, -0.5], device=device)  # one per packed sequence
    out = policy_loss(logits, flat["targets"], flat["old_logp"], advantages, flat["loss_mask"], cu_seqlens=cu_seqlens,
                      cfg=cfg, backend=backend, logit_scale=0.9, softcap=3.0)
    out.loss.backward()
    loss, grad, _ = judge_policy_loss(logits.detach().cpu(), flat["targets"].cpu(), flat["old_logp"].cpu(),
                                      advantages.cpu(), flat["loss_mask"].cpu(), cu_seqlens=cu_seqlens.cpu(), cfg=cfg,
                                      logit_scale=0.9, softcap=3.0)
    assert_rel_close(out.loss, loss, OUTPUT_RTOL, "packed loss")
    assert_rel_close(logits.grad, grad, GRAD_RTOL[torch.float32], "packed grad")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_linear_path_with_transform_and_fp32_logits(backend, device, name):
    """bf16 hidden states and head with ``logits_dtype=float32``: the loss and the statistics of the fp32
    logits computed from the same bf16 values (float64 judge), with the transform on."""
    cfg = CONFIGS[name]
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(2, 5, 16, generator=g).to(torch.bfloat16).to(device)
    weight = (torch.randn(48, 16, generator=g) / 2).to(torch.bfloat16).to(device)
    batch = make_batch(2, 5, 48, device=device, seed=4)
    params = [hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)]
    out = linear_policy_loss(params[0], params[1], batch["targets"], batch["old_logp"], batch["advantages"],
                             batch["loss_mask"], ref_logp=batch["ref_logp"], cfg=cfg, backend=backend, chunk_size=4,
                             logit_scale=1.2, softcap=5.0, logits_dtype=torch.float32)
    out.loss.backward()
    z = (hidden.double() @ weight.double().T).cpu()
    loss, grad, _ = judge_policy_loss(z, batch["targets"].cpu(), batch["old_logp"].cpu(), batch["advantages"].cpu(),
                                      batch["loss_mask"].cpu(), ref_logp=batch["ref_logp"].cpu(), cfg=cfg,
                                      logit_scale=1.2, softcap=5.0)
    assert_rel_close(out.loss, loss, OUTPUT_RTOL, "linear loss")
    assert_rel_close(params[0].grad, grad @ weight.double().cpu(), GRAD_RTOL[torch.bfloat16], "grad hidden")
    stats = linear_token_stats(hidden, weight, batch["targets"], 0.8, backend=backend, logit_scale=1.2, softcap=5.0,
                               logits_dtype=torch.float32, extra_stats=True)
    expected = judge_stats(z, batch["targets"].cpu(), 0.8, -100, 1.2, 5.0)
    assert_rel_close(stats.logp, expected[0], OUTPUT_RTOL, "linear logp")
    assert torch.equal(stats.is_top1.cpu(), judge_extra_stats(z, batch["targets"].cpu(), 0.8, -100, 1.2, 5.0)[2])


@pytest.mark.parametrize("field,value,error", [
    ("logit_scale", 0.0, ValueError), ("logit_scale", -1.0, ValueError), ("logit_scale", float("nan"), ValueError),
    ("logit_scale", float("inf"), ValueError), ("softcap", 0.0, ValueError), ("softcap", -2.0, ValueError),
    ("softcap", float("nan"), ValueError), ("softcap", float("inf"), ValueError), ("softcap", "30", TypeError),
])
def test_bad_transform_values_name_the_field(field, value, error):
    batch = make_batch(1, 3, 8)
    hidden, weight = torch.randn(1, 3, 4), torch.randn(8, 4)
    per_token = (batch["targets"], batch["old_logp"], batch["advantages"], batch["loss_mask"])
    calls = {
        "token_stats": lambda: token_stats(batch["logits"], batch["targets"], **{field: value}),
        "policy_loss": lambda: policy_loss(batch["logits"], *per_token, **{field: value}),
        "linear_token_stats": lambda: linear_token_stats(hidden, weight, batch["targets"], **{field: value}),
        "linear_policy_loss": lambda: linear_policy_loss(hidden, weight, *per_token, **{field: value}),
    }
    for owner, call in calls.items():
        with pytest.raises(error, match=f"{owner}.{field}"):
            call()
    with pytest.raises(TypeError, match="logits_dtype"):
        linear_token_stats(hidden, weight, batch["targets"], logits_dtype=torch.float16)
