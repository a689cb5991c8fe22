"""Routing of rows to a backend's kernels: the one place that knows where each backend lives.

Every backend implements the row contract (``actfocus_kernels.contract``) on ``logits [N, V]``:

    token_stats(logits, targets, temperature, ignore_index) -> (logp, energy, entropy)
    policy_loss(logits, inputs: RowLossInputs, dlogits: Tensor | None) -> RowLossOutputs
    row_gradient(logits, inputs: RowGradientInputs, dlogits: Tensor) -> None

``dlogits`` receives ``d sum(token_loss) / d logits`` and may alias ``logits`` (in-place gradient).
Triton is imported only when its backend is used.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from .. import reference
from ..contract import RowGradientInputs, RowLossInputs, RowLossOutputs


class RowKernels(NamedTuple):
    """A backend's row kernels (signatures in the module docstring)."""

    token_stats: Callable[[Tensor, Tensor, float, int], tuple[Tensor, Tensor, Tensor]]
    policy_loss: Callable[[Tensor, RowLossInputs, Optional[Tensor]], RowLossOutputs]
    row_gradient: Callable[[Tensor, RowGradientInputs, Tensor], None]


def _native_policy_loss(logits: Tensor, inputs: RowLossInputs, dlogits: Optional[Tensor]) -> RowLossOutputs:
    """``actfocus_native::policy_loss`` (C++: CPU or CUDA by the tensors' device), named arguments."""
    return RowLossOutputs(*torch.ops.actfocus_native.policy_loss(logits, **inputs.as_kwargs(), dlogits=dlogits))


def _native_row_gradient(logits: Tensor, inputs: RowGradientInputs, dlogits: Tensor) -> None:
    torch.ops.actfocus_native.row_gradient(logits, **inputs.as_kwargs(), dlogits=dlogits)


def _native_token_stats(logits: Tensor, targets: Tensor, temperature: float, ignore_index: int):
    return torch.ops.actfocus_native.token_stats(logits, targets, temperature, ignore_index)


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
