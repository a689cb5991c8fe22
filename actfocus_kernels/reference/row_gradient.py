"""Reference gradient pass of given per-row coefficients (``contract.RowGradientInputs``):

    dz_v = (a 1{v = y} - b p_v + h p_v (s_v - mu)) / T,   p = softmax(z / T),  mu = sum_v p_v s_v,

exactly 0 on rows whose three coefficients are 0 (whatever their logits hold), no one-hot term
where ``y == ignore_index``. The fused policy loss is the case ``a = b = scale c``, ``h = scale
entropy_coef``; the gradient of ``token_stats`` is ``a = g_logp``, ``b = g_logp + T g_energy``,
``h = -g_entropy``.
"""
from __future__ import annotations

import torch

from ..contract import RowGradientInputs
from .token_stats import compute_dtype, inverse_temperature


def gradient_rows(logits: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int,
                  target_coef: torch.Tensor, prob_coef: torch.Tensor, entropy_coef: torch.Tensor) -> torch.Tensor:
    """``dz [N, V]`` in the compute dtype (fp32, or float64 for float64 logits)."""
    z = logits.to(compute_dtype(logits))
    centred = (z - z.max(dim=-1, keepdim=True).values) / temperature  # s - max s: same p and s - mu
    probs = torch.softmax(centred, dim=-1)
    finite = torch.where(probs > 0, centred, 0.0)
    mu = (probs * finite).sum(-1, keepdim=True)
    has_target = targets != ignore_index
    onehot = torch.zeros_like(probs).scatter_(-1, torch.where(has_target, targets, 0).unsqueeze(-1), 1.0)
    onehot = onehot * has_target.unsqueeze(-1)
    a, b, h = (x.to(z.dtype).unsqueeze(-1) for x in (target_coef, prob_coef, entropy_coef))
    grad = (a * onehot - b * probs + h * probs * (finite - mu)) * inverse_temperature(temperature, z.dtype)
    active = (target_coef != 0) | (prob_coef != 0) | (entropy_coef != 0)
    return torch.where(active.unsqueeze(-1), grad, 0.0)


def row_gradient(logits: torch.Tensor, inputs: RowGradientInputs, dlogits: torch.Tensor) -> None:
    """Rows ``logits [N, V]`` and their ``RowGradientInputs`` -> ``dlogits`` (may be ``logits``)."""
    dlogits.copy_(gradient_rows(logits, inputs.targets, inputs.temperature, inputs.ignore_index,
                                inputs.target_coef, inputs.prob_coef, inputs.entropy_coef))
