"""The engine: one policy-loss request (``request.LossRequest``) run against one statistics source
(``sources``, ``tensor_parallel.ShardedSource``), whatever the logits come from (SPEC 4, 4.1).

- Fused: when the source has a single-pass kernel and the variant allows it (``variants.is_fused``),
  the token weights are resolved first (ActFocus ``source="current"``: from the source's detached
  statistics of the masked action tokens) and the source's fused pass computes the loss and, with
  gradients on, the gradient while each row is on chip.
- Two passes otherwise: the source's differentiable statistics (one read), the variant's per-token
  scalars in torch (``variants.objective``), then autograd into the statistics' backward (the
  ``row_gradient`` pass: one read and one write).

Either way the result is a ``PolicyLossOutput``: the loss, the per-token outputs shaped like the
targets, and the masked scalar metrics (SPEC section 4).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .config import PolicyLossOutput, TokenStats
from .contract import LossOpOutputs
from .request import LossRequest
from .rows import flat_targets
from .sources import StatsSource
from .variants import TokenTerms, is_fused, objective


def token_stats(source: StatsSource, targets: Tensor, temperature: float, ignore_index: int,
                extra_stats: bool = False) -> TokenStats:
    """The source's differentiable statistics of checked ``targets`` (any shape, one per row), shaped
    like them; the extra statistics (SPEC 10) too with ``extra_stats``."""
    stats = source.token_stats(flat_targets(targets), temperature, ignore_index, extra_stats)
    return stats.map(lambda x: x.view(targets.shape))


def policy_loss(source: StatsSource, request: LossRequest) -> PolicyLossOutput:
    """The loss of ``request`` from ``source``: fused single pass, or two passes (module docstring)."""
    cfg = request.cfg
    temperature, ignore_index = cfg.temperature, cfg.ignore_index
    if source.fused and is_fused(cfg):
        weights = request.token_weights(lambda: source.detached_stats(
            request.targets, temperature, ignore_index, request.mask & request.action))
        return policy_output(source.fused_loss(request.row_inputs(weights, source.transform)), request, weights)
    stats = source.token_stats(request.targets, temperature, ignore_index)
    detached = stats.map(Tensor.detach)
    weights = request.token_weights(lambda: detached)
    terms = TokenTerms(logp=stats.logp, entropy=stats.entropy, old_logp=request.old_logp,
                       advantages=request.advantages, ref_logp=request.ref_logp, weights=weights,
                       weighted=request.weighted, multiplier=request.multiplier, rows=request.layout)
    out = objective(terms, cfg, request.generator)
    outputs = LossOpOutputs(out.loss, detached.logp, detached.energy, detached.entropy, out.ratio, out.clipped)
    return policy_output(outputs, request, weights)


def masked_mean(values: Tensor, multiplier: Tensor, selected: Tensor) -> Tensor:
    """``sum m v / sum m`` over the ``selected`` tokens (0 when ``sum m = 0``); unselected values may
    hold anything, NaN included."""
    m = torch.where(selected, multiplier, 0.0)
    total = m.sum()
    return torch.where(selected, m * values, 0.0).sum() / torch.where(total > 0, total, 1.0)


def policy_output(out: LossOpOutputs, request: LossRequest, weights: Tensor) -> PolicyLossOutput:
    """Per-token outputs shaped like the targets, plus the masked scalar metrics (SPEC 4)."""
    mask, action, m = request.mask, request.action, request.multiplier
    old_for_kl = request.old_logp if request.old_logp is not None else out.logp
    shape = request.layout.token_shape
    correction = request.correction
    return PolicyLossOutput(
        loss=out.loss,
        logp=out.logp.view(shape),
        energy=out.energy.view(shape),
        entropy=out.entropy.view(shape),
        ratio=out.ratio.view(shape),
        clipped=out.clipped.view(shape),
        weights=torch.where(mask, weights, 0.0).view(shape),
        clip_frac=masked_mean(out.clipped.to(torch.float32), m, mask),
        approx_kl=masked_mean(old_for_kl - out.logp, m, mask),
        entropy_mean=masked_mean(out.entropy, m, mask),
        energy_mean_action=masked_mean(out.energy, m, mask & action),
        energy_mean_reasoning=masked_mean(out.energy, m, mask & ~action),
        rollout_kl=None if correction is None else correction.rollout_kl,
        rollout_filter_frac=None if correction is None else correction.filter_frac,
    )
