"""``actfocus::actfocus_weights``: flat ``[N]`` per-token inputs -> fp32 ActFocus weights (SPEC 3).

The scope of a token is its sequence (``seq_ids``) or, with ``turn_ids``, its turn within the
sequence; the weights themselves are ``reference.scope_weights`` (plain torch, no vocabulary).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..reference import scope_weights
from .registry import define_op

SCHEMA = ("(Tensor uncertainty, Tensor loss_mask, Tensor action_mask, Tensor seq_ids, Tensor? turn_ids, "
          "float reasoning_weight, float action_weight, float redistribution, float energy_temperature, "
          "float max_weight, bool preserve_total) -> Tensor")


def scope_ids_of(seq_ids: Tensor, turn_ids: Optional[Tensor]) -> Tensor:
    """Dense scope index per token: its sequence, or its (sequence, turn) pair (unique pairs, so no
    arithmetic on the ids that could overflow whatever int64 range the turn ids span)."""
    if turn_ids is None:
        return seq_ids
    pairs = torch.stack([seq_ids, turn_ids.to(torch.int64)])
    return torch.unique(pairs, dim=1, return_inverse=True)[1]


def _impl(uncertainty, loss_mask, action_mask, seq_ids, turn_ids, reasoning_weight, action_weight, redistribution,
          energy_temperature, max_weight, preserve_total):
    if uncertainty.numel() == 0:
        return torch.zeros_like(uncertainty, dtype=torch.float32)
    return scope_weights(
        uncertainty, loss_mask, action_mask, scope_ids_of(seq_ids, turn_ids), reasoning_weight,
        action_weight, redistribution, energy_temperature, max_weight, preserve_total,
    )


def _fake(uncertainty, *_parameters):
    return torch.empty_like(uncertainty, dtype=torch.float32)


define_op("actfocus_weights", SCHEMA, _impl, _fake)
