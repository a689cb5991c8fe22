"""``actfocus::token_stats``: rows -> fp32 ``(logp, energy, entropy)`` ``[N]``, no gradient (SPEC 2)."""
from __future__ import annotations

import torch

from .registry import define_op
from .routing import row_kernels

SCHEMA = ("(Tensor logits, Tensor targets, float temperature, int ignore_index, str backend) "
          "-> (Tensor logp, Tensor energy, Tensor entropy)")


def per_token_outputs(rows: torch.Tensor, count: int) -> tuple[torch.Tensor, ...]:
    """``count`` fp32 ``[N]`` tensors for rows ``[N, D]``, uninitialised."""
    return tuple(rows.new_empty(rows.shape[0], dtype=torch.float32) for _ in range(count))


def _impl(logits, targets, temperature, ignore_index, backend):
    outputs = row_kernels(backend).token_stats(logits, targets, temperature, ignore_index)
    return tuple(x.to(torch.float32) for x in outputs)


def _fake(logits, targets, temperature, ignore_index, backend):
    return per_token_outputs(logits, 3)


define_op("token_stats", SCHEMA, _impl, _fake)
