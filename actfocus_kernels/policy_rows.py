"""A policy loss's per-token inputs and outputs on rows (SPEC sections 3-4), shared by the logits
path (``api.policy_loss``) and the linear path (``linear.linear_policy_loss``):

- ``loss_inputs``: validated, flattened per-token inputs as a ``RowLossInputs`` record, with the
  aggregation mode folded into ``scale = d loss / d token_loss`` and the token weights resolved
  (given, or ActFocus from the current or the old policy's statistics);
- ``loss_output``: the row outputs shaped like the targets, plus the masked scalar metrics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from .config import ActFocusConfig, PolicyLossConfig, PolicyLossOutput, TokenStats
from .contract import KL_TYPE_IDS, LossOpOutputs, RowLossInputs
from .rows import Rows, advantages_per_token, check, check_targets, flat_targets, float_per_token, per_token


def check_loss_configs(cfg: PolicyLossConfig, actfocus: Optional[ActFocusConfig]) -> None:
    check(isinstance(cfg, PolicyLossConfig), f"cfg must be a PolicyLossConfig, got {type(cfg).__name__}", TypeError)
    check(actfocus is None or isinstance(actfocus, ActFocusConfig),
          f"actfocus must be an ActFocusConfig or None, got {type(actfocus).__name__}", TypeError)


def uncertainty_of(stats: TokenStats, kind: str) -> Tensor:
    """The uncertainty ``ActFocusConfig.uncertainty`` names: energy, entropy or ``nll = -logp``."""
    return {"energy": stats.energy, "entropy": stats.entropy, "nll": -stats.logp}[kind]


def weights_on_rows(uncertainty: Tensor, mask: Tensor, action: Tensor, rows: Rows, turn_ids: Optional[Tensor],
                    cfg: ActFocusConfig) -> Tensor:
    """ActFocus weights ``[N]`` of flat per-token inputs, through ``actfocus::actfocus_weights``."""
    if cfg.scope == "turn":
        check(turn_ids is not None, "ActFocusConfig(scope='turn') needs turn_ids")
    return torch.ops.actfocus.actfocus_weights(
        uncertainty.detach().reshape(-1), mask, action, rows.seq_ids,
        turn_ids if cfg.scope == "turn" else None, float(cfg.reasoning_weight), float(cfg.action_weight),
        float(cfg.redistribution), float(cfg.energy_temperature), float(cfg.max_weight), bool(cfg.preserve_total),
    )


def mask_multiplier(loss_mask: Tensor, targets: Tensor, rows: Rows, ignore_index: int) -> Tensor:
    """The loss mask as the fp32 multiplier ``m [N]`` (SPEC section 4: a token is active iff
    ``m > 0`` and counts ``m`` in every sum), 0 where the target is ``ignore_index``."""
    m = per_token("loss_mask", loss_mask, rows).to(torch.float32)
    if not torch.compiler.is_compiling() and m.numel() > 0:
        bad = ~(torch.isfinite(m) & (m >= 0))
        if bool(bad.any()):
            index = int(bad.nonzero()[0])
            raise ValueError(f"loss_mask must be finite and >= 0 (a multiplier), got {float(m[index])} at flat "
                             f"position {index}")
    return torch.where(targets != ignore_index, m, 0.0)


def _per_seq(m: Tensor, rows: Rows) -> Tensor:
    return torch.zeros(rows.num_seqs, dtype=m.dtype, device=m.device).index_add_(0, rows.seq_ids, m)


def sequence_count(m: Tensor, rows: Rows, cfg: PolicyLossConfig, skip_empty: bool):
    """The number of sequences a seq-mean mode divides by: ``cfg.norm_seqs`` when given (a global
    count), else the sequences with ``sum m > 0`` (``empty_seqs="skip"``, verl's local convention) or
    every row (``"count"``, TRL's grpo); ``skip_empty`` is the mode's default (SPEC section 4)."""
    if cfg.norm_seqs is not None:
        return cfg.norm_seqs
    if cfg.empty_seqs == "skip" or (cfg.empty_seqs is None and skip_empty):
        return (_per_seq(m, rows) > 0).sum().clamp(min=1)
    return max(rows.num_seqs, 1)


def token_count(m: Tensor, cfg: PolicyLossConfig):
    """The token-mean denominator: ``cfg.norm_tokens`` when given, else ``max(sum m, 1)``."""
    return cfg.norm_tokens if cfg.norm_tokens is not None else m.sum().clamp(min=1.0)


def loss_scale(m: Tensor, rows: Rows, cfg: PolicyLossConfig) -> Tensor:
    """``d loss / d l_t`` for the aggregation mode ``cfg.agg`` (SPEC section 4) with mask multipliers
    ``m``: zero off the mask, ``m`` times the mode's normaliser on it."""
    if cfg.agg == "token-mean":
        return m / token_count(m, cfg)
    if cfg.agg == "token-sum":
        return m
    if cfg.agg == "seq-mean-token-mean":
        per_seq = _per_seq(m, rows)
        return m / (torch.where(per_seq > 0, per_seq, 1.0)[rows.seq_ids] * sequence_count(m, rows, cfg, True))
    if cfg.agg == "seq-mean-token-sum":
        return m / sequence_count(m, rows, cfg, False)
    norm_len = cfg.norm_len if cfg.norm_len is not None else rows.padded_len
    return m / (sequence_count(m, rows, cfg, False) * norm_len)


@dataclass
class LossInputs:
    """A policy loss's validated inputs on rows: the kernels' ``row`` record; ``multiplier`` the
    loss mask's fp32 values ``m`` with ignored targets zeroed, ``mask`` the active tokens ``m > 0``;
    ``action`` the action mask; ``old_logp`` as given (flat); ``weights`` the token weights before
    masking."""

    row: RowLossInputs
    multiplier: Tensor
    mask: Tensor
    action: Tensor
    old_logp: Optional[Tensor]
    weights: Tensor


CurrentStats = Callable[[Tensor, Tensor], TokenStats]


def loss_inputs(
    rows: Rows, targets: Tensor, vocab: int, old_logp: Optional[Tensor], advantages: Tensor, loss_mask: Tensor,
    weights: Optional[Tensor], action_mask: Optional[Tensor], ref_logp: Optional[Tensor],
    turn_ids: Optional[Tensor], cfg: PolicyLossConfig, actfocus: Optional[ActFocusConfig],
    current_stats: CurrentStats,
) -> LossInputs:
    """Validate and flatten the per-token inputs of ``policy_loss`` / ``linear_policy_loss``.

    ``current_stats(flat_targets, selected)`` returns the current policy's ``TokenStats`` on the
    rows (needed on the ``selected`` ones, the masked action tokens, at least) for
    ``ActFocusConfig(source="current")``.
    """
    check_targets(targets, vocab, cfg.ignore_index)
    targets = flat_targets(targets)
    multiplier = mask_multiplier(loss_mask, targets, rows, cfg.ignore_index)
    mask = multiplier > 0
    action = per_token("action_mask", action_mask, rows)
    action = action > 0 if action is not None else torch.zeros_like(mask)
    turns = per_token("turn_ids", turn_ids, rows)
    old = float_per_token("old_logp", old_logp, rows)
    ref = float_per_token("ref_logp", ref_logp, rows)
    check(cfg.kl_coef == 0 or ref is not None, "cfg.kl_coef > 0 needs ref_logp")

    flat_weights = float_per_token("weights", weights, rows)
    if actfocus is not None:
        check(action_mask is not None, "actfocus weighting needs action_mask")
        if actfocus.source == "current":
            check(weights is None, "pass either weights or actfocus=ActFocusConfig(source='current'), not both")
            stats = current_stats(targets, mask & action)
            flat_weights = weights_on_rows(uncertainty_of(stats, actfocus.uncertainty), mask, action, rows, turns,
                                           actfocus)
        elif flat_weights is None:
            check(actfocus.uncertainty == "nll" and old is not None,
                  "ActFocusConfig(source='old') needs weights=actfocus_weights(token_stats(old_logits, targets), "
                  "loss_mask, action_mask, cfg) (only uncertainty='nll' can use old_logp directly)")
            flat_weights = weights_on_rows(-old, mask, action, rows, turns, actfocus)
    if flat_weights is None:
        flat_weights = torch.ones(mask.shape, dtype=torch.float32, device=mask.device)

    # KL types without an id (abs, k1+, ...) only run the two-pass path, whose kernels never read it
    row = RowLossInputs(
        targets=targets, old_logp=old, advantages=advantages_per_token(advantages, rows),
        ref_logp=ref if cfg.kl_coef > 0 else None, weights=flat_weights, scale=loss_scale(multiplier, rows, cfg),
        temperature=float(cfg.temperature), clip_low=float(cfg.clip_low), clip_high=float(cfg.clip_high),
        dual_clip=float(cfg.dual_clip or 0.0), kl_coef=float(cfg.kl_coef), kl_type=KL_TYPE_IDS.get(cfg.kl_type, 0),
        entropy_coef=float(cfg.entropy_coef), ignore_index=int(cfg.ignore_index),
    )
    return LossInputs(row, multiplier, mask, action, old, flat_weights)


def masked_mean(values: Tensor, multiplier: Tensor, selected: Tensor) -> Tensor:
    """``sum m v / sum m`` over the ``selected`` tokens (0 when ``sum m = 0``); unselected values may
    hold anything, NaN included."""
    m = torch.where(selected, multiplier, 0.0)
    total = m.sum()
    return torch.where(selected, m * values, 0.0).sum() / torch.where(total > 0, total, 1.0)


def loss_output(out: LossOpOutputs, rows: Rows, inputs: LossInputs) -> PolicyLossOutput:
    """Per-token row outputs shaped like the targets, plus the masked scalar metrics (SPEC 4)."""
    mask, action, m = inputs.mask, inputs.action, inputs.multiplier
    old_for_kl = inputs.old_logp if inputs.old_logp is not None else out.logp
    shape = rows.token_shape
    return PolicyLossOutput(
        loss=out.loss,
        logp=out.logp.view(shape),
        energy=out.energy.view(shape),
        entropy=out.entropy.view(shape),
        ratio=out.ratio.view(shape),
        clipped=out.clipped.view(shape),
        weights=torch.where(mask, inputs.weights, 0.0).view(shape),
        clip_frac=masked_mean(out.clipped.to(torch.float32), m, mask),
        approx_kl=masked_mean(old_for_kl - out.logp, m, mask),
        entropy_mean=masked_mean(out.entropy, m, mask),
        energy_mean_action=masked_mean(out.energy, m, mask & action),
        energy_mean_reasoning=masked_mean(out.energy, m, mask & ~action),
    )
