"""Public functions on logits (SPEC section 5): ``token_stats``, ``actfocus_weights`` and
``policy_loss``. Each validates and flattens its inputs to rows (``rows``, ``policy_rows``),
chooses the backend (``backends``), calls an ``actfocus`` op and shapes the results."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import ops, tensor_parallel
from .backends import resolve_backend
from .config import (ActFocusConfig, PolicyLossConfig, PolicyLossOutput, TokenStats, check_ignore_index,
                     check_temperature)
from .contract import LossOpOutputs
from .policy_rows import CurrentStats, LossInputs, check_loss_configs, loss_inputs, loss_output, uncertainty_of, weights_on_rows
from .rows import check, check_targets, flat_targets, flatten_rows, per_token
from .variants import is_fused, two_pass_loss


def token_stats(
    logits: Tensor, targets: Tensor, temperature: float = 1.0, backend: str = "auto", *, ignore_index: int = -100,
    tp_group=None,
) -> TokenStats:
    """Per-token ``logp``, ``energy`` and ``entropy`` of ``logits [..., V]`` in one read.

    With ``s = z / T``: ``lse = logsumexp(s)``, ``logp = s[y] - lse`` (0 where ``y == ignore_index``),
    ``energy = -T lse``, ``entropy = lse - sum_v p_v s_v`` (SPEC section 2). Outputs are fp32 and
    shaped like ``targets`` (``logits.shape[:-1]``). Differentiable when ``logits`` require grad:
    backward is one more pass over the logits, ``dz = (g_logp (onehot - p) - T g_energy p -
    g_entropy p (s - mu)) / T`` (exact; no second-order gradient). With ``tp_group`` the logits are
    this rank's vocabulary block and the targets global ids (``tensor_parallel``, SPEC section 8).
    """
    if tp_group is not None:
        return tensor_parallel.sharded_token_stats(logits, targets, temperature, backend, ignore_index=ignore_index,
                                                   group=tp_group)
    check(isinstance(logits, Tensor), f"logits must be a torch.Tensor, got {type(logits).__name__}", TypeError)
    check(isinstance(targets, Tensor), f"targets must be a torch.Tensor, got {type(targets).__name__}", TypeError)
    check_temperature("token_stats", temperature)
    check_ignore_index("token_stats", ignore_index)
    check(logits.dim() >= 1, "logits must have a vocabulary dimension")
    batch_shape = tuple(logits.shape[:-1])
    check(tuple(targets.shape) == batch_shape, f"targets must have shape {batch_shape}, got {tuple(targets.shape)}")
    backend = resolve_backend(backend, logits.device)
    rows = flatten_rows(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), None, backend)
    check_targets(targets, logits.shape[-1], ignore_index)
    stats = torch.ops.actfocus.token_stats(rows.flat, flat_targets(targets), float(temperature), int(ignore_index),
                                           backend)
    return TokenStats(*(x.view(batch_shape) for x in stats))


def actfocus_weights(
    stats: TokenStats,
    loss_mask: Tensor,
    action_mask: Tensor,
    cfg: ActFocusConfig = ActFocusConfig(),
    turn_ids: Optional[Tensor] = None,
    cu_seqlens: Optional[Tensor] = None,
) -> Tensor:
    """ActFocus weights (SPEC section 3) from per-token statistics and masks, detached fp32.

    Masks are ``[B, L]`` (a scope per row, or per turn with ``turn_ids``) or packed ``[N]`` with
    ``cu_seqlens [S + 1]``; the uncertainty is ``stats.energy``, ``stats.entropy`` or ``-stats.logp``
    as ``cfg.uncertainty`` says. Returns weights shaped like the masks.
    """
    check(isinstance(stats, tuple) and len(stats) == 3, "stats must be a TokenStats(logp, energy, entropy)", TypeError)
    check(isinstance(cfg, ActFocusConfig), f"cfg must be an ActFocusConfig, got {type(cfg).__name__}", TypeError)
    uncertainty = uncertainty_of(TokenStats(*stats), cfg.uncertainty)
    check(isinstance(uncertainty, Tensor) and uncertainty.dim() in (1, 2),
          "stats tensors must be [B, L] or packed [N]", TypeError)
    shape = tuple(uncertainty.shape)
    # A stand-in [.., 1] logits tensor gives the token structure without any vocabulary.
    rows = flatten_rows(uncertainty.new_zeros(shape + (1,), dtype=torch.float32),
                        uncertainty.new_zeros(shape, dtype=torch.int64), cu_seqlens, "reference")
    mask = per_token("loss_mask", loss_mask, rows) > 0
    action = per_token("action_mask", action_mask, rows) > 0
    turns = per_token("turn_ids", turn_ids, rows)
    return weights_on_rows(uncertainty, mask, action, rows, turns, cfg).view(shape)


def policy_loss(
    logits: Tensor,
    targets: Tensor,
    old_logp: Optional[Tensor],
    advantages: Tensor,
    loss_mask: Tensor,
    *,
    weights: Optional[Tensor] = None,
    action_mask: Optional[Tensor] = None,
    ref_logp: Optional[Tensor] = None,
    cu_seqlens: Optional[Tensor] = None,
    turn_ids: Optional[Tensor] = None,
    cfg: PolicyLossConfig = PolicyLossConfig(),
    actfocus: Optional[ActFocusConfig] = None,
    inplace_grad: bool = False,
    backend: str = "auto",
    generator: Optional[torch.Generator] = None,
    tp_group=None,
) -> PolicyLossOutput:
    """Clipped PPO/GRPO policy loss, or a variant (SPEC 4.1), with optional ActFocus weights, KL and
    entropy terms (SPEC 4).

    ``logits [B, L, V]`` (per-token inputs ``[B, L]``, advantages ``[B, L]`` or ``[B]``) or packed
    ``[N, V]`` with ``cu_seqlens [S + 1]`` (per-token ``[N]``, advantages ``[N]`` or ``[S]``).
    Token loss ``l = w L_pg + kl_coef KL - entropy_coef H`` with ``r = exp(clamp(logp - old_logp,
    -20, 20))``, ``L_pg = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))`` (dual clip where
    ``A < 0``), aggregated over ``loss_mask`` (targets equal to ``ignore_index`` are masked) by
    ``cfg.agg``. Weights ``w``: ``weights`` if given, else from ``actfocus`` (``source="current"``:
    the current logits' statistics; ``source="old"``: needs ``weights`` precomputed by
    ``actfocus_weights(token_stats(old_logits, ...), ...)``, except ``uncertainty="nll"`` which
    uses ``-old_logp``), else 1. With ``inplace_grad=True`` the gradient overwrites the logits.

    ``cfg.policy`` and the other variant fields choose TRL's and verl's losses (``variants``); the
    configurations ``variants.is_fused`` names run the single-pass fused kernel, the others two
    passes (differentiable statistics, the variant's scalars, the gradient pass); with
    ``inplace_grad=True`` their gradient pass overwrites the logits in backward (until then the
    buffer holds the logits). ``generator`` draws clip-cov's random token choice (None: torch's
    default). With ``tp_group`` the logits are this rank's vocabulary block, the targets global ids,
    and every configuration runs the two passes on vocab-parallel statistics (``tensor_parallel``,
    SPEC 8).
    """
    if tp_group is not None:
        return tensor_parallel.sharded_policy_loss(logits, tensor_parallel.LossArguments(
            targets=targets, old_logp=old_logp, advantages=advantages, loss_mask=loss_mask, weights=weights,
            action_mask=action_mask, ref_logp=ref_logp, cu_seqlens=cu_seqlens, turn_ids=turn_ids, cfg=cfg,
            actfocus=actfocus, generator=generator), inplace_grad=inplace_grad, backend=backend, group=tp_group)
    check_loss_configs(cfg, actfocus)
    check(isinstance(logits, Tensor), f"logits must be a torch.Tensor, got {type(logits).__name__}", TypeError)
    backend = resolve_backend(backend, logits.device)
    fused = is_fused(cfg)
    rows = flatten_rows(logits, targets, cu_seqlens, backend, need_view=inplace_grad)

    def inputs_with(current_stats: CurrentStats) -> LossInputs:
        return loss_inputs(rows, targets, logits.shape[-1], old_logp, advantages, loss_mask, weights, action_mask,
                           ref_logp, turn_ids, cfg, actfocus, current_stats)

    def row_stats(flat: Tensor, targets_flat: Tensor) -> TokenStats:
        return TokenStats(*torch.ops.actfocus.token_stats(
            flat, targets_flat, float(cfg.temperature), int(cfg.ignore_index), backend))

    compute_grad = torch.is_grad_enabled() and logits.requires_grad
    if not fused:
        check_targets(targets, logits.shape[-1], cfg.ignore_index)
        if inplace_grad and compute_grad:
            stats = TokenStats(*ops.InplaceGradTokenStats.apply(
                rows.flat, flat_targets(targets), float(cfg.temperature), int(cfg.ignore_index), backend))
        else:
            stats = row_stats(rows.flat, flat_targets(targets))
        return two_pass_loss(stats, rows, inputs_with, cfg, generator, weights is not None or actfocus is not None)
    # ActFocus source="current": the weights from the current statistics, before the fused pass
    inputs = inputs_with(lambda targets_flat, _selected: row_stats(rows.flat.detach(), targets_flat))
    if inplace_grad and compute_grad:
        outputs = ops.InplaceGradPolicyLoss.apply(rows.flat, inputs.row, backend)
    else:
        *outputs, _dlogits = torch.ops.actfocus.policy_loss(
            rows.flat, **inputs.row.as_kwargs(), compute_grad=compute_grad, backend=backend)
    return loss_output(LossOpOutputs(*outputs), rows, inputs)
