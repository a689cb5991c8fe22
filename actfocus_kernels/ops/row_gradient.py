"""``actfocus::row_gradient``: the gradient pass of given per-row coefficients (the row contract's
``RowGradientInputs``) -> ``dlogits [N, V]`` in the logits' dtype (``row_gradient_inplace``: written
over the logits, each row read before it is overwritten),

    dz_v = (target_coef 1{v = y} - prob_coef p_v + entropy_coef p_v (s_v - mu)) / T,

with the row's own softmax. The backward of ``token_stats`` and of ``linear_token_stats`` uses it, as
do losses whose per-token scalars are formed outside the fused kernel. No gradient of its own.
"""
from __future__ import annotations

import torch

from ..contract import RowGradientInputs
from .registry import define_op
from .routing import row_kernels


def stats_gradient_inputs(targets, grad_logp, grad_energy, grad_entropy, temperature, ignore_index,
                          num_rows: int, device) -> RowGradientInputs:
    """The coefficients of ``d(sum g_logp logp + g_energy energy + g_entropy entropy) / d logits``
    (SPEC 2): ``a = g_logp`` (0 where the target is ignored: its logp is the constant 0),
    ``b = a + T g_energy``, ``h = -g_entropy``; a ``None`` incoming gradient counts as 0."""
    zeros = torch.zeros(num_rows, dtype=torch.float32, device=device)
    g_logp, g_energy, g_entropy = (zeros if g is None else g.to(torch.float32) for g in
                                   (grad_logp, grad_energy, grad_entropy))
    target_coef = torch.where(targets != ignore_index, g_logp, 0.0)
    return RowGradientInputs(targets, target_coef, target_coef + temperature * g_energy, -g_entropy,
                             float(temperature), int(ignore_index))


def gradient_of_stats(logits, targets, grad_logp, grad_energy, grad_entropy, temperature, ignore_index,
                      backend: str) -> torch.Tensor:
    """``d(sum g_logp logp + g_energy energy + g_entropy entropy) / d logits`` of rows, a new tensor."""
    inputs = stats_gradient_inputs(targets, grad_logp, grad_energy, grad_entropy, temperature, ignore_index,
                                   logits.shape[0], logits.device)
    return torch.ops.actfocus.row_gradient(logits, **inputs.as_kwargs(), backend=backend)


def _impl(*args, **kwargs):
    named = ROW_GRADIENT.bind(args, kwargs)
    logits = named["logits"]
    dlogits = torch.empty_like(logits, memory_format=torch.contiguous_format)
    row_kernels(named["backend"]).row_gradient(logits, RowGradientInputs.from_named(named), dlogits)
    return dlogits


def _fake(*args, **kwargs):
    return torch.empty_like(ROW_GRADIENT.bind(args, kwargs)["logits"], memory_format=torch.contiguous_format)


ROW_GRADIENT = define_op(
    "row_gradient", f"(Tensor logits, {RowGradientInputs.schema()}, str backend) -> Tensor dlogits", _impl, _fake)



def _inplace_impl(*args, **kwargs):
    named = ROW_GRADIENT_INPLACE.bind(args, kwargs)
    logits = named["logits"]
    row_kernels(named["backend"]).row_gradient(logits, RowGradientInputs.from_named(named), logits)


def _inplace_fake(*args, **kwargs):
    return None


ROW_GRADIENT_INPLACE = define_op(
    "row_gradient_inplace", f"(Tensor(a!) logits, {RowGradientInputs.schema()}, str backend) -> ()", _inplace_impl,
    _inplace_fake)
