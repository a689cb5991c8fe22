"""Routing of rows to a backend's kernels: the one place that knows where each backend lives.

Every backend implements the row contract (``actfocus_kernels.contract``) on ``logits [N, V]``:

    token_stats(logits, **TokenStatsInputs.as_kwargs()) -> TokenStatsOutputs
    policy_loss(logits, inputs: RowLossInputs, dlogits: Tensor | None) -> RowLossOutputs
    row_gradient(logits, inputs: RowGradientInputs, dlogits: Tensor) -> None

``dlogits`` receives ``d sum(token_loss) / d logits`` and may alias ``logits`` (in-place gradient).
Triton is imported only when its backend is used.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from .. import reference
from ..contract import RowGradientInputs, RowLossInputs, RowLossOutputs, TokenStatsOutputs


class RowKernels(NamedTuple):
    """A backend's row kernels (signatures in the module docstring)."""

    token_stats: Callable[..., TokenStatsOutputs]
    policy_loss: Callable[[Tensor, RowLossInputs, Optional[Tensor]], RowLossOutputs]
    row_gradient: Callable[[Tensor, RowGradientInputs, Tensor], None]


def check_transform(op: str, logit_scale: float, softcap: float) -> None:
    """SPEC 10's ranges, a clear error naming the field: ``logit_scale`` finite and > 0, ``softcap``
    finite and >= 0 (0 = off)."""
    if not (math.isfinite(logit_scale) and logit_scale > 0):
        raise ValueError(f"actfocus::{op}: logit_scale must be finite and > 0, got {logit_scale}")
    if not (math.isfinite(softcap) and softcap >= 0):
        raise ValueError(f"actfocus::{op}: softcap must be finite and >= 0 (0 = off), got {softcap}")


def _native_policy_loss(logits: Tensor, inputs: RowLossInputs, dlogits: Optional[Tensor]) -> RowLossOutputs:
    """``actfocus_native::policy_loss`` (C++: CPU or CUDA by the tensors' device), named arguments."""
    return RowLossOutputs(*torch.ops.actfocus_native.policy_loss(logits, **inputs.as_kwargs(), dlogits=dlogits))


def _native_row_gradient(logits: Tensor, inputs: RowGradientInputs, dlogits: Tensor) -> None:
    torch.ops.actfocus_native.row_gradient(logits, **inputs.as_kwargs(), dlogits=dlogits)


def _native_token_stats(logits: Tensor, targets: Tensor, temperature: float, ignore_index: int,
                        logit_scale: float, softcap: float, extra_stats: bool) -> TokenStatsOutputs:
    return TokenStatsOutputs(*torch.ops.actfocus_native.token_stats(
        logits, targets, temperature, ignore_index, logit_scale, softcap, extra_stats))


def row_kernels(backend: str) -> RowKernels:
    """The row kernels of ``backend`` ("reference", "triton", "cpu" or "cuda")."""
    if backend == "reference":
        return RowKernels(reference.token_stats, reference.policy_loss, reference.row_gradient)
    if backend == "triton":
        from ..triton.policy_loss import policy_loss
        from ..triton.row_gradient import row_gradient
        from ..triton.token_stats import token_stats

        return RowKernels(token_stats, policy_loss, row_gradient)
    if backend in ("cpu", "cuda"):
        return RowKernels(_native_token_stats, _native_policy_loss, _native_row_gradient)
    raise ValueError(f"unknown backend {backend!r}")
