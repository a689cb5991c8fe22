"""verl drop-in (SPEC section 9): policy losses in verl's registry and a fused forward with energies.

Importing this module registers, in ``verl.trainer.ppo.core_algos``' policy-loss registry, ``actfocus``
(vanilla PPO, dual clip included, with the token weights verl hands over) and ``actfocus_<mode>`` for
each verl mode the library's variants cover (``VERL_MODES``: verl mode -> ``PolicyLossConfig.policy``).
Each has verl's signature ``(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
rollout_is_weights) -> (loss, metrics)``, reads verl's ``ActorConfig`` (clip ratios, ``clip_ratio_c``,
``tau_pos`` / ``tau_neg``, ``policy_loss.*``) and ``config.global_batch_info``, and computes
``actfocus_kernels.variants.objective`` on the log-probs: equal to verl's own function (values,
gradients with respect to ``log_prob``, and the metrics, ``verl_metrics``). Its inputs are checked
first (``verl_inputs``): each equals verl's reading of it or is an error naming the argument.

verl hands a registered loss log-probs only, so ActFocus enters as token weights: verl multiplies
its policy term by ``rollout_is_weights``, and ``actfocus_rollout_weights`` folds the ActFocus
weights into them, once per batch (like the advantages) from the rollout statistics:

- the action mask: a ``[B, response_length]`` batch key your agent loop writes (1 on action tokens),
  or the span rule over the decoded responses (``spans.action_token_mask(tokenizer, responses,
  response_mask, rule)``);
- the uncertainty: the old log-probs verl already has (``uncertainty="nll"``), or the rollout energies
  (entropies) of ``forward_with_actfocus_backend`` when the old-log-prob pass runs it.

``forward_with_actfocus_backend`` is a drop-in for verl's fused forward
(``verl.models.transformers.dense_common.forward_with_torch_backend``, ``use_fused_kernels``): the
log-probs and entropies from the last hidden states and the LM head through ``linear_token_stats``
(differentiable, no logits materialised), and the energies as well. ``patch_forward_with_actfocus``
installs it on one model instance (verl's own patch replaces the class's forward).

verl's aggregation (``agg_loss``) maps to ``PolicyLossConfig`` as ``verl_aggregation`` says; its KL
and entropy terms stay in verl's ``ppo_loss``, outside the registered function.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor
from verl.models.transformers.dense_common import CausalLMOutputForPPO, forward_base_model
from verl.trainer.ppo.core_algos import register_policy_loss

from ..api import actfocus_weights
from ..config import ActFocusConfig, PolicyLossConfig, TokenStats
from ..layout import TokenLayout
from ..linear import linear_token_stats
from ..rows import check
from ..variants import Objective, TokenTerms, objective
from .verl_inputs import (
    VerlBatch,
    check_is_tensor,
    info_number,
    per_token,
    required_when_sharded,
    response_shape,
    verl_batch,
)
from .verl_metrics import verl_metrics

#: verl 0.9.1 loss mode -> the library's policy (bypass_mode, a dispatcher over rollout corrections, is not
#: covered)
VERL_MODES = {"vanilla": "ppo", "dppo_tv": "dppo_tv", "dppo_kl": "dppo_kl", "gspo": "gspo_token", "sapo": "sapo",
              "gpg": "gpg", "clip_cov": "clip_cov", "kl_cov": "kl_cov", "geo_mean": "gmpo", "dro": "dro",
              "cispo": "cispo_two_sided"}


@dataclass(frozen=True)
class VerlAggregation:
    """verl's ``agg_loss(loss_agg_mode, **global_batch_info)`` as ``PolicyLossConfig`` fields, and the
    factor the loss is multiplied by (``token-sum``'s ``dp_size``, ``1 / loss_scale_factor``)."""

    fields: dict
    factor: float


def verl_aggregation(loss_agg_mode: str, info: dict) -> VerlAggregation:
    """verl's aggregation as ``PolicyLossConfig`` fields.

    With ``dp = dp_size``: ``token-mean`` -> ``norm_tokens = batch_num_tokens / dp`` (local token
    count when absent); ``token-sum`` -> ``token-sum`` times ``dp``; the ``seq-mean-*`` modes ->
    ``norm_seqs = global_batch_size / dp`` (absent: the non-empty sequences, ``empty_seqs="skip"``);
    ``seq-mean-token-sum-norm`` divides by ``loss_scale_factor`` (absent: ``norm_len``, the padded
    length). ``verl_inputs`` checks ``info`` (the missing normalisers verl requires at ``dp > 1``).

    Args:
        loss_agg_mode: verl's ``loss_agg_mode``.
        info: verl's ``config.global_batch_info``.

    Returns:
        The ``VerlAggregation``.
    """
    dp = info_number(info, "dp_size", integer=True) or 1.0
    tokens, seqs, scale = (info_number(info, k) for k in ("batch_num_tokens", "global_batch_size",
                                                          "loss_scale_factor"))
    if loss_agg_mode == "token-mean":
        required_when_sharded(tokens, "batch_num_tokens", dp, loss_agg_mode)
        return VerlAggregation(dict(agg="token-mean", norm_tokens=None if tokens is None else tokens / dp), 1.0)
    if loss_agg_mode == "token-sum":
        return VerlAggregation(dict(agg="token-sum"), dp)
    check(loss_agg_mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm", "seq-mean-token-mean"),
          f"unknown verl loss_agg_mode {loss_agg_mode!r}")
    required_when_sharded(seqs, "global_batch_size", dp, loss_agg_mode)
    fields = dict(agg=loss_agg_mode, norm_seqs=None if seqs is None else seqs / dp, empty_seqs="skip")
    if loss_agg_mode == "seq-mean-token-sum-norm" and scale is not None:
        return VerlAggregation(dict(fields, agg="seq-mean-token-sum"), 1.0 / scale)
    return VerlAggregation(fields, 1.0)


def verl_policy_config(mode: str, loss_agg_mode: str, config) -> tuple[PolicyLossConfig, float]:
    """The ``PolicyLossConfig`` (and loss factor) of verl's ``mode`` under verl's ``ActorConfig``.

    Args:
        mode: a ``VERL_MODES`` key.
        loss_agg_mode: verl's ``loss_agg_mode`` (sapo and geo_mean ignore it, as verl does).
        config: verl's ``ActorConfig``.

    Returns:
        ``(cfg, factor)``: the loss is ``factor`` times the loss of ``cfg``.
    """
    check(mode in VERL_MODES, f"verl loss mode {mode!r} is not covered (covered: {', '.join(VERL_MODES)})")
    check(config is not None, "verl passes its ActorConfig as config; got None")
    low = config.clip_ratio_low if config.clip_ratio_low is not None else config.clip_ratio
    high = config.clip_ratio_high if config.clip_ratio_high is not None else config.clip_ratio
    losses = config.policy_loss
    # sapo aggregates by seq-mean-token-mean whatever the mode; geo_mean averages its rows itself
    if mode == "geo_mean":
        agg = VerlAggregation({}, 1.0)
    else:
        agg = verl_aggregation("seq-mean-token-mean" if mode == "sapo" else loss_agg_mode, config.global_batch_info)
    extra = {
        "vanilla": dict(dual_clip=config.get("clip_ratio_c", 3.0)),
        "dppo_tv": dict(dppo_ratio_cap=config.get("clip_ratio_c", 20.0)),
        "dppo_kl": dict(dppo_ratio_cap=config.get("clip_ratio_c", 20.0)),
        "sapo": dict(sapo_tau_pos=config.tau_pos, sapo_tau_neg=config.tau_neg),
        "clip_cov": dict(clip_cov_ratio=losses.clip_cov_ratio, clip_cov_lb=losses.clip_cov_lb,
                         clip_cov_ub=losses.clip_cov_ub),
        "kl_cov": dict(kl_cov_ratio=losses.kl_cov_ratio, kl_cov_coef=losses.ppo_kl_coef),
        "dro": dict(dro_beta=losses.dro_beta),
    }.get(mode, {})
    cfg = PolicyLossConfig(policy=VERL_MODES[mode], clip_low=low, clip_high=high, **extra, **agg.fields)
    return cfg, agg.factor


def logp_objective(batch: VerlBatch, cfg: PolicyLossConfig) -> Objective:
    """``variants.objective`` of ``cfg`` on verl's per-token log-probs (differentiable in
    ``batch.log_prob``), ``batch.weights`` on the policy term."""
    rows = TokenLayout.of(tuple(batch.log_prob.shape), batch.log_prob.device)

    def flat(x: Tensor) -> Tensor:
        return x.reshape(-1).to(torch.float32)

    m = flat(batch.response_mask)
    weights = None if batch.weights is None else flat(batch.weights.detach())
    terms = TokenTerms(
        logp=flat(batch.log_prob), entropy=torch.zeros_like(m), old_logp=flat(batch.old_log_prob.detach()),
        advantages=flat(batch.advantages.detach()), ref_logp=None,
        weights=torch.ones_like(m) if weights is None else weights, weighted=weights is not None,
        multiplier=m, rows=rows)
    return objective(terms, cfg)


def _registered_loss(mode: str):
    def policy_loss_fn(old_log_prob: Tensor, log_prob: Tensor, advantages: Tensor, response_mask: Tensor,
                       loss_agg_mode: str = "token-mean", config=None,
                       rollout_is_weights: Optional[Tensor] = None) -> tuple[Tensor, dict[str, Any]]:
        batch = verl_batch(old_log_prob, log_prob, advantages, response_mask, rollout_is_weights)
        cfg, factor = verl_policy_config(mode, loss_agg_mode, config)
        out = logp_objective(batch, cfg)
        return out.loss * factor, verl_metrics(mode, batch, out, cfg)

    policy_loss_fn.__name__ = f"actfocus_{mode}"
    policy_loss_fn.__doc__ = (f"verl's ``{mode}`` policy loss computed by actfocus_kernels (policy "
                              f"``{VERL_MODES[mode]}``), weighted by ``rollout_is_weights``: verl's signature, "
                              f"loss, gradient and metrics (``verl_metrics``); inputs checked by ``verl_batch``.")
    return policy_loss_fn


REGISTERED = {f"actfocus_{mode}": _registered_loss(mode) for mode in VERL_MODES}
REGISTERED["actfocus"] = REGISTERED["actfocus_vanilla"]
for _name, _fn in REGISTERED.items():
    register_policy_loss(_name)(_fn)


def actfocus_rollout_weights(response_mask: Tensor, action_mask: Tensor, cfg: ActFocusConfig, *,
                             old_log_probs: Optional[Tensor] = None, old_energy: Optional[Tensor] = None,
                             old_entropy: Optional[Tensor] = None,
                             rollout_is_weights: Optional[Tensor] = None) -> Tensor:
    """``rollout_is_weights`` (1 when None) times the ActFocus weights (SPEC section 3) of the rollout
    statistics, ``[B, response_length]``.

    Args:
        response_mask: ``[B, L]`` response mask.
        action_mask: ``[B, L]``, 1 on action tokens.
        cfg: the ``ActFocusConfig``; ``cfg.uncertainty`` names the statistic used.
        old_log_probs: ``[B, L]`` rollout log-probs (``uncertainty="nll"`` uses ``-old_log_probs``).
        old_energy: ``[B, L]`` rollout energies (``uncertainty="energy"``).
        old_entropy: ``[B, L]`` rollout entropies (``uncertainty="entropy"``).
        rollout_is_weights: None, ``[B, L]`` or per sequence ``[B, 1]`` (a ``[B]`` tensor is an error,
            even when ``B == L``).

    Returns:
        The ``[B, L]`` weights for verl's ``rollout_is_weights``.
    """
    sources = {"energy": ("old_energy", old_energy), "entropy": ("old_entropy", old_entropy),
               "nll": ("old_log_probs", old_log_probs)}
    name, given = sources[cfg.uncertainty]
    check(given is not None, f"ActFocusConfig(uncertainty={cfg.uncertainty!r}) needs {name}")
    named = {"response_mask": response_mask, "action_mask": action_mask, name: given}
    for key, value in named.items():
        check_is_tensor(key, value)
    shape = response_shape(named)
    zeros = torch.zeros_like(given, dtype=torch.float32)
    stats = TokenStats(*(zeros if x is None else x.float() for x in (old_log_probs, old_energy, old_entropy)))
    weights = actfocus_weights(stats, response_mask, action_mask, cfg)
    if rollout_is_weights is None:
        return weights
    return weights * per_token("rollout_is_weights", rollout_is_weights, shape)


@dataclass
class CausalLMOutputForActFocus(CausalLMOutputForPPO):
    """verl's fused-forward output plus the per-token ``energy = -T logsumexp(z / T)`` and, when asked,
    ``sum_pi_squared`` (verl's ``calculate_sum_pi_squared_from_logits`` of the tempered logits)."""

    energy: Optional[torch.FloatTensor] = None
    sum_pi_squared: Optional[torch.FloatTensor] = None


def forward_with_actfocus_backend(self, input_ids=None, attention_mask=None, position_ids=None,
                                  past_key_values=None, inputs_embeds=None, labels=None, use_cache=None,
                                  output_attentions=None, output_hidden_states=None, return_dict=None,
                                  cache_position=None, logits_to_keep=0, temperature: float = 1.0,
                                  shift_labels=None, calculate_sum_pi_squared: bool = False,
                                  **loss_kwargs) -> CausalLMOutputForActFocus:
    """verl's ``forward_with_torch_backend`` with ``linear_token_stats``: per position t the
    statistics of the logits ``z_t = h_t @ lm_head.weight.T (+ bias)`` at its next token (the rolled
    labels, or ``shift_labels``): ``log_probs``, ``entropy`` and ``energy``, differentiable in the
    hidden states and the LM head, ``[B, L]`` like the input ids; with ``calculate_sum_pi_squared``
    (verl's ``actor.calculate_sum_pi_squared``, which verl's own fused kernels refuse) also
    ``sum_pi_squared = sum_v p_v^2`` of the tempered logits (``exp(log_sum_sq_probs)``, the same pass).
    A model patched with a ``tp_group`` (``patch_forward_with_actfocus``) holds its rank's rows of a
    vocab-parallel LM head (SPEC 8)."""
    outputs = forward_base_model(self, input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=position_ids, past_key_values=past_key_values,
                                 inputs_embeds=inputs_embeds, use_cache=use_cache,
                                 output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                 cache_position=cache_position)
    if not return_dict:
        raise NotImplementedError("forward_with_actfocus_backend has to return_dict, as verl's fused forward")
    if shift_labels is not None:
        targets = shift_labels
    elif labels is not None:
        targets = torch.roll(labels, shifts=-1, dims=-1)
    elif input_ids is not None:
        targets = torch.roll(input_ids, shifts=-1, dims=-1)
    else:
        raise RuntimeError("forward_with_actfocus_backend needs labels, shift_labels or input_ids")
    head = self.lm_head
    hidden = outputs[0].to(head.weight.dtype)
    stats = linear_token_stats(hidden, head.weight, targets.to(torch.int64), float(temperature), bias=head.bias,
                               extra_stats=calculate_sum_pi_squared,
                               tp_group=getattr(self, "_actfocus_tp_group", None))
    sum_pi_squared = torch.exp(stats.log_sum_sq_probs) if calculate_sum_pi_squared else None
    return CausalLMOutputForActFocus(log_probs=stats.logp, entropy=stats.entropy, energy=stats.energy,
                                     sum_pi_squared=sum_pi_squared,
                                     past_key_values=outputs.past_key_values, hidden_states=outputs.hidden_states,
                                     attentions=outputs.attentions)


def patch_forward_with_actfocus(model, tp_group=None) -> None:
    """Make ``model``'s forward ``forward_with_actfocus_backend`` (this instance only); with
    ``tp_group`` its ``lm_head`` is this rank's contiguous block of the vocabulary rows."""
    model._actfocus_tp_group = tp_group
    model.forward = types.MethodType(forward_with_actfocus_backend, model)
