"""Reference fused policy loss on rows (SPEC section 4), the closed-form gradient included.

All backends share this row-level contract: the public op flattens ``[B, L, V]`` / packed inputs
to rows and folds the aggregation mode into a per-token ``scale`` (``d loss / d token_loss``), so
``loss = sum_t scale_t * l_t`` and, with ``s`` the transformed logits (SPEC 10, ``ds/dz = 1 / T``
untransformed), the gradient of row t is

    dz_t = scale_t ds/dz (c_t (onehot(y_t) - p) + h p (s - mu)),   mu = sum_v p_v s_v,
    c_t = w_t dL_pg/dlogp + kl_coef dKL/dlogp.

The tests check it against float64 autograd of the loss written independently.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..constants import RATIO_LOG_CLAMP
from ..contract import RowGradientInputs, RowLossInputs, RowLossOutputs
from .row_gradient import gradient_rows
from .token_stats import row_statistics


def surrogate(
    logp: torch.Tensor,
    old_logp: Optional[torch.Tensor],
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float,
    dual_clip: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate -> ``(L_pg, dL_pg/dlogp, ratio, clipped)``; ``dual_clip <= 1`` is off.

    ``old_logp=None`` is on-policy: ratio 1 with ``d ratio / d logp = 1``. The derivative is 0 where
    the clip or dual clip is active, or where the log-ratio clamp at +-20 is.
    """
    delta = torch.zeros_like(logp) if old_logp is None else logp - old_logp
    ratio = torch.exp(torch.clamp(delta, -RATIO_LOG_CLAMP, RATIO_LOG_CLAMP))
    unclipped = -advantages * ratio
    clipped_loss = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clipped = clipped_loss > unclipped
    loss = torch.where(clipped, clipped_loss, unclipped)
    if dual_clip > 1.0:
        dual = -advantages * dual_clip
        dual_clipped = (advantages < 0) & (loss > dual)
        loss = torch.where(dual_clipped, dual, loss)
        clipped = clipped | dual_clipped
    flat = clipped | (delta.abs() > RATIO_LOG_CLAMP)
    return loss, torch.where(flat, 0.0, unclipped), ratio, clipped


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kl_type: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(KL, dKL/dlogp)``: k1 ``logp - ref``; k2 ``(logp - ref)^2 / 2``;
    k3 ``exp(ref - logp) - (ref - logp) - 1``."""
    diff = logp - ref_logp
    if kl_type == 1:
        return diff, torch.ones_like(diff)
    if kl_type == 2:
        return 0.5 * diff * diff, diff
    return torch.exp(-diff) + diff - 1.0, 1.0 - torch.exp(-diff)


def policy_loss(logits: torch.Tensor, inputs: RowLossInputs, dlogits: Optional[torch.Tensor]) -> RowLossOutputs:
    """Rows ``logits [N, V]`` and their ``RowLossInputs`` -> ``RowLossOutputs`` with
    ``token_loss = scale * (w L_pg + kl_coef KL - entropy_coef H)``, exactly 0 on inactive rows
    (``scale == 0`` or ``target == ignore_index``), whose inputs may hold anything
    and whose ratio is reported as 1 (not clipped).
    When ``dlogits`` is given it receives ``d sum(token_loss) / d logits`` (zero on inactive rows).
    """
    # per-token scalars in float64 (see row_statistics); outputs in the compute dtype
    targets, temperature = inputs.targets, inputs.temperature
    entropy_coef, kl_coef = inputs.entropy_coef, inputs.kl_coef
    active = (inputs.scale != 0) & (targets != inputs.ignore_index)

    def on_active(values: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if values is None else torch.where(active, values.double(), 0.0)

    logp, energy, entropy, *_ = row_statistics(logits, targets, temperature, inputs.ignore_index,
                                               inputs.logit_scale, inputs.softcap)
    dtype = energy.dtype
    pg_loss, d_pg, ratio, clipped = surrogate(
        logp, on_active(inputs.old_logp), on_active(inputs.advantages), inputs.clip_low, inputs.clip_high,
        inputs.dual_clip,
    )
    weight = on_active(inputs.weights)
    loss, coeff = weight * pg_loss - entropy_coef * entropy.double(), weight * d_pg
    if kl_coef > 0 and inputs.ref_logp is not None:
        kl, d_kl = kl_penalty(logp, on_active(inputs.ref_logp), inputs.kl_type)
        loss, coeff = loss + kl_coef * kl, coeff + kl_coef * d_kl
    scale = on_active(inputs.scale)
    token_loss = torch.where(active, scale * loss, 0.0)
    if dlogits is not None:
        coef = torch.where(active, scale * coeff, 0.0)  # exactly 0 off the active rows, NaN logits included
        dlogits.copy_(gradient_rows(logits, RowGradientInputs(
            targets, coef, coef, torch.where(active, scale * entropy_coef, 0.0), temperature, inputs.logit_scale,
            inputs.softcap, inputs.ignore_index)))
    per_token = (token_loss, logp, energy, entropy, torch.where(active, ratio, 1.0))
    return RowLossOutputs(*(x.to(dtype) for x in per_token), clipped & active)
