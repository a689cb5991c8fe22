"""Validation and flattening: padded ``[B, L, D]`` / packed ``[N, D]`` inputs -> rows ``[N, D]``
with the sequence structure of their tokens (``Rows``), and per-token inputs -> flat ``[N]``.

``D`` is the vocabulary (logits) or the feature dimension (hidden states of the linear path).
Every check raises a ``ValueError`` / ``TypeError`` that names the argument.
"""
from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class Rows:
    """The input (logits ``[.., V]``, or hidden states ``[.., H]`` on the linear path) as rows
    ``[N, D]`` plus the sequence structure of the tokens."""

    flat: Tensor  # [N, D], unit stride in D
    token_shape: tuple  # shape of targets and per-token outputs
    seq_ids: Tensor  # [N] int64
    num_seqs: int
    padded_len: int


def flatten_rows(values: Tensor, targets: Tensor, cu_seqlens: Optional[Tensor], backend: str, need_view: bool = False,
                 name: str = "logits") -> Rows:
    """Flatten ``values [B, L, D]`` (a sequence per row) or packed ``[N, D]`` (one sequence, or the
    sequences ``cu_seqlens [S + 1]`` delimits); ``name`` is "logits" (D = V) or "hidden" (D = H).
    ``need_view``: the rows must be a view of ``values`` (in-place gradient), never a copy."""
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
    device = values.device
    if values.dim() == 3:
        check(cu_seqlens is None, f"cu_seqlens is for packed [N, {dim}] {name}, got [B, L, {dim}]")
        batch, length = targets.shape
        seq_ids = torch.arange(batch, device=device).repeat_interleave(length)
        num_seqs, padded_len = batch, length
    elif cu_seqlens is None:
        seq_ids = torch.zeros(targets.shape[0], dtype=torch.int64, device=device)
        num_seqs, padded_len = 1, targets.shape[0]
    else:
        check_tensor("cu_seqlens", cu_seqlens, None, device, floating=False)
        check(not cu_seqlens.is_floating_point() and not cu_seqlens.is_complex() and cu_seqlens.dtype != torch.bool,
              f"cu_seqlens must be an integer tensor, got {cu_seqlens.dtype}", TypeError)
        check(cu_seqlens.dim() == 1 and cu_seqlens.numel() >= 2,
              f"cu_seqlens must be 1-D [S + 1] with S >= 1 sequences ([0, ..., N]), got shape "
              f"{tuple(cu_seqlens.shape)}" + (f" {cu_seqlens.tolist()}" if cu_seqlens.numel() <= 8 else ""))
        lengths = cu_seqlens.diff()
        if not torch.compiler.is_compiling():
            check(int(cu_seqlens[0]) == 0 and int(cu_seqlens[-1]) == targets.shape[0] and bool((lengths >= 0).all()),
                  f"cu_seqlens must rise from 0 to N={targets.shape[0]}, got {cu_seqlens.tolist()}")
        num_seqs = cu_seqlens.numel() - 1
        seq_ids = torch.arange(num_seqs, device=device).repeat_interleave(lengths, output_size=targets.shape[0])
        padded_len = int(lengths.max()) if num_seqs > 0 and targets.shape[0] > 0 else 1
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
    return Rows(flat, tuple(targets.shape), seq_ids, num_seqs, padded_len)


def per_token(name: str, value: Optional[Tensor], rows: Rows) -> Optional[Tensor]:
    """A per-token input shaped like the targets -> flat ``[N]`` (any dtype)."""
    if value is None:
        return None
    check_tensor(name, value, rows.token_shape, rows.flat.device, floating=False)
    return value.reshape(-1)


def float_per_token(name: str, value: Optional[Tensor], rows: Rows) -> Optional[Tensor]:
    """A floating per-token input shaped like the targets -> contiguous fp32 ``[N]``."""
    if value is None:
        return None
    check_tensor(name, value, rows.token_shape, rows.flat.device)
    return value.reshape(-1).to(torch.float32).contiguous()


def advantages_per_token(advantages: Tensor, rows: Rows) -> Tensor:
    """Per token, or one per sequence (``[B]`` padded, ``[S]`` packed) broadcast over its tokens."""
    check_tensor("advantages", advantages, None, rows.flat.device)
    if tuple(advantages.shape) == rows.token_shape:
        flat = advantages.reshape(-1)
    else:
        check(advantages.dim() == 1 and advantages.shape[0] == rows.num_seqs,
              f"advantages must have shape {rows.token_shape} (per token) or [{rows.num_seqs}] "
              f"(per sequence), got {tuple(advantages.shape)}")
        flat = advantages[rows.seq_ids]
    return flat.to(torch.float32).contiguous()
