"""Policy variants and trainer conventions (SPEC section 4.1) against the float64 judge, every backend
on this machine: padded and packed layouts, weights and ActFocus, the linear path, masks, compile."""
import zlib

import pytest
import torch

from actfocus_kernels import ActFocusConfig, PolicyLossConfig, linear_policy_loss, policy_loss
from actfocus_kernels.testing import GRAD_RTOL, OUTPUT_RTOL, assert_rel_close
from actfocus_kernels.variants import is_fused

from compiled import compare_compiled_step
from judge import judge_policy_loss, make_batch
from linear_judge import judge_linear, leaves, linear_batch

# parameters chosen so that every clip / selection branch fires on the test batches
VARIANTS = {
    "ppo-delta": PolicyLossConfig(delta=1.1),
    "gspo": PolicyLossConfig(policy="gspo", clip_low=0.05, clip_high=0.05, agg="seq-mean-token-mean"),
    "gspo-delta": PolicyLossConfig(policy="gspo", clip_low=0.05, clip_high=0.3, delta=1.02),
    "gspo_token": PolicyLossConfig(policy="gspo_token", clip_low=0.05, clip_high=0.05),
    "cispo": PolicyLossConfig(policy="cispo", clip_high=0.1),
    "cispo_two_sided": PolicyLossConfig(policy="cispo_two_sided"),
    "sapo": PolicyLossConfig(policy="sapo", sapo_tau_pos=1.0, sapo_tau_neg=1.05, agg="seq-mean-token-mean"),
    "gpg": PolicyLossConfig(policy="gpg"),
    "dro": PolicyLossConfig(policy="dro", dro_beta=0.5),
    "gmpo": PolicyLossConfig(policy="gmpo", clip_low=0.3, clip_high=0.3),
    "clip_cov": PolicyLossConfig(policy="clip_cov", clip_cov_ratio=0.2, clip_cov_lb=-0.5, clip_cov_ub=2.0),
    "kl_cov": PolicyLossConfig(policy="kl_cov", kl_cov_ratio=0.2, kl_cov_coef=1.0),
    "dppo_tv": PolicyLossConfig(policy="dppo_tv", clip_low=0.002, clip_high=0.002, dppo_ratio_cap=1.2),
    "dppo_kl": PolicyLossConfig(policy="dppo_kl", clip_low=1e-5, clip_high=1e-5, dppo_ratio_cap=1.2),
    "vespo": PolicyLossConfig(policy="vespo", norm_tokens=17.0),
    "kl-abs": PolicyLossConfig(kl_coef=0.1, kl_type="abs"),
    "kl-k1+": PolicyLossConfig(kl_coef=0.1, kl_type="k1+"),
    "kl-k3+": PolicyLossConfig(kl_coef=0.1, kl_type="k3+"),
    "kl-low_var_kl": PolicyLossConfig(kl_coef=0.1, kl_type="low_var_kl"),
    "kl-abs+": PolicyLossConfig(kl_coef=0.1, kl_type="abs+"),
    # the bias-corrected KL multiplies the token ratio, not these policies' sequence ratios
    "gmpo-bias-corrected": PolicyLossConfig(policy="gmpo", clip_low=0.3, clip_high=0.3, kl_coef=0.1,
                                            kl_bias_correction=True),
    "gspo_token-bias-corrected": PolicyLossConfig(policy="gspo_token", clip_low=0.05, clip_high=0.05, kl_coef=0.1,
                                                  kl_bias_correction=True),
    "vespo-bias-corrected": PolicyLossConfig(policy="vespo", norm_tokens=17.0, kl_coef=0.1, kl_bias_correction=True),
    "trl-bias-corrected-k3": PolicyLossConfig(kl_coef=0.1, kl_bias_correction=True, agg="seq-mean-token-mean"),
    "trl-gspo-bias-corrected": PolicyLossConfig(policy="gspo", kl_coef=0.1, kl_bias_correction=True),
    "trl-entropy-token-mean": PolicyLossConfig(agg="seq-mean-token-sum", entropy_coef=0.05, entropy_agg="token-mean"),
    "verl-token-sum": PolicyLossConfig(agg="token-sum", entropy_coef=0.01),
    "verl-global-batch": PolicyLossConfig(agg="seq-mean-token-mean", norm_seqs=7.0),
    "verl-local-seq-sum": PolicyLossConfig(agg="seq-mean-token-sum", empty_seqs="skip"),
    "trl-grpo-all-rows": PolicyLossConfig(agg="seq-mean-token-mean", empty_seqs="count"),
}
# variants with a clip branch: the test batches must put tokens on both sides of it
CLIPPING = {"ppo-delta", "gspo", "gspo-delta", "gspo_token", "cispo", "cispo_two_sided", "gmpo", "clip_cov",
            "kl_cov", "dppo_tv", "dppo_kl"}


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode()) % 1000


def variant_batch(name, device, batch=4, length=6, vocab=300):
    data = make_batch(batch, length, vocab, device=device, seed=seed_of(name))
    # centred at 1 (both signs still occur): a loss that cancels to nearly 0 would measure the fp32
    # cancellation of its terms rather than the variant
    data["advantages"] += 1.0
    data["loss_mask"][2] = 0  # an empty row: the normaliser conventions differ on it
    return data


def run(data, backend, cfg, weights=None, generator_seed=0, **kwargs):
    logits = data["logits"].clone().requires_grad_(True)
    out = policy_loss(logits, data["targets"], data["old_logp"], data["advantages"], data["loss_mask"],
                      weights=weights, ref_logp=data["ref_logp"], cfg=cfg, backend=backend,
                      generator=torch.Generator().manual_seed(generator_seed), **kwargs)
    out.loss.backward()
    return out, logits.grad


def judge(data, cfg, weights=None, generator_seed=0):
    return judge_policy_loss(data["logits"], data["targets"], data["old_logp"], data["advantages"],
                             data["loss_mask"], weights=weights, ref_logp=data["ref_logp"], cfg=cfg,
                             generator=torch.Generator().manual_seed(generator_seed))


def test_variant_configs_are_two_pass_except_vanilla_ppo():
    assert is_fused(PolicyLossConfig(kl_coef=0.1, kl_type="k2", dual_clip=2.0, agg="token-sum", norm_seqs=3.0))
    assert not any(is_fused(cfg) for cfg in VARIANTS.values() if cfg.policy != "ppo" or cfg.delta is not None)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_matches_judge(backend, device, name, weighted):
    data = variant_batch(name, device)
    weights = None
    if weighted:
        weights = (torch.rand(data["targets"].shape, generator=torch.Generator().manual_seed(1)) * 2).to(device)
    cfg = VARIANTS[name]
    out, grad = run(data, backend, cfg, weights)
    loss, expected_grad, per_token = judge(data, cfg, weights)
    assert_rel_close(out.loss, loss, OUTPUT_RTOL, "loss")
    assert_rel_close(grad, expected_grad, GRAD_RTOL[grad.dtype], "grad")
    active = data["loss_mask"] > 0
    assert_rel_close(out.ratio[active], per_token["ratio"][active], OUTPUT_RTOL, "ratio")
    for field in ("logp", "energy", "entropy"):
        assert_rel_close(getattr(out, field), per_token[field], OUTPUT_RTOL, field)
    assert torch.all(grad[~active] == 0) and torch.all(out.ratio[~active] == 1) and not out.clipped[~active].any()
    if name in CLIPPING:
        assert out.clipped[active].any() and (~out.clipped[active]).any(), "both sides of the clip must be tested"


@pytest.mark.parametrize("name", ["gspo", "gmpo", "kl_cov", "trl-entropy-token-mean", "verl-local-seq-sum"])
def test_variant_packed_equals_padded(backend, device, name):
    lengths = [4, 1, 6, 3]
    data = variant_batch(name, device, vocab=128)
    padding = torch.arange(6, device=device)[None, :] >= torch.tensor(lengths, device=device)[:, None]
    data["loss_mask"][padding] = 0
    data["loss_mask"][2] = 1  # no empty row: a packed sequence of 0 tokens is another layout
    data["loss_mask"][padding] = 0
    cfg = VARIANTS[name]
    padded, padded_grad = run(data, backend, cfg)
    keep = ~padding.reshape(-1)
    packed = {k: v.reshape(-1, *v.shape[2:])[keep] for k, v in data.items() if v.dim() >= 2}
    packed["advantages"] = data["advantages"].reshape(-1)[keep]
    cu_seqlens = torch.tensor([0, 4, 5, 11, 14], device=device)
    out, grad = run(packed, backend, cfg, cu_seqlens=cu_seqlens)
    assert torch.allclose(out.loss, padded.loss, rtol=1e-6, atol=1e-7)
    assert torch.allclose(grad, padded_grad.reshape(-1, 128)[keep], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", ["gspo", "cispo", "gmpo", "trl-bias-corrected-k3"])
def test_variant_actfocus_equals_its_weights(backend, device, name):
    data = variant_batch(name, device)
    cfg, actfocus = VARIANTS[name], ActFocusConfig(source="current", reasoning_weight=0.3)
    logits = data["logits"].clone().requires_grad_(True)
    out = policy_loss(logits, data["targets"], data["old_logp"], data["advantages"], data["loss_mask"],
                      action_mask=data["action_mask"], ref_logp=data["ref_logp"], cfg=cfg, actfocus=actfocus,
                      backend=backend)
    out.loss.backward()
    assert (out.weights != 1).any()
    given, given_grad = run(data, backend, cfg, weights=out.weights)
    assert torch.allclose(out.loss, given.loss, rtol=1e-6) and torch.allclose(logits.grad, given_grad, rtol=1e-6)


@pytest.mark.parametrize("name", ["gspo", "gspo_token", "sapo", "gmpo", "clip_cov", "kl-k3+",
                                  "trl-entropy-token-mean"])
def test_variant_linear_path_matches_judge(backend, device, name):
    data = linear_batch(3, 5, 24, 64, device=device, seed=seed_of(name))
    cfg = VARIANTS[name]
    params = leaves(data)
    out = linear_policy_loss(params["hidden"], params["weight"], data["targets"], data["old_logp"],
                             data["advantages"], data["loss_mask"], bias=params["bias"], chunk_size=4,
                             ref_logp=data["ref_logp"], cfg=cfg, backend=backend,
                             generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    loss, _, grads = judge_linear(data, 4, cfg, generator=torch.Generator().manual_seed(0))
    assert_rel_close(out.loss, loss, OUTPUT_RTOL, "loss")
    for key, param in params.items():
        assert_rel_close(param.grad, grads[key], GRAD_RTOL[torch.float32], key)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_masked_nan_does_not_leak_and_all_masked_is_zero(device, name):
    data = variant_batch(name, device, vocab=64)
    masked = data["loss_mask"] == 0
    data["old_logp"][masked] = float("nan")
    data["advantages"][masked] = float("nan")
    data["ref_logp"][masked] = float("nan")
    out, grad = run(data, "reference", VARIANTS[name])
    assert torch.isfinite(out.loss) and torch.all(grad[masked] == 0) and torch.isfinite(grad).all()
    data["loss_mask"].zero_()
    out, grad = run(data, "reference", VARIANTS[name])
    assert out.loss == 0 and torch.all(grad == 0)


def test_nan_on_an_active_token_propagates(device):
    data = variant_batch("nan", device, vocab=64)
    data["old_logp"][0, 1] = float("nan")
    data["loss_mask"][0, 1] = 1
    for name in ("gspo", "cispo", "gmpo"):
        out, _ = run(data, "reference", VARIANTS[name])
        assert torch.isnan(out.loss), name


def test_clip_cov_is_reproducible_with_a_generator(device):
    data = variant_batch("clip_cov", device)
    cfg = VARIANTS["clip_cov"]
    first, _ = run(data, "reference", cfg, generator_seed=3)
    again, _ = run(data, "reference", cfg, generator_seed=3)
    other = [run(data, "reference", cfg, generator_seed=seed)[0] for seed in range(4, 12)]
    assert torch.equal(first.clipped, again.clipped) and first.loss == again.loss
    assert any(not torch.equal(first.clipped, o.clipped) for o in other), "the generator must drive the choice"


@pytest.mark.parametrize("name", ["gspo", "cispo", "kl-k3+"])
def test_variant_inplace_gradient(backend, device, name):
    data = variant_batch(name, device)
    cfg = VARIANTS[name]
    expected, expected_grad = run(data, backend, cfg)
    logits = data["logits"].clone().requires_grad_(True)
    buffer = logits.detach()
    saved_before = torch.sin(logits)  # an earlier node that saved the logits must raise, not read the gradient
    out = policy_loss(logits, data["targets"], data["old_logp"], data["advantages"], data["loss_mask"],
                      ref_logp=data["ref_logp"], cfg=cfg, backend=backend, inplace_grad=True)
    assert torch.equal(buffer, data["logits"])  # the logits until backward
    out.loss.backward()
    assert logits.grad.data_ptr() == buffer.data_ptr()  # no new gradient buffer
    assert torch.allclose(logits.grad, expected_grad, rtol=1e-6, atol=1e-9) and out.loss == expected.loss
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved_before.sum().backward()


@pytest.mark.parametrize("name", [name for name, cfg in VARIANTS.items() if cfg.policy != "clip_cov"])
def test_variant_compiles_fullgraph(device, name):
    data = variant_batch(name, device, vocab=64)
    cfg = VARIANTS[name]
    torch._dynamo.reset()

    def step(logits):
        out = policy_loss(logits, data["targets"], data["old_logp"], data["advantages"], data["loss_mask"],
                          ref_logp=data["ref_logp"], cfg=cfg, backend="reference")
        return out.loss, out.clip_frac

    compare_compiled_step(step, data["logits"], "aot_eager")


@pytest.mark.parametrize("field, value, message", [
    ("policy", "bypass_mode", "policy must be one of"),
    ("delta", 1.0, "delta must be > 1"),
    ("sapo_tau_neg", -1.0, "sapo_tau_neg must be > 0"),
    ("entropy_agg", "seq-mean", "entropy_agg must be one of"),
    ("empty_seqs", "drop", "empty_seqs must be one of"),
    ("norm_seqs", 0.0, "norm_seqs must be > 0"),
    ("kl_bias_correction", 1, "kl_bias_correction must be a bool"),
])
def test_variant_config_validation(field, value, message):
    with pytest.raises((TypeError, ValueError), match=message):
        PolicyLossConfig(**{field: value})


def test_variant_options_that_do_not_combine_are_errors():
    with pytest.raises(ValueError, match="dual_clip is a policy 'ppo' or 'gspo' option"):
        PolicyLossConfig(policy="sapo", dual_clip=3.0)
    with pytest.raises(ValueError, match="delta caps the ratio"):
        PolicyLossConfig(policy="sapo", delta=2.0)
