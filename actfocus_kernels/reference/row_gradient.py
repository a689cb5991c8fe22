"""Reference gradient pass of given per-row coefficients (``contract.RowGradientInputs``):

    dz_v = ds_v/dz_v (a 1{v = y} - b p_v + h p_v (s_v - mu)),   p = softmax(s),  mu = sum_v p_v s_v,

with ``s`` the transformed logits of SPEC 10 (``ds/dz = 1 / T`` untransformed; see
``token_stats.transform_slope``),
exactly 0 on rows whose three coefficients are 0 (whatever their logits hold), no one-hot term
where ``y == ignore_index``. The fused policy loss is the case ``a = b = scale c``, ``h = scale
entropy_coef``; the gradient of ``token_stats`` is ``a = g_logp``, ``b = g_logp + T g_energy``,
``h = -g_entropy``.
"""
from __future__ import annotations

import torch

from ..contract import RowGradientInputs
from .token_stats import compute_dtype, transform_slope, transformed


def gradient_rows(logits: torch.Tensor, inputs: RowGradientInputs) -> torch.Tensor:
    """``dz [N, V]`` in the compute dtype (fp32, or float64 for float64 logits)."""
    z = logits.to(compute_dtype(logits))
    values, value_scale = transformed(z, inputs.logit_scale, inputs.softcap)
    # s - max s: the same p and s - mu
    centred = (values - values.max(dim=-1, keepdim=True).values) / (inputs.temperature / value_scale)
    probs = torch.softmax(centred, dim=-1)
    finite = torch.where(probs > 0, centred, 0.0)
    mu = (probs * finite).sum(-1, keepdim=True)
    targets = inputs.targets
    has_target = targets != inputs.ignore_index
    onehot = torch.zeros_like(probs).scatter_(-1, torch.where(has_target, targets, 0).unsqueeze(-1), 1.0)
    onehot = onehot * has_target.unsqueeze(-1)
    a, b, h = (x.to(z.dtype).unsqueeze(-1) for x in (inputs.target_coef, inputs.prob_coef, inputs.centred_coef))
    slope = transform_slope(z, inputs.logit_scale, inputs.softcap, inputs.temperature)
    grad = (a * onehot - b * probs + h * probs * (finite - mu)) * slope
    active = (inputs.target_coef != 0) | (inputs.prob_coef != 0) | (inputs.centred_coef != 0)
    return torch.where(active.unsqueeze(-1), grad, 0.0)


def row_gradient(logits: torch.Tensor, inputs: RowGradientInputs, dlogits: torch.Tensor) -> None:
    """Rows ``logits [N, V]`` and their ``RowGradientInputs`` -> ``dlogits`` (may be ``logits``)."""
    dlogits.copy_(gradient_rows(logits, inputs))
