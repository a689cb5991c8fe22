"""Validation and flattening: padded ``[B, L, D]`` / packed ``[N, D]`` inputs -> rows ``[N, D]``
(``flat_rows``), and the checks every layer shares.

``D`` is the vocabulary (logits) or the feature dimension (hidden states of the linear path).
Every check raises a ``ValueError`` / ``TypeError`` that names the argument.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

KERNEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def check(condition: bool, message: str, error: type = ValueError) -> None:
    if not condition:
        raise error(message)


def check_tensor(name: str, value, shape: Optional[tuple], device: torch.device, floating: bool = True) -> None:
    check(isinstance(value, Tensor), f"{name} must be a torch.Tensor, got {type(value).__name__}", TypeError)
    check(value.device == device, f"{name} is on {value.device}, logits on {device}")
    if floating:
        check(value.is_floating_point(), f"{name} must be a floating tensor, got {value.dtype}", TypeError)
    if shape is not None:
        check(tuple(value.shape) == tuple(shape), f"{name} must have shape {tuple(shape)}, got {tuple(value.shape)}")


def check_targets(targets: Tensor, vocab: int, ignore_index: int) -> None:
    """Integer targets in ``[0, vocab)`` or equal to ``ignore_index``; names the first bad one."""
    check(not targets.is_floating_point() and not targets.is_complex() and targets.dtype != torch.bool,
          f"targets must be an integer tensor, got {targets.dtype}", TypeError)
    if torch.compiler.is_compiling() or targets.numel() == 0:
        return
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"target {int(targets[index])} at position {index} is outside [0, {vocab}) "
            f"and is not ignore_index={ignore_index}"
        )


def flat_targets(targets: Tensor) -> Tensor:
    """Targets as the kernels take them: int64 ``[N]``, contiguous."""
    return targets.reshape(-1).to(torch.int64).contiguous()


def flat_rows(values: Tensor, targets: Tensor, backend: str, *, name: str = "logits",
              need_view: bool = False) -> Tensor:
    """``values [B, L, D]`` or packed ``[N, D]`` as rows ``[N, D]`` with unit stride in ``D``, after
    checking them and that ``targets`` is shaped like their tokens; ``name`` is "logits" (D = V) or
    "hidden" (D = H). ``need_view``: the rows must be a view of ``values`` (in-place gradient), never
    a copy, and must not overlap."""
    dim, dim_name = ("V", "vocabulary") if name == "logits" else ("H", "feature")
    check(isinstance(values, Tensor), f"{name} must be a torch.Tensor, got {type(values).__name__}", TypeError)
    check(isinstance(targets, Tensor), f"targets must be a torch.Tensor, got {type(targets).__name__}", TypeError)
    check(values.dim() in (2, 3), f"{name} must be [B, L, {dim}] or packed [N, {dim}], got shape {tuple(values.shape)}")
    allowed = KERNEL_DTYPES + ((torch.float64,) if backend == "reference" else ())
    check(values.dtype in allowed, f"{name} dtype {values.dtype} is not supported by backend {backend!r} "
          f"(use one of {allowed})", TypeError)
    width = values.shape[-1]
    check(width > 0, f"{name}: empty {dim_name} dimension, shape {tuple(values.shape)}")
    check(targets.device == values.device, f"targets are on {targets.device}, {name} on {values.device}")
    check(tuple(targets.shape) == tuple(values.shape[:-1]),
          f"targets must have shape {tuple(values.shape[:-1])}, got {tuple(targets.shape)}")
    if values.stride(-1) != 1:
        check(not need_view, "inplace_grad=True needs logits with unit stride in the vocabulary dimension")
        values = values.contiguous()
    try:
        flat = values.view(-1, width)
    except RuntimeError:
        check(not need_view, "inplace_grad=True needs logits whose rows can be viewed as [N, V] without a copy")
        flat = values.reshape(-1, width)
    if need_view:  # every backend writes the gradient row by row: rows must not share memory
        check(flat.shape[0] <= 1 or flat.stride(0) >= width,
              f"inplace_grad=True needs logits whose rows do not overlap (row stride {flat.stride(0)} < V={width}, "
              "e.g. an expanded tensor): they cannot hold a gradient")
    return flat
