"""actfocus_kernels.integrations.verl against verl 0.9.1's own functions (SPEC section 9), on CPU.

- Each registered ``actfocus_<mode>`` loss against verl's registered ``<mode>``: values and gradients
  with respect to ``log_prob``, for every aggregation mode, with and without ``rollout_is_weights`` and
  verl's global batch normalisers (``config.global_batch_info``).
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
from verl.workers.config import ActorConfig, PolicyLossConfig as VerlPolicyLossConfig  # noqa: E402

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
                                            loss_scale_factor=12)}
CASES = [(mode, agg, info, weighted) for mode in af_verl.VERL_MODES for agg in AGG_MODES
         for info in GLOBAL_INFOS for weighted in (False, True)
         if not (mode in ("sapo", "geo_mean") and agg != "token-mean")]  # they ignore loss_agg_mode


@pytest.mark.parametrize("mode,agg,info,weighted", CASES,
                         ids=[f"{m}-{a}-{i}-{'w' if w else 'nw'}" for m, a, i, w in CASES])
def test_registered_loss_equals_verl(mode, agg, info, weighted):
    log_prob, old, advantages, mask, weights = batch()
    config = actor_config(mode, agg, GLOBAL_INFOS[info])
    results = []
    for name in (mode, f"actfocus_{mode}"):
        x = log_prob.clone().requires_grad_(True)
        torch.manual_seed(123)  # clip_cov draws its tokens from torch's default generator, as verl does
        loss, metrics = core_algos.get_policy_loss_fn(name)(
            old_log_prob=old, log_prob=x, advantages=advantages, response_mask=mask, loss_agg_mode=agg,
            config=config, rollout_is_weights=weights if weighted else None)
        loss.backward()
        results.append((loss.detach(), x.grad, metrics))
    (verl_loss, verl_grad, verl_metrics), (our_loss, our_grad, our_metrics) = results
    assert float(verl_grad.norm()) > 0
    assert abs(float(our_loss - verl_loss)) <= LOSS_TOL * max(abs(float(verl_loss)), 1.0)
    assert float((our_grad - verl_grad).norm() / verl_grad.norm()) <= GRAD_TOL
    if "actor/ppo_kl" in verl_metrics and mode != "kl_cov":  # kl_cov reports the mean |log ratio|
        assert our_metrics["actor/ppo_kl"] == pytest.approx(verl_metrics["actor/ppo_kl"], rel=1e-5, abs=1e-7)


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


def test_patch_forward_with_actfocus_patches_one_instance():
    model, other = toy_model(), toy_model()
    af_verl.patch_forward_with_actfocus(model)
    input_ids = torch.randint(3, model.config.vocab_size, (2, 6))
    out = model(input_ids=input_ids, return_dict=True)
    assert out.energy is not None and out.log_probs.shape == (2, 6)
    assert not hasattr(other(input_ids=input_ids), "energy")
