"""Bad input never gives garbage (SPEC sections 2-5): non-finite inputs propagate on active tokens
and never on inactive ones, integers do not overflow, masks are multipliers, configs reject what
they cannot compute, and misuse gets an error naming the problem. Every backend on this machine."""
import math

import pytest
import torch

from actfocus_kernels import ActFocusConfig, PolicyLossConfig, TokenStats, actfocus_weights, policy_loss, token_stats
from actfocus_kernels.testing import GRAD_RTOL, OUTPUT_RTOL, assert_rel_close

from judge import judge_policy_loss, judge_stats, make_batch


def loss_and_grad(batch, backend, cfg=PolicyLossConfig(), **changes):
    values = {**batch, **changes}
    logits = values["logits"].clone().requires_grad_(True)
    out = policy_loss(logits, values["targets"], values["old_logp"], values["advantages"], values["loss_mask"],
                      ref_logp=values["ref_logp"], cfg=cfg, backend=backend)
    out.loss.backward()
    return out, logits.grad


# --- non-finite inputs ---------------------------------------------------------------------------


def test_nan_logits_on_an_active_row_propagate(backend, device):
    batch = make_batch(2, 4, 33, device=device, seed=1)
    batch["loss_mask"].fill_(1.0)
    batch["logits"][0, 1, 5] = float("nan")
    out, grad = loss_and_grad(batch, backend)
    assert math.isnan(out.ratio[0, 1].item()) and math.isnan(out.logp[0, 1].item())
    assert math.isnan(out.loss.item()) and torch.isnan(grad[0, 1]).all()


@pytest.mark.parametrize("name", ["old_logp", "advantages", "ref_logp"])
def test_nan_per_token_input_on_an_active_token_propagates(backend, device, name):
    batch = make_batch(2, 4, 33, device=device, seed=2)
    batch["loss_mask"].fill_(1.0)
    batch[name][1, 2] = float("nan")
    out, grad = loss_and_grad(batch, backend, PolicyLossConfig(kl_coef=0.1))
    assert math.isnan(out.loss.item()) and torch.isnan(grad[1, 2]).any()
    assert torch.isfinite(grad[0]).all()  # other rows keep their gradient


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_inactive_rows_contribute_exactly_zero(backend, device, value):
    batch = make_batch(2, 4, 33, device=device, seed=3)
    clean_out, clean_grad = loss_and_grad(batch, backend)
    batch["loss_mask"][0, 2] = 0.0
    dirty = {name: batch[name].clone() for name in ("logits", "old_logp", "advantages", "ref_logp")}
    dirty["logits"][0, 2] = value
    for name in ("old_logp", "advantages", "ref_logp"):
        dirty[name][0, 2] = value
    batch["loss_mask"][0, 2] = 0.0
    expected_out, expected_grad = loss_and_grad({**batch, "logits": batch["logits"]}, backend)
    out, grad = loss_and_grad(batch, backend, **dirty)
    assert torch.isfinite(out.loss) and torch.equal(grad[0, 2], torch.zeros_like(grad[0, 2]))
    assert torch.allclose(out.loss, expected_out.loss, rtol=1e-6, atol=1e-7)
    assert torch.allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)
    for metric in ("clip_frac", "approx_kl", "entropy_mean", "energy_mean_reasoning"):
        assert torch.isfinite(getattr(out, metric)), metric
    assert clean_out.loss.isfinite() and clean_grad.isfinite().all()


# --- extreme temperatures: the one-hot limit, never NaN ---------------------------------------------


@pytest.mark.parametrize("temperature", [1e-40, 1e-30, 1e-8])
def test_tiny_temperature_gives_the_one_hot_limit(backend, device, temperature):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(5, 50, generator=g) * 3).to(device)
    targets = logits.argmax(-1)
    targets[1] = (targets[1] + 1) % 50  # one target off the argmax
    stats = token_stats(logits, targets, temperature, backend=backend)
    assert torch.allclose(stats.entropy, torch.zeros(5, device=device), atol=1e-6)
    assert torch.allclose(stats.energy, -logits.max(-1).values, rtol=1e-6)
    on_max = torch.arange(5, device=device) != 1
    assert torch.equal(stats.logp[on_max], torch.zeros(4, device=device))
    assert stats.logp[1] < -1e6  # -(z_max - z_y) / T
    loss_mask = torch.ones(5, device=device)
    z = logits.clone().requires_grad_(True)
    advantages = (torch.randn(5, generator=g) * 3).to(device)  # |A| > 1: grad_scale * A overflows fp32
    out = policy_loss(z, targets, torch.zeros(5, device=device), advantages, loss_mask,
                      cfg=PolicyLossConfig(temperature=temperature, entropy_coef=0.01), backend=backend)
    out.loss.backward()
    assert torch.isfinite(out.loss) and not torch.isnan(z.grad).any()
    assert torch.equal(z.grad[on_max], torch.zeros_like(z.grad[on_max]))  # p = onehot(y): no gradient


@pytest.mark.parametrize("temperature", [0.05, 1e3, 1e20])
def test_extreme_but_representable_temperatures_match_the_judge(backend, device, temperature):
    batch = make_batch(2, 3, 40, device=device, seed=4)
    stats = token_stats(batch["logits"], batch["targets"], temperature, backend=backend)
    for value, expected, name in zip(stats, judge_stats(batch["logits"], batch["targets"], temperature),
                                     ("logp", "energy", "entropy")):
        assert_rel_close(value, expected, OUTPUT_RTOL, name)


# --- masks are multipliers ---------------------------------------------------------------------------


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                                 "seq-mean-token-sum-norm"])
def test_fractional_masks_count_as_multipliers(backend, device, agg):
    batch = make_batch(3, 5, 30, device=device, seed=5)
    g = torch.Generator().manual_seed(5)
    batch["loss_mask"] = (torch.rand(3, 5, generator=g) * (torch.rand(3, 5, generator=g) > 0.3)).to(device)
    batch["loss_mask"][2] = 0.25  # a sequence whose masks sum to more than 1 and less than its length
    cfg = PolicyLossConfig(agg=agg, kl_coef=0.05, entropy_coef=0.01)
    out, grad = loss_and_grad(batch, backend, cfg)
    loss, expected_grad, _ = judge_policy_loss(batch["logits"], batch["targets"], batch["old_logp"],
                                               batch["advantages"], batch["loss_mask"], ref_logp=batch["ref_logp"],
                                               cfg=cfg)
    assert_rel_close(out.loss, loss, OUTPUT_RTOL, "loss")
    assert_rel_close(grad, expected_grad, GRAD_RTOL[torch.float32], "grad")
    m = batch["loss_mask"]
    assert math.isclose(out.clip_frac.item(), (m * out.clipped).sum().item() / m.sum().item(), rel_tol=1e-5)
    assert math.isclose(out.entropy_mean.item(), (m * out.entropy).sum().item() / m.sum().item(), rel_tol=1e-5)
    binary = loss_and_grad({**batch, "loss_mask": (m > 0).float()}, backend, cfg)[0]
    assert not torch.allclose(binary.loss, out.loss)  # 0.5 does not count as 1


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf")])
def test_negative_or_non_finite_masks_are_errors(bad):
    batch = make_batch(2, 3, 20)
    batch["loss_mask"][1, 1] = bad
    with pytest.raises(ValueError, match="loss_mask must be finite and >= 0"):
        loss_and_grad(batch, "reference")


# --- integers ----------------------------------------------------------------------------------------


def test_turn_ids_spanning_int64_keep_sequences_apart():
    energy = torch.randn(2, 4)
    stats = TokenStats(torch.zeros(2, 4), energy, torch.zeros(2, 4))
    mask, action = torch.ones(2, 4), torch.ones(2, 4)
    low, high = -(2 ** 63), 2 ** 63 - 1
    huge = torch.tensor([[low, low, high, high], [low, low, high, high]])
    compact = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    cfg = ActFocusConfig(scope="turn")
    expected = actfocus_weights(stats, mask, action, cfg, turn_ids=compact)
    assert torch.equal(actfocus_weights(stats, mask, action, cfg, turn_ids=huge), expected)


@pytest.mark.parametrize("value", [2 ** 70, -(2 ** 64)])
def test_ignore_index_out_of_int64_is_named(value):
    with pytest.raises(ValueError, match="ignore_index must fit in int64"):
        PolicyLossConfig(ignore_index=value)
    with pytest.raises(ValueError, match="ignore_index must fit in int64"):
        token_stats(torch.randn(2, 5), torch.zeros(2, dtype=torch.long), ignore_index=value)


# --- configs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, error, match", [
    ("temperature", float("inf"), ValueError, "PolicyLossConfig.temperature must be finite"),
    ("temperature", float("nan"), ValueError, "PolicyLossConfig.temperature must be finite"),
    ("entropy_coef", float("nan"), ValueError, "PolicyLossConfig.entropy_coef must be finite"),
    ("kl_coef", float("inf"), ValueError, "PolicyLossConfig.kl_coef must be finite"),
    ("clip_high", "0.2", TypeError, r"PolicyLossConfig.clip_high must be a finite number, got '0.2'"),
    ("dual_clip", float("nan"), ValueError, "PolicyLossConfig.dual_clip must be finite"),
    ("norm_tokens", float("inf"), ValueError, "PolicyLossConfig.norm_tokens must be finite"),
    ("norm_len", 2.5, TypeError, "PolicyLossConfig.norm_len must be an int"),
    ("ignore_index", -100.0, TypeError, "PolicyLossConfig.ignore_index must be an int"),
    ("agg", None, ValueError, "PolicyLossConfig.agg must be one of"),
    ("clip_low", True, TypeError, "PolicyLossConfig.clip_low must be a finite number"),
])
def test_policy_config_validation_names_the_field(field, value, error, match):
    with pytest.raises(error, match=match):
        PolicyLossConfig(**{field: value})


@pytest.mark.parametrize("field, value, error, match", [
    ("reasoning_weight", float("nan"), ValueError, "ActFocusConfig.reasoning_weight must be finite"),
    ("redistribution", float("inf"), ValueError, "ActFocusConfig.redistribution must be finite"),
    ("energy_temperature", "1", TypeError, "ActFocusConfig.energy_temperature must be a finite number"),
    ("max_weight", float("inf"), ValueError, "ActFocusConfig.max_weight must be finite"),
    ("preserve_total", 1, TypeError, "ActFocusConfig.preserve_total must be a bool"),
    ("source", "new", ValueError, "ActFocusConfig.source must be one of"),
])
def test_actfocus_config_validation_names_the_field(field, value, error, match):
    with pytest.raises(error, match=match):
        ActFocusConfig(**{field: value})


@pytest.mark.parametrize("temperature", [float("inf"), float("nan"), "1.0", 0.0])
def test_function_temperatures_are_validated(temperature):
    with pytest.raises((ValueError, TypeError), match="token_stats.temperature"):
        token_stats(torch.randn(2, 5), torch.zeros(2, dtype=torch.long), temperature)


# --- clear errors for misuse ----------------------------------------------------------------------------


def packed(cu_seqlens):
    batch = make_batch(1, 6, 20)
    flat = {k: v.reshape(6, -1).squeeze(-1) if k != "logits" else v.reshape(6, 20) for k, v in batch.items()}
    return policy_loss(flat["logits"], flat["targets"], flat["old_logp"], flat["advantages"], flat["loss_mask"],
                       cu_seqlens=cu_seqlens, backend="reference")


def test_float_cu_seqlens_is_named():
    with pytest.raises(TypeError, match="cu_seqlens must be an integer tensor, got torch.float32"):
        packed(torch.tensor([0.0, 6.0]))


def test_cu_seqlens_without_a_sequence_is_named():
    with pytest.raises(ValueError, match=r"cu_seqlens must be 1-D \[S \+ 1\] with S >= 1 sequences.*\[0\]"):
        packed(torch.tensor([0]))


def test_second_backward_is_a_clear_error(backend, device):
    batch = make_batch(2, 3, 20, device=device)
    logits = batch["logits"].clone().requires_grad_(True)
    out = policy_loss(logits, batch["targets"], batch["old_logp"], batch["advantages"], batch["loss_mask"],
                      backend=backend)
    out.loss.backward(retain_graph=True)
    logits.grad.zero_()
    with pytest.raises(RuntimeError, match="backward may run only once"):
        out.loss.backward(retain_graph=True)


def test_expanded_logits_cannot_hold_an_inplace_gradient(backend, device):
    source = torch.randn(1, 20, device=device).expand(6, 20).requires_grad_(True)  # row stride 0
    with pytest.raises(ValueError, match="rows do not overlap"):
        policy_loss(source, torch.zeros(6, dtype=torch.long, device=device), None, torch.ones(6, device=device),
                    torch.ones(6, device=device), inplace_grad=True, backend=backend)
