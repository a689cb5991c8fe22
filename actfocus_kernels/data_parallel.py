"""Data-parallel normalisers (SPEC section 8): the global token and sequence counts of a batch split
over the ranks of a group, with ONE all-reduce of three float64 numbers.

Under data parallelism (or gradient accumulation over micro-batches) every rank's loss must divide
by the global count, not its own: ``PolicyLossConfig(norm_tokens=counts.tokens)`` makes
``token-mean`` the global ``sum m l / sum_ranks sum m`` (TRL's dapo, verl's global token mean), and
``counts.sequences`` is the global batch of verl's ``global_batch_size`` (empty rows counted) for the
sequence-mean modes. The loss mask counts as a multiplier (SPEC section 4): ``m = 0.5`` counts half.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from .aggregation import mask_multiplier
from .layout import TokenLayout
from .rows import check


@dataclass(frozen=True)
class GlobalCounts:
    """Sums over every rank of the group: ``tokens = sum m`` (ignored targets excluded),
    ``sequences`` (rows ``B`` or packed sequences ``S``, empty ones counted) and
    ``active_sequences`` (those with ``sum_t m > 0``)."""

    tokens: float
    sequences: int
    active_sequences: int


def global_counts(loss_mask: Tensor, group: Optional[dist.ProcessGroup] = None, *,
                  cu_seqlens: Optional[Tensor] = None, targets: Optional[Tensor] = None,
                  ignore_index: int = -100) -> GlobalCounts:
    """Global counts of ``loss_mask [B, L]`` (a sequence per row) or packed ``[N]`` (one sequence, or
    those of ``cu_seqlens [S + 1]``), summed over ``group`` (``None``: the default group) with one
    all-reduce. With ``targets`` (shaped like the mask), tokens whose target is ``ignore_index``
    count 0, as in the losses. Without an initialised process group (and ``group=None``) the counts
    are this batch's."""
    check(isinstance(loss_mask, Tensor), f"loss_mask must be a torch.Tensor, got {type(loss_mask).__name__}",
          TypeError)
    distributed = dist.is_available() and dist.is_initialized()
    check(distributed or group is None, "global_counts: a group needs an initialised torch.distributed")
    check(loss_mask.dim() in (1, 2), f"loss_mask must be [B, L] or packed [N], got shape {tuple(loss_mask.shape)}")
    if targets is None:
        targets = torch.zeros(loss_mask.shape, dtype=torch.int64, device=loss_mask.device)
    layout = TokenLayout.of(tuple(loss_mask.shape), loss_mask.device, cu_seqlens)
    check(isinstance(targets, Tensor) and tuple(targets.shape) == layout.token_shape,
          f"targets must be a tensor shaped like loss_mask {layout.token_shape}")
    m = mask_multiplier(loss_mask, targets.reshape(-1).to(torch.int64), layout, ignore_index)
    per_seq = layout.per_seq(m.double())
    counts = torch.stack((per_seq.sum(), torch.tensor(float(layout.num_seqs), dtype=torch.float64, device=m.device),
                          (per_seq > 0).sum().to(torch.float64)))
    if distributed:
        dist.all_reduce(counts, group=group)
    tokens, sequences, active = counts.tolist()
    return GlobalCounts(tokens=tokens, sequences=int(sequences), active_sequences=int(active))
