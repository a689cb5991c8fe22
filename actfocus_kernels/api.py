"""Public functions on logits (SPEC section 5): ``token_stats``, ``actfocus_weights`` and
``policy_loss``. Each is a facade: it checks its scalar arguments, builds the statistics source of
the logits (``sources.LogitsSource``, vocab-sharded with ``tp_group``) and, for a loss, the request
record (``request.LossRequest``), and hands them to the engine (``engine``)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import engine
from .config import ActFocusConfig, LogitTransform, PolicyLossConfig, PolicyLossOutput, TokenStats
from .dtensor import local_logits
from .layout import TokenLayout
from .request import LossRequest
from .rows import check
from .sources import LogitsSource, check_stats_call, checked_targets
from .tensor_parallel import agreed, sharded
from .weights import token_weights, uncertainty_of


def token_stats(
    logits: Tensor, targets: Tensor, temperature: float = 1.0, backend: str = "auto", *, ignore_index: int = -100,
    logit_scale: float = 1.0, softcap: Optional[float] = None, extra_stats: bool = False, tp_group=None,
) -> TokenStats:
    """Per-token ``logp``, ``energy`` and ``entropy`` of ``logits [..., V]`` in one read.

    With ``s = z / T`` (``softcap tanh(logit_scale z / softcap) / T``, or ``logit_scale z / T``, SPEC
    section 10): ``lse = logsumexp(s)``, ``logp = s[y] - lse`` (0 where ``y == ignore_index``),
    ``energy = -T lse``, ``entropy = lse - sum_v p_v s_v`` (SPEC section 2).

    Args:
        logits: ``[..., V]`` float32 / bfloat16 / float16 (float64 on the reference backend).
        targets: integer ``logits.shape[:-1]``, in ``[0, V)`` or ``ignore_index``.
        temperature: ``T``, finite and > 0.
        backend: "auto", "reference", "triton", "cpu" or "cuda" (SPEC section 5).
        ignore_index: the target id of masked tokens (their ``logp`` is 0).
        logit_scale: the logits' multiplier (finite, > 0), applied in the kernels.
        softcap: final-logit softcapping (None: off; else finite, > 0), applied in the kernels.
        extra_stats: also ``log_sum_sq_probs``, ``mean_logits`` and ``is_top1`` from the same pass.
        tp_group: the logits are this rank's vocabulary block of the group, the targets global ids
            (``tensor_parallel``, SPEC section 8). DTensor logits name their own group instead
            (``dtensor.local_logits``): vocab parallel when sharded on the last dimension.

    Returns:
        ``TokenStats``, fp32, shaped like ``targets``; differentiable when the logits require grad:
        backward is one more pass over the logits (no second-order gradient); the extras are None
        without ``extra_stats`` and never differentiable.
    """
    local = local_logits(logits, tp_group)

    def build():
        values = local.logits
        check(isinstance(values, Tensor), f"logits must be a torch.Tensor, got {type(values).__name__}", TypeError)
        check(values.dim() >= 1, "logits must have a vocabulary dimension")
        check(values.shape[-1] > 0, f"logits: empty vocabulary dimension, shape {tuple(values.shape)}")
        check_stats_call("token_stats", values, targets, temperature, ignore_index, extra_stats)
        rows = LogitsSource.of(values.reshape(-1, values.shape[-1]), targets.reshape(-1), backend,
                               LogitTransform.checked("token_stats", logit_scale, softcap))
        return checked_targets(sharded(rows, local.tp_group), targets, ignore_index)

    return engine.token_stats(agreed(local.tp_group, targets, build, extra_stats), targets, temperature, ignore_index,
                              extra_stats)


def actfocus_weights(
    stats: TokenStats,
    loss_mask: Tensor,
    action_mask: Tensor,
    cfg: ActFocusConfig = ActFocusConfig(),
    turn_ids: Optional[Tensor] = None,
    cu_seqlens: Optional[Tensor] = None,
) -> Tensor:
    """ActFocus weights (SPEC section 3) from per-token statistics and masks, detached fp32.

    Args:
        stats: a ``TokenStats`` (e.g. ``token_stats`` of the rollout policy's logits); the uncertainty
            ``cfg.uncertainty`` names is ``stats.energy``, ``stats.entropy`` or ``-stats.logp``.
        loss_mask: ``[B, L]`` (a scope per row, or per turn with ``turn_ids``) or packed ``[N]``.
        action_mask: shaped like ``loss_mask``; nonzero on action tokens.
        cfg: the ``ActFocusConfig``.
        turn_ids: per-token turn ids (``cfg.scope="turn"``).
        cu_seqlens: ``[S + 1]`` sequence boundaries of packed ``[N]`` inputs.

    Returns:
        The weights, fp32, shaped like the masks (0 off the mask).
    """
    check(isinstance(stats, tuple) and len(stats) == 3, "stats must be a TokenStats(logp, energy, entropy)", TypeError)
    check(isinstance(cfg, ActFocusConfig), f"cfg must be an ActFocusConfig, got {type(cfg).__name__}", TypeError)
    uncertainty = uncertainty_of(TokenStats(*stats), cfg.uncertainty)
    check(isinstance(uncertainty, Tensor) and uncertainty.dim() in (1, 2),
          "stats tensors must be [B, L] or packed [N]", TypeError)
    layout = TokenLayout.of(tuple(uncertainty.shape), uncertainty.device, cu_seqlens)
    mask = layout.per_token("loss_mask", loss_mask) > 0
    action = layout.per_token("action_mask", action_mask) > 0
    weights = token_weights(uncertainty, mask, action, layout, layout.per_token("turn_ids", turn_ids), cfg)
    return weights.view(layout.token_shape)


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
    rollout_logp: Optional[Tensor] = None,
    cu_seqlens: Optional[Tensor] = None,
    turn_ids: Optional[Tensor] = None,
    cfg: PolicyLossConfig = PolicyLossConfig(),
    actfocus: Optional[ActFocusConfig] = None,
    inplace_grad: bool = False,
    backend: str = "auto",
    generator: Optional[torch.Generator] = None,
    logit_scale: float = 1.0,
    softcap: Optional[float] = None,
    tp_group=None,
) -> PolicyLossOutput:
    """Clipped PPO/GRPO policy loss, or a variant (SPEC 4.1), with optional ActFocus weights, KL and
    entropy terms (SPEC 4).

    Token loss ``l = w L_pg + kl_coef KL - entropy_coef H`` with ``r = exp(clamp(logp - old_logp,
    -20, 20))``, ``L_pg = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))`` (dual clip where
    ``A < 0``), aggregated over ``loss_mask`` (targets equal to ``ignore_index`` are masked) by
    ``cfg.agg``. The configurations ``variants.is_fused`` names run the single-pass fused kernel, the
    others two passes (``engine``).

    Args:
        logits: ``[B, L, V]``, or packed ``[N, V]`` with ``cu_seqlens [S + 1]``.
        targets: integer ``[B, L]`` / ``[N]``, in ``[0, V)`` or ``cfg.ignore_index``.
        old_logp: the rollout policy's log-probs, per token; None: on-policy (``r = 1``).
        advantages: per token, or one per sequence (``[B]`` / ``[S]``).
        loss_mask: per token, a multiplier (active where > 0).
        weights: per-token weights of the policy term (e.g. ``actfocus_weights``).
        action_mask: per token, nonzero on action tokens (ActFocus, the energy metrics).
        ref_logp: the reference policy's log-probs (needed when ``cfg.kl_coef > 0``).
        rollout_logp: the rollout engine's log-probs, per token (needed with ``cfg.rollout_is_level``: the
            train/rollout mismatch correction weights the policy term, ``variants.rollout_correction``).
        cu_seqlens, turn_ids: the packed layout; the turns of ActFocus' turn scope.
        cfg: the ``PolicyLossConfig``; ``actfocus``: an ``ActFocusConfig`` whose weights the call
            computes (``source="current"``: from these logits; ``"old"``: from ``weights`` or, with
            ``uncertainty="nll"``, from ``-old_logp``).
        inplace_grad: the gradient overwrites the logits buffer (its version counter moves).
        backend: as in ``token_stats``; ``generator``: clip-cov's random token choice.
        logit_scale, softcap: the logits' transform, as in ``token_stats`` (every variant, every path).
        tp_group: the logits are this rank's vocabulary block, the targets global ids (SPEC 8); DTensor
            logits: as in ``token_stats``.

    Returns:
        ``PolicyLossOutput``: the differentiable scalar ``loss``, detached per-token outputs shaped
        like ``targets`` and the masked metrics.
    """
    local = local_logits(logits, tp_group)

    def build():
        transform = LogitTransform.checked("policy_loss", logit_scale, softcap)
        source = sharded(LogitsSource.of(local.logits, targets, backend, transform, inplace_grad), local.tp_group)
        return source, LossRequest.build(
            targets, old_logp, advantages, loss_mask, weights=weights, action_mask=action_mask, ref_logp=ref_logp,
            rollout_logp=rollout_logp, cu_seqlens=cu_seqlens, turn_ids=turn_ids, cfg=cfg, actfocus=actfocus,
            generator=generator,
            vocab=source.vocab)

    return engine.policy_loss(*agreed(local.tp_group, targets, build))
