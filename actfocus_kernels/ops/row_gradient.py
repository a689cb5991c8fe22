"""``actfocus::row_gradient``: the gradient pass of given per-row coefficients (the row contract's
``RowGradientInputs``) -> ``dlogits [N, V]`` in the logits' dtype (``row_gradient_inplace``: written
over the logits, each row read before it is overwritten),

    dz_v = ds_v/dz_v (target_coef 1{v = y} - prob_coef p_v + centred_coef p_v (s_v - mu)),

with the row's own softmax of the transformed logits ``s`` (SPEC 10; ``ds/dz = 1 / T`` by default).
The backward of ``token_stats`` and of ``linear_token_stats`` uses it, as do losses whose per-token
scalars are formed outside the fused kernel. No gradient of its own.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..contract import RowGradientInputs, TokenStatsInputs
from .registry import define_op
from .routing import check_transform, row_kernels


def stats_gradient_inputs(inputs: TokenStatsInputs, incoming: Sequence[Optional[torch.Tensor]], num_rows: int,
                          device) -> RowGradientInputs:
    """The coefficients of ``d(sum g_logp logp + g_energy energy + g_entropy entropy) / d logits``
    (SPEC 2) for ``incoming = (g_logp, g_energy, g_entropy)``: ``a = g_logp`` (0 where the target is
    ignored: its logp is the constant 0), ``b = a + T g_energy``, ``h = -g_entropy``; a ``None``
    incoming gradient counts as 0. The transform only changes ``ds/dz``, applied by the pass."""
    zeros = torch.zeros(num_rows, dtype=torch.float32, device=device)
    g_logp, g_energy, g_entropy = (zeros if g is None else g.to(torch.float32) for g in incoming)
    target_coef = torch.where(inputs.targets != inputs.ignore_index, g_logp, 0.0)
    return RowGradientInputs(inputs.targets, target_coef, target_coef + inputs.temperature * g_energy, -g_entropy,
                             float(inputs.temperature), float(inputs.logit_scale), float(inputs.softcap),
                             int(inputs.ignore_index))


def active_rows(inputs: RowGradientInputs) -> torch.Tensor:
    """``[N]`` bool: the rows with a nonzero coefficient (the others get exactly 0)."""
    return (inputs.target_coef != 0) | (inputs.prob_coef != 0) | (inputs.centred_coef != 0)


def gradient_of_stats(logits, inputs: TokenStatsInputs, incoming, backend: str) -> torch.Tensor:
    """``d(sum g_logp logp + g_energy energy + g_entropy entropy) / d logits`` of rows, a new tensor."""
    coefficients = stats_gradient_inputs(inputs, incoming, logits.shape[0], logits.device)
    return torch.ops.actfocus.row_gradient(logits, **coefficients.as_kwargs(), backend=backend)


def run_row_gradient(logits: torch.Tensor, inputs: RowGradientInputs, backend: str, dlogits: torch.Tensor) -> None:
    """The backend's gradient pass on ``logits`` into ``dlogits`` (may be ``logits``)."""
    check_transform("row_gradient", inputs.logit_scale, inputs.softcap)
    row_kernels(backend).row_gradient(logits, inputs, dlogits)


def _impl(*args, **kwargs):
    named = ROW_GRADIENT.bind(args, kwargs)
    logits = named["logits"]
    dlogits = torch.empty_like(logits, memory_format=torch.contiguous_format)
    run_row_gradient(logits, RowGradientInputs.from_named(named), named["backend"], dlogits)
    return dlogits


def _fake(*args, **kwargs):
    return torch.empty_like(ROW_GRADIENT.bind(args, kwargs)["logits"], memory_format=torch.contiguous_format)


ROW_GRADIENT = define_op(
    "row_gradient", f"(Tensor logits, {RowGradientInputs.schema()}, str backend) -> Tensor dlogits", _impl, _fake)


def _inplace_impl(*args, **kwargs):
    named = ROW_GRADIENT_INPLACE.bind(args, kwargs)
    logits = named["logits"]
    run_row_gradient(logits, RowGradientInputs.from_named(named), named["backend"], logits)


def _inplace_fake(*args, **kwargs):
    return None


ROW_GRADIENT_INPLACE = define_op(
    "row_gradient_inplace", f"(Tensor(a!) logits, {RowGradientInputs.schema()}, str backend) -> ()", _inplace_impl,
    _inplace_fake)
