"""OpenRLHF drop-in (SPEC section 9): its policy loss, and its actor forward fused with the LM head.

- ``ActFocusPolicyLoss``: OpenRLHF 0.11.2's ``openrlhf.models.loss.PolicyLoss`` (the same constructor
  arguments and defaults, plus ``actfocus=None``; the same forward arguments and return value
  ``(loss, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio)``), computed by ``actfocus_kernels.variants``
  on the log-probs. Option map: ``policy_loss_type`` ppo/gspo -> ``PolicyLossConfig.policy``;
  ``clip_eps_low/high`` -> ``clip_low/high``; ``dual_clip``; ``token_level_loss`` -> ``agg="token-mean"``
  with ``norm_tokens = batch_num_tokens / dp_size`` (local: the masked token count), else
  ``"seq-mean-token-mean"`` over the non-empty sequences with ``norm_seqs = global_batch_size / dp_size``;
  ``is_correction_*`` -> ``rollout_is_*`` (``variants.rollout_correction``, ppo only; gspo takes its ratio
  against ``rollout_log_probs`` instead, as OpenRLHF does). An all-masked batch under a local normaliser,
  OpenRLHF's 0/0 = NaN, gives the library's documented empty result: loss 0 (zero gradient), metrics 0.
- ActFocus (``actfocus=ActFocusConfig(...)``): the policy term is weighted by the ActFocus weights
  (SPEC section 3) of the rollout statistics, once per batch like the advantages: the forward's
  ``action_tokens`` (1 on action tokens: ``response_action_tokens`` applies the span rule to the decoded
  responses) and the uncertainty ``old_log_probs`` (``"nll"``), ``old_energy`` or ``old_entropy``.
- ``patch_actor_with_actfocus(actor)``: ``Actor.forward`` (``openrlhf/models/actor.py``) with the
  log-probs, and on request the entropy and the energy ``-T logsumexp(z / T)``, from the last hidden
  states and the LM head through ``linear_token_stats``: no ``[B, L, V]`` logits, padded or packed
  (``packing_samples``: the unpadded tokens as one packed row).

This module imports with torch alone (OpenRLHF's own package needs deepspeed and peft to import).
"""
from __future__ import annotations

import dataclasses
import numbers
import sys
import types
from typing import Optional

import torch
from torch import Tensor, nn

from .. import actfocus_weights, linear_token_stats
from ..config import ActFocusConfig, PolicyLossConfig, TokenStats
from ..layout import TokenLayout
from ..rollout_correction import rollout_correction
from ..rows import check
from ..variants import TokenTerms, objective
from .heads import logit_transform
from .spans import DEFAULT_ACTION_PATTERN, SpanRule, action_token_mask, check_offsets_tokenizer, check_span_rule

POLICY_TYPES = ("ppo", "gspo")
IS_LEVELS = ("off", "token", "seq")
IS_MODES = ("mask", "clip")
IS_GATINGS = ("ratio", "binary_kl", "tv")


def _check_options(dual_clip, policy_loss_type: str, level: str, mode: str, gating: str, threshold) -> None:
    """OpenRLHF's constructor rules (and its forward's policy type check), as ``ValueError``s."""
    check(policy_loss_type in POLICY_TYPES, f"policy_loss_type must be one of {POLICY_TYPES}, got {policy_loss_type!r}")
    check(dual_clip is None or (isinstance(dual_clip, numbers.Real) and dual_clip > 1.0),
          f"dual_clip must be > 1.0 (or None), got {dual_clip!r}")
    check(level in IS_LEVELS, f"is_correction_level must be off/token/seq, got {level!r}")
    check(mode in IS_MODES, f"is_correction_mode must be mask/clip, got {mode!r}")
    check(gating in IS_GATINGS, f"is_correction_gating must be ratio/binary_kl/tv, got {gating!r}")
    check(not isinstance(threshold, (str, bytes)) and len(threshold) == 2
          and all(isinstance(x, numbers.Real) for x in threshold),
          f"is_correction_threshold must be a pair (low, high) of numbers, got {threshold!r}", TypeError)
    check(not (mode == "clip" and (level == "seq" or gating != "ratio")),
          f"is_correction_mode=clip requires is_correction_level=token and is_correction_gating=ratio, got "
          f"is_correction_level={level!r}, is_correction_gating={gating!r}")
    check(not (gating != "ratio" and level != "off" and threshold[0] > 0),
          f"is_correction_gating={gating} takes an upper bound only (a single delta): is_correction_threshold[0] "
          f"must be <= 0, got {threshold[0]!r}")


def _broadcasts_to(x: Tensor, shape: tuple) -> bool:
    try:
        return torch.broadcast_shapes(x.shape, shape) == shape
    except RuntimeError:
        return False


def _masked_mean(x: Tensor, m: Tensor) -> Tensor:
    """``sum m x / sum m`` (0 when ``sum m = 0``), fp32."""
    total = m.sum()
    return ((m * x).sum() / torch.where(total > 0, total, 1.0)).to(torch.float32)


class ActFocusPolicyLoss(nn.Module):
    """OpenRLHF's ``PolicyLoss`` through ``actfocus_kernels.variants`` (see the module docstring).

    Per token, with ``r = exp(clamp(logp - old, -20, 20))`` (ppo) or the sequence ratio
    ``s_i = exp(sum_t m (logp - old) / max(sum_t m, 1))`` (gspo, ``old = rollout_log_probs`` when the
    correction is on): ``L = max(-A r, -A clip(r, 1 - clip_eps_low, 1 + clip_eps_high))``, with
    ``dual_clip = c``: ``min(L, -A c)`` where ``A < 0``; times the rollout correction ``c_t`` (ppo) and the
    ActFocus weight ``w_t``; aggregated by token (``sum m L / n``) or by sequence (``mean_i sum_t m L /
    sum_t m``). ``clip_ratio``: masked mean of ``clip(r) A < r A``; ``ppo_kl``: masked mean of
    ``old - logp``; ``vllm_kl`` / ``is_filter_ratio`` (None unless ppo with the correction on): the
    correction's metrics."""

    def __init__(self, clip_eps_low: float = 0.2, clip_eps_high: float = 0.2, dual_clip: float = None,
                 token_level_loss: bool = True, policy_loss_type: str = "ppo", is_correction_level: str = "off",
                 is_correction_mode: str = "mask", is_correction_gating: str = "ratio",
                 is_correction_threshold: list = (0.5, 5.0), actfocus: Optional[ActFocusConfig] = None) -> None:
        super().__init__()
        _check_options(dual_clip, policy_loss_type, is_correction_level, is_correction_mode, is_correction_gating,
                       is_correction_threshold)
        check(actfocus is None or isinstance(actfocus, ActFocusConfig),
              f"actfocus must be an ActFocusConfig or None, got {type(actfocus).__name__}", TypeError)
        check(actfocus is None or actfocus.source == "old",
              "OpenRLHF's loss sees log-probs only: actfocus needs ActFocusConfig(source='old')")
        self.clip_eps_low, self.clip_eps_high, self.dual_clip = clip_eps_low, clip_eps_high, dual_clip
        self.policy_loss_type = policy_loss_type
        self.token_level_loss = token_level_loss and policy_loss_type != "gspo"  # GSPO: a per-sample mean
        self.is_correction_level, self.is_correction_mode = is_correction_level, is_correction_mode
        self.is_correction_gating, self.is_correction_threshold = is_correction_gating, is_correction_threshold
        self.actfocus = actfocus
        correction = {}
        if is_correction_level != "off" and policy_loss_type == "ppo":
            correction = dict(rollout_is_level=is_correction_level, rollout_is_mode=is_correction_mode,
                              rollout_is_gating=is_correction_gating, rollout_is_low=float(is_correction_threshold[0]),
                              rollout_is_high=float(is_correction_threshold[1]))
        self.cfg = PolicyLossConfig(policy=policy_loss_type, clip_low=float(clip_eps_low),
                                    clip_high=float(clip_eps_high),
                                    dual_clip=None if dual_clip is None else float(dual_clip), **correction)

    def _aggregation(self, m: Tensor, dp_size, batch_num_tokens, global_batch_size) -> dict:
        """OpenRLHF's ``aggregate_loss`` as ``PolicyLossConfig`` fields."""
        check(isinstance(dp_size, numbers.Real) and dp_size > 0, f"dp_size must be > 0, got {dp_size!r}")
        if self.token_level_loss:
            if batch_num_tokens is None:
                total = float(m.sum())
                return dict(agg="token-mean", norm_tokens=total if total > 0 else None)
            check(float(batch_num_tokens) > 0, f"batch_num_tokens must be > 0, got {batch_num_tokens!r}")
            return dict(agg="token-mean", norm_tokens=float(batch_num_tokens) / float(dp_size))
        fields = dict(agg="seq-mean-token-mean", empty_seqs="skip")
        if global_batch_size is not None:
            check(float(global_batch_size) > 0, f"global_batch_size must be > 0, got {global_batch_size!r}")
            fields["norm_seqs"] = float(global_batch_size) / float(dp_size)
        return fields

    def forward(self, log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor,
                action_mask: Optional[Tensor] = None, rollout_log_probs: Optional[Tensor] = None, dp_size: int = 1,
                batch_num_tokens: Optional[float] = None, global_batch_size: Optional[float] = None, *,
                action_tokens: Optional[Tensor] = None, old_energy: Optional[Tensor] = None,
                old_entropy: Optional[Tensor] = None):
        """``(loss, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio)`` of ``[B, A]`` per-token inputs (see the
        class docstring); the keyword-only ``action_tokens`` / ``old_energy`` / ``old_entropy`` feed
        ActFocus (``self.actfocus``)."""
        check(isinstance(log_probs, Tensor) and log_probs.dim() == 2,
              f"log_probs must be a [B, A] tensor, got {getattr(log_probs, 'shape', type(log_probs).__name__)}")
        shape = tuple(log_probs.shape)
        for name, value in (("old_log_probs", old_log_probs), ("rollout_log_probs", rollout_log_probs),
                            ("action_mask", action_mask), ("action_tokens", action_tokens),
                            ("old_energy", old_energy), ("old_entropy", old_entropy)):
            check(value is None or (isinstance(value, Tensor) and tuple(value.shape) == shape),
                  f"{name} must be a tensor shaped like log_probs {shape}, got "
                  f"{getattr(value, 'shape', type(value).__name__)}")
        check(old_log_probs is not None, "old_log_probs is required")
        correcting = self.is_correction_level != "off"
        check(not correcting or rollout_log_probs is not None,
              f"is_correction_level={self.is_correction_level!r} needs rollout_log_probs")
        if action_mask is None:  # OpenRLHF takes a plain mean only there; elsewhere it fails on None
            check(self.policy_loss_type == "ppo" and self.token_level_loss and batch_num_tokens is None,
                  "action_mask=None is only accepted by a ppo token-level loss with the local normaliser")
            action_mask = torch.ones(shape, device=log_probs.device)
        rows = TokenLayout.of(shape, log_probs.device)

        def flat(x: Tensor) -> Tensor:
            return x.detach().reshape(-1).to(torch.float32)

        m, old = flat(action_mask), flat(old_log_probs)
        weights, correction = torch.ones_like(m, dtype=torch.float64), None
        if correcting and self.policy_loss_type == "ppo":
            correction = rollout_correction(old, flat(rollout_log_probs), m, rows, self.cfg)
            weights = correction.coef
        if self.actfocus is not None:
            weights = weights * self._actfocus_weights(old_log_probs, action_mask, action_tokens, old_energy,
                                                       old_entropy).reshape(-1)
        ratio_base = flat(rollout_log_probs) if correcting and self.policy_loss_type == "gspo" else old
        check(isinstance(advantages, Tensor) and _broadcasts_to(advantages, shape),
              f"advantages must be a tensor broadcastable to {shape}, got "
              f"{getattr(advantages, 'shape', type(advantages).__name__)}")
        advantages = torch.broadcast_to(advantages, shape)
        terms = TokenTerms(logp=log_probs.reshape(-1), entropy=torch.zeros_like(m), old_logp=ratio_base,
                           advantages=flat(advantages), ref_logp=None, weights=weights,
                           weighted=correction is not None or self.actfocus is not None, multiplier=m, rows=rows)
        cfg = dataclasses.replace(self.cfg, **self._aggregation(m, dp_size, batch_num_tokens, global_batch_size))
        out = objective(terms, cfg)
        surr1 = out.ratio * terms.advantages
        surr2 = out.ratio.clamp(1 - self.clip_eps_low, 1 + self.clip_eps_high) * terms.advantages
        clip_ratio = _masked_mean((surr2 < surr1).to(torch.float32), m)
        ppo_kl = _masked_mean(old - flat(log_probs), m)
        if correction is None:
            return out.loss, clip_ratio, ppo_kl, None, None
        return out.loss, clip_ratio, ppo_kl, correction.rollout_kl, correction.filter_frac

    def _actfocus_weights(self, old_log_probs: Tensor, action_mask: Tensor, action_tokens: Optional[Tensor],
                          old_energy: Optional[Tensor], old_entropy: Optional[Tensor]) -> Tensor:
        """The ActFocus weights ``[B, A]`` of the rollout statistics (SPEC section 3)."""
        cfg = self.actfocus
        check(action_tokens is not None, "actfocus needs action_tokens (1 on action tokens): response_action_tokens("
                                         "tokenizer, sequences, action_mask) applies the span rule")
        given = {"energy": ("old_energy", old_energy), "entropy": ("old_entropy", old_entropy),
                 "nll": ("old_log_probs", old_log_probs)}
        name, value = given[cfg.uncertainty]
        check(value is not None, f"ActFocusConfig(uncertainty={cfg.uncertainty!r}) needs {name}")
        zeros = torch.zeros_like(old_log_probs, dtype=torch.float32)
        stats = TokenStats(*(zeros if x is None else x.detach().float()
                             for x in (old_log_probs, old_energy, old_entropy)))
        return actfocus_weights(stats, action_mask.float(), action_tokens.float(), cfg)


def response_action_tokens(tokenizer, sequences: Tensor, action_mask: Tensor,
                           rule: SpanRule = DEFAULT_ACTION_PATTERN) -> Tensor:
    """``[B, A]`` float mask (``A = action_mask.shape[1]``), 1 on the response tokens (the last ``A``
    tokens of ``sequences``, those ``action_mask`` keeps) inside an action span of ``rule`` over each
    decoded response (``spans``: a regex, default ``<answer>.*?</answer>``, or a callable)."""
    check_span_rule(rule)
    check_offsets_tokenizer(tokenizer)
    return action_token_mask(tokenizer, sequences[:, -action_mask.shape[1]:], action_mask, rule)


class ActorOutput(dict):
    """The fused actor forward's ``output`` (OpenRLHF's has the logits; this one has none):
    ``entropy`` / ``energy`` ``[B, L - 1]`` when asked and a MoE model's router ``aux_loss``, readable as
    keys or attributes."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err


def _causal_lm(model: nn.Module) -> nn.Module:
    """The Hugging Face causal LM (unwrapping a peft model)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _router_aux_loss(inner: nn.Module, router_logits, attention_mask: Optional[Tensor]) -> Tensor:
    """The MoE load-balancing loss the causal LM's own forward returns as ``aux_loss`` (its modeling
    module's ``load_balancing_loss_func``, as Mixtral / Qwen-MoE / OLMoE compute it)."""
    balance = getattr(sys.modules[type(inner).__module__], "load_balancing_loss_func", None)
    check(balance is not None and hasattr(inner, "num_experts") and hasattr(inner, "num_experts_per_tok"),
          f"the fused OpenRLHF actor forward does not know {type(inner).__name__}'s router aux loss",
          NotImplementedError)
    return balance(router_logits, inner.num_experts, inner.num_experts_per_tok, attention_mask)


def actor_forward_with_actfocus(self, sequences: Tensor, action_mask: Optional[Tensor] = None,
                                attention_mask: Optional[Tensor] = None, return_output: bool = False,
                                allgather_logits: bool = False, return_logprobs: bool = False,
                                ring_attn_group=None, packed_seq_lens=None, return_entropy: bool = False,
                                return_energy: bool = False, **mm_inputs):
    """OpenRLHF's ``Actor.forward`` with ``linear_token_stats``: position t's statistics of the logits
    ``z_t = h_t W^T (+ b)`` of the next token ``sequences[t + 1]`` at temperature ``self.temperature``
    (``logp = s[y] - lse``, ``H = lse - sum p s``, ``E = -T lse``, ``s = z / T``; ``z`` transformed in the
    kernels as the model family's own forward transforms it, ``heads.logit_transform``: Gemma 2's softcap,
    Cohere's and Granite's scales), differentiable in the hidden states and the head.

    Returns the action log-probs ``log_probs[:, -A:] * action_mask`` (without ``action_mask``, with
    ``return_logprobs``: all ``[B, L - 1]`` log-probs), and with ``return_output`` an ``ActorOutput``
    holding ``entropy`` / ``energy`` (``return_entropy`` / ``return_energy``). Padded, or packed
    (``self.packing_samples``: the tokens ``attention_mask`` keeps, one packed row, scattered back)."""
    check(ring_attn_group is None, "the fused OpenRLHF actor forward does not support ring attention",
          NotImplementedError)
    check(not mm_inputs and not getattr(self, "is_vlm", False),
          "the fused OpenRLHF actor forward does not support VLM inputs", NotImplementedError)
    check((action_mask is not None or return_logprobs) and not allgather_logits,
          "the fused OpenRLHF actor forward computes no logits: pass action_mask or return_logprobs=True")
    check(attention_mask is not None, "the fused OpenRLHF actor forward needs attention_mask")
    check(not return_entropy or return_output, "return_entropy needs return_output=True (as OpenRLHF)")
    batch, seqlen = sequences.shape
    inner = _causal_lm(self.model)
    base, head = getattr(inner, inner.base_model_prefix), inner.get_output_embeddings()
    router = bool(getattr(inner.config, "output_router_logits", False))
    extra = dict(output_router_logits=True) if router else {}
    rolled = torch.roll(sequences, shifts=-1, dims=1)
    packed = getattr(self, "packing_samples", False)
    if packed:
        indices = attention_mask.reshape(-1).nonzero().squeeze(1)
        positions = torch.clip(torch.cumsum(attention_mask, dim=-1) - 1, min=0).reshape(-1)[indices]
        forward_mask = None
        outputs = base(sequences.reshape(-1)[indices][None], attention_mask=None, position_ids=positions[None], **extra)
        hidden, targets = outputs[0][0], rolled.reshape(-1)[indices]
    else:
        positions = attention_mask.long().cumsum(-1) - 1
        positions.masked_fill_(attention_mask == 0, 1)
        forward_mask = attention_mask
        outputs = base(sequences, attention_mask=attention_mask, position_ids=positions, **extra)
        hidden, targets = outputs[0], rolled
    logit_scale, softcap = logit_transform(inner.config.get_text_config())
    stats = linear_token_stats(hidden.to(head.weight.dtype), head.weight, targets, float(self.temperature),
                               bias=head.bias, logit_scale=logit_scale, softcap=softcap)

    def padded(x: Tensor) -> Tensor:  # [B, L - 1], zeros on the padding of a packed batch
        if packed:
            x = x.new_zeros(batch * seqlen).index_put((indices,), x).view(batch, seqlen)
        return x[:, :-1]

    log_probs = padded(stats.logp)
    output = ActorOutput()
    if router:  # OpenRLHF turns output_router_logits on for MoE models; its trainer reads output.aux_loss
        output["aux_loss"] = _router_aux_loss(inner, outputs.router_logits, forward_mask)
    if return_entropy:
        output["entropy"] = padded(stats.entropy)
    if return_energy:
        output["energy"] = padded(stats.energy)
    if action_mask is not None:
        log_probs = log_probs[:, -action_mask.shape[1]:] * action_mask.float()
    return (log_probs, output) if return_output else log_probs


def patch_actor_with_actfocus(actor: nn.Module) -> None:
    """Make this OpenRLHF ``Actor`` instance's forward ``actor_forward_with_actfocus``."""
    actor.forward = types.MethodType(actor_forward_with_actfocus, actor)
