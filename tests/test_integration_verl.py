"""actfocus_kernels.integrations.verl against verl 0.9.1's own functions (SPEC section 9), on CPU.

- Each registered ``actfocus_<mode>`` loss against verl's registered ``<mode>``: values, gradients
  with respect to ``log_prob`` and every metric key and value, for every aggregation mode, with and
  without ``rollout_is_weights`` and verl's global batch normalisers (``config.global_batch_info``).
- Bad input: every argument of every registered loss in every wrong shape equals verl (a per-sequence
  ``[B, 1]`` broadcast) or is an error naming the argument and ``[B, L]``; bad masks and global counts.
- ``forward_with_actfocus_backend`` against verl's fused forward ``forward_with_torch_backend`` on a
  tiny random Qwen2: log-probs, entropies and the gradients they send to every parameter; the
  energies against ``-T logsumexp(z / T)`` of the model's own logits.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("verl")

from verl.models.transformers.dense_common import forward_with_torch_backend  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.workers.config import ActorConfig  # noqa: E402
from verl.workers.config import PolicyLossConfig as VerlPolicyLossConfig

from actfocus_kernels import ActFocusConfig  # noqa: E402
from actfocus_kernels.integrations import verl as af_verl  # noqa: E402
from actfocus_kernels.integrations.spans import action_token_mask  # noqa: E402

from toy_lm import toy_model, toy_tokenizer  # noqa: E402

LOSS_TOL = 1e-6
GRAD_TOL = 1e-5
AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-sum-norm", "seq-mean-token-mean")


# dppo's bounds are on the probability (TV) or its binary KL: small enough here that some tokens leave them
CLIP_RATIOS = {"dppo_tv": (0.05, 0.08), "dppo_kl": (0.01, 0.02)}


def actor_config(mode: str, agg: str, global_info: dict) -> ActorConfig:
    low, high = CLIP_RATIOS.get(mode, (0.2, 0.28))
    config = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, clip_ratio_low=low,
                         clip_ratio_high=high, loss_agg_mode=agg, tau_pos=0.9, tau_neg=1.2,
                         policy_loss=VerlPolicyLossConfig(loss_mode=mode, dro_beta=0.3, clip_cov_ratio=0.2,
                                                          clip_cov_lb=-1.0, clip_cov_ub=5.0, kl_cov_ratio=0.2))
    config.global_batch_info.update(global_info)
    return config


def batch(seed: int = 0, rows: int = 6, length: int = 9):
    g = torch.Generator().manual_seed(seed)
    log_prob = -torch.rand(rows, length, generator=g, dtype=torch.float32) * 3
    old = log_prob + 0.8 * torch.randn(rows, length, generator=g)  # ratios past the clips and the dual clip
    advantages = torch.randn(rows, 1, generator=g).expand(rows, length).contiguous()
    lengths = torch.tensor([9, 5, 0, 7, 1, 3])[:rows]
    mask = torch.arange(length)[None, :] < lengths[:, None]
    weights = torch.rand(rows, length, generator=g) * 2
    return log_prob, old, advantages, mask, weights


GLOBAL_INFOS = {"local": {}, "global": dict(dp_size=2, batch_num_tokens=40, global_batch_size=10,
                                            loss_scale_factor=12),
                "fractional": dict(loss_scale_factor=12.5)}  # verl divides by it: not truncated
CASES = [(mode, agg, info, weighted) for mode in af_verl.VERL_MODES for agg in AGG_MODES
         for info in GLOBAL_INFOS for weighted in (False, True)
         if not (mode in ("sapo", "geo_mean") and agg != "token-mean")  # they ignore loss_agg_mode
         and not (info == "fractional" and agg != "seq-mean-token-sum-norm")]


def call(name: str, config, agg: str = "token-mean", **tensors):
    """``(loss, gradient w.r.t. log_prob, metrics)`` of the registered loss ``name`` on ``tensors``
    (``old_log_prob``, ``log_prob``, ``advantages``, ``response_mask``, ``rollout_is_weights``)."""
    x = tensors["log_prob"].clone().requires_grad_(True)
    torch.manual_seed(123)  # clip_cov draws its tokens from torch's default generator, as verl does
    loss, metrics = core_algos.get_policy_loss_fn(name)(
        old_log_prob=tensors["old_log_prob"], log_prob=x, advantages=tensors["advantages"],
        response_mask=tensors["response_mask"], loss_agg_mode=agg, config=config,
        rollout_is_weights=tensors.get("rollout_is_weights"))
    loss.backward()
    return loss.detach(), x.grad, metrics


def assert_equal_verl(ours, verl) -> None:
    """Loss, gradient and every metric key and value of ``ours`` equal ``verl``'s."""
    (our_loss, our_grad, our_metrics), (verl_loss, verl_grad, verl_metrics) = ours, verl
    assert float(verl_grad.norm()) > 0
    assert abs(float(our_loss - verl_loss)) <= LOSS_TOL * max(abs(float(verl_loss)), 1.0)
    assert float((our_grad - verl_grad).norm() / verl_grad.norm()) <= GRAD_TOL
    assert set(our_metrics) == set(verl_metrics)
    for key, value in verl_metrics.items():
        assert our_metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def tensors_of(weighted: bool = False) -> dict:
    log_prob, old, advantages, mask, weights = batch()
    tensors = dict(old_log_prob=old, log_prob=log_prob, advantages=advantages, response_mask=mask)
    return dict(tensors, rollout_is_weights=weights) if weighted else tensors


@pytest.mark.parametrize("mode,agg,info,weighted", CASES,
                         ids=[f"{m}-{a}-{i}-{'w' if w else 'nw'}" for m, a, i, w in CASES])
def test_registered_loss_equals_verl(mode, agg, info, weighted):
    config = actor_config(mode, agg, GLOBAL_INFOS[info])
    tensors = tensors_of(weighted)
    assert_equal_verl(call(f"actfocus_{mode}", config, agg, **tensors), call(mode, config, agg, **tensors))


# metrics this batch makes non-zero in verl (so that a wrong definition shows)
NONZERO_METRICS = {
    "vanilla": ("actor/pg_clipfrac", "actor/pg_clipfrac_lower"), "dppo_tv": ("actor/pg_clipfrac",
                                                                              "actor/pg_clipfrac_lower"),
    "dppo_kl": ("actor/pg_clipfrac", "actor/pg_clipfrac_lower"), "gspo": ("actor/pg_clipfrac",),
    "clip_cov": ("actor/pg_clipfrac",), "geo_mean": ("actor/pg_clipfrac", "actor/pg_clipfrac_lower"),
    "cispo": ("actor/pg_clipfrac",),
}


@pytest.mark.parametrize("mode", list(af_verl.VERL_MODES))
def test_the_metrics_are_verls_keys_and_not_trivial(mode):
    config = actor_config(mode, "token-mean", {})
    _, _, metrics = call(mode, config, **tensors_of())
    _, _, ours = call(f"actfocus_{mode}", config, **tensors_of())
    assert set(ours) == set(metrics)
    for key in NONZERO_METRICS.get(mode, ()):
        assert metrics[key] > 0, key
        assert ours[key] == pytest.approx(metrics[key], rel=1e-5), key
    if mode != "gpg":
        assert abs(metrics["actor/ppo_kl"]) > 0


def test_actfocus_is_vanilla_and_every_mode_is_registered():
    assert core_algos.get_policy_loss_fn("actfocus") is core_algos.get_policy_loss_fn("actfocus_vanilla")
    for mode in af_verl.VERL_MODES:
        assert f"actfocus_{mode}" in core_algos.POLICY_LOSS_REGISTRY


def test_uncovered_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="bypass_mode"):
        af_verl.verl_policy_config("bypass_mode", "token-mean", actor_config("vanilla", "token-mean", {}))


def test_actfocus_rollout_weights_from_old_log_probs_and_an_action_key():
    log_prob, old, advantages, mask, weights = batch()
    action = torch.zeros_like(mask)
    action[:, 2:4] = True
    cfg = ActFocusConfig(uncertainty="nll", reasoning_weight=0.25)
    combined = af_verl.actfocus_rollout_weights(mask, action, cfg, old_log_probs=old, rollout_is_weights=weights)
    alone = af_verl.actfocus_rollout_weights(mask, action, cfg, old_log_probs=old)
    assert torch.allclose(combined, alone * weights)
    assert torch.all(alone[mask & ~action] == 0.25)
    assert torch.all(alone[~mask] == 0)
    with pytest.raises(ValueError, match="old_energy"):
        af_verl.actfocus_rollout_weights(mask, action, ActFocusConfig(), old_log_probs=old)


def test_action_mask_from_the_span_rule_on_decoded_responses():
    tokenizer = toy_tokenizer()
    texts = ["think left <answer> up down </answer>", "move <answer> a </answer> b"]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    responses = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x in ids])
    response_mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    action = action_token_mask(tokenizer, responses, response_mask, r"<answer>.*?</answer>")
    assert action.tolist() == [[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_forward_equals_verl_fused_forward(temperature):
    model = toy_model(seed=3)
    input_ids = torch.randint(3, model.config.vocab_size, (3, 10), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    g = torch.Generator().manual_seed(1)
    coef_logp, coef_entropy = torch.randn(3, 10, generator=g), torch.randn(3, 10, generator=g)
    results = []
    for forward in (forward_with_torch_backend, af_verl.forward_with_actfocus_backend):
        model.zero_grad()
        out = forward(model, input_ids=input_ids, attention_mask=attention_mask, return_dict=True,
                      temperature=temperature)
        ((coef_logp * out.log_probs).sum() + (coef_entropy * out.entropy).sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((out, grads))
    (verl_out, verl_grads), (our_out, our_grads) = results
    for name in ("log_probs", "entropy"):
        ours, theirs = getattr(our_out, name).detach(), getattr(verl_out, name).detach()
        assert float((ours - theirs).norm() / theirs.norm()) <= 1e-6, name
    assert float((our_grads - verl_grads).norm() / verl_grads.norm()) <= GRAD_TOL
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    energy = -temperature * torch.logsumexp(logits / temperature, dim=-1)
    assert float((our_out.energy.detach() - energy).norm() / energy.norm()) <= 1e-6
    assert our_out.sum_pi_squared is None


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_forward_gives_sum_pi_squared(temperature):
    """``calculate_sum_pi_squared=True``: verl's own ``calculate_sum_pi_squared_from_logits`` of the
    tempered logits (which verl's fused kernels refuse to compute), from the same pass."""
    from verl.utils.torch_functional import calculate_sum_pi_squared_from_logits

    model = toy_model(seed=4)
    input_ids = torch.randint(3, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(2))
    out = af_verl.forward_with_actfocus_backend(model, input_ids=input_ids, return_dict=True, temperature=temperature,
                                                calculate_sum_pi_squared=True)
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits.double()
    expected = calculate_sum_pi_squared_from_logits(logits / temperature)
    assert float((out.sum_pi_squared.double() - expected).norm() / expected.norm()) <= 1e-5


def test_patch_forward_with_actfocus_patches_one_instance():
    model, other = toy_model(), toy_model()
    af_verl.patch_forward_with_actfocus(model)
    input_ids = torch.randint(3, model.config.vocab_size, (2, 6))
    out = model(input_ids=input_ids, return_dict=True)
    assert out.energy is not None and out.log_probs.shape == (2, 6)
    assert not hasattr(other(input_ids=input_ids), "energy")


# -- bad input: every argument of every registered loss in every wrong shape --------------------------

def wrong_shapes(x: torch.Tensor) -> dict:
    """``x [B, L]`` (B != L) in every wrong layout a caller hands over."""
    return {"transposed": x.T.contiguous(), "flat": x.reshape(-1), "per-seq-1d": x[:, 0], "short": x[:, :-2],
            "long": torch.cat([x, x[:, :3]], 1), "per-seq": x[:, :1], "3d": x[..., None], "row": x[:1]}


TENSOR_ARGS = ("old_log_prob", "log_prob", "advantages", "response_mask", "rollout_is_weights")
SHAPE_CASES = [(mode, arg, kind) for mode in af_verl.VERL_MODES for arg in TENSOR_ARGS
               for kind in wrong_shapes(torch.zeros(2, 3))]


@pytest.mark.parametrize("mode,arg,kind", SHAPE_CASES, ids=[f"{m}-{a}-{k}" for m, a, k in SHAPE_CASES])
def test_every_argument_in_every_wrong_shape_equals_verl_or_names_itself(mode, arg, kind):
    """A per-sequence ``[B, 1]`` advantage or weight is broadcast as verl broadcasts it (verl's clip_cov
    and kl_cov index advantages per token and fail there: we equal verl on the broadcast ones); every
    other shape is a ValueError naming the argument and the expected ``[B, L]``."""
    config = actor_config(mode, "token-mean", {})
    tensors = tensors_of(weighted=True)
    bad = dict(tensors, **{arg: wrong_shapes(tensors[arg])[kind]})
    if kind == "per-seq" and arg in ("advantages", "rollout_is_weights"):
        truth = dict(tensors, **{arg: bad[arg].expand_as(tensors[arg])})
        assert_equal_verl(call(f"actfocus_{mode}", config, **bad), call(mode, config, **truth))
        return
    with pytest.raises(ValueError, match=rf"^{arg} must be \[B, L\] = \[6, 9\]"):
        call(f"actfocus_{mode}", config, **bad)


def test_per_sequence_weights_of_a_square_batch_are_an_error():
    """``B == L``: a ``[B]`` weight would broadcast along the batch, silently; ``[B, 1]`` is per row."""
    mask = torch.ones(4, 4, dtype=torch.bool)
    action = torch.zeros(4, 4, dtype=torch.bool)
    action[:, :2] = True
    old = -torch.rand(4, 4, generator=torch.Generator().manual_seed(0))
    cfg = ActFocusConfig(uncertainty="nll")
    per_row = torch.tensor([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match=r"^rollout_is_weights must be \[B, L\] = \[4, 4\].*unsqueeze"):
        af_verl.actfocus_rollout_weights(mask, action, cfg, old_log_probs=old, rollout_is_weights=per_row)
    alone = af_verl.actfocus_rollout_weights(mask, action, cfg, old_log_probs=old)
    combined = af_verl.actfocus_rollout_weights(mask, action, cfg, old_log_probs=old,
                                                rollout_is_weights=per_row[:, None])
    assert torch.equal(combined, alone * per_row[:, None])
    with pytest.raises(ValueError, match=r"^action_mask must be \[B, L\] = \[4, 4\]"):
        af_verl.actfocus_rollout_weights(mask, action[:, :3], cfg, old_log_probs=old)


@pytest.mark.parametrize("mode", list(af_verl.VERL_MODES))
@pytest.mark.parametrize("value", [-1.0, float("nan")])
def test_negative_or_nan_response_mask_is_an_error(mode, value):
    tensors = tensors_of()
    mask = tensors["response_mask"].float()
    mask[0, 1] = value
    with pytest.raises(ValueError, match="^response_mask must be non-negative and finite"):
        call(f"actfocus_{mode}", actor_config(mode, "token-mean", {}), **dict(tensors, response_mask=mask))


SHARDED_CASES = [(mode, agg) for mode in af_verl.VERL_MODES for agg in AGG_MODES]


@pytest.mark.parametrize("mode,agg", SHARDED_CASES, ids=[f"{m}-{a}" for m, a in SHARDED_CASES])
def test_sharded_without_the_global_counts_raises_where_verl_does(mode, agg):
    """``dp_size > 1`` without ``batch_num_tokens`` / ``global_batch_size``: verl's agg_loss raises
    for the modes that need the count; ours raises naming it (the other modes equal verl)."""
    config = actor_config(mode, agg, dict(dp_size=2))
    tensors = tensors_of()
    try:
        verl = call(mode, config, agg, **tensors)
    except ValueError as err:
        needed = "batch_num_tokens" if "batch_num_tokens" in str(err) else "global_batch_size"
        with pytest.raises(ValueError, match=rf"config.global_batch_info\['{needed}'\].*required when dp_size > 1"):
            call(f"actfocus_{mode}", config, agg, **tensors)
        return
    assert_equal_verl(call(f"actfocus_{mode}", config, agg, **tensors), verl)


BAD_INFOS = [("batch_num_tokens", 0), ("batch_num_tokens", -40), ("batch_num_tokens", float("nan")),
             ("batch_num_tokens", True), ("global_batch_size", 0), ("global_batch_size", float("inf")),
             ("loss_scale_factor", -2.0), ("dp_size", 1.5), ("dp_size", 0)]


@pytest.mark.parametrize("key,value", BAD_INFOS, ids=[f"{k}={v}" for k, v in BAD_INFOS])
@pytest.mark.parametrize("agg", AGG_MODES)
def test_a_bad_global_count_names_the_users_key(key, value, agg):
    """The error names verl's key (never the library's ``norm_tokens`` / ``norm_seqs``)."""
    config = actor_config("vanilla", agg, {key: value, "dp_size": 2} if key != "dp_size" else {key: value})
    with pytest.raises(ValueError, match=rf"config.global_batch_info\['{key}'\] must be a positive finite"):
        call("actfocus_vanilla", config, agg, **tensors_of())


def test_a_tensor_global_count_is_read_as_its_value():
    info = dict(dp_size=2, batch_num_tokens=torch.tensor(40), global_batch_size=torch.tensor(10.0))
    for agg in AGG_MODES:
        config = actor_config("vanilla", agg, info)
        assert_equal_verl(call("actfocus_vanilla", config, agg, **tensors_of()),
                          call("vanilla", config, agg, **tensors_of()))


@pytest.mark.parametrize("mode", list(af_verl.VERL_MODES))
def test_nan_off_the_mask_stays_out_of_the_loss_and_metrics_as_in_verl(mode):
    tensors = tensors_of(weighted=True)
    mask = tensors["response_mask"]
    for name in ("log_prob", "old_log_prob"):
        tensors[name] = torch.where(mask, tensors[name], float("nan"))
    config = actor_config(mode, "token-mean", {})
    verl_loss, _, verl_metrics = call(mode, config, **tensors)
    loss, _, metrics = call(f"actfocus_{mode}", config, **tensors)
    assert torch.isfinite(loss)
    if mode == "gspo":  # verl sums m * lr with the NaN in its sequence ratio: its loss is NaN, ours is not
        assert not torch.isfinite(verl_loss)
        return
    assert metrics == pytest.approx(verl_metrics, rel=1e-5, abs=1e-7)
