"""Differences between the torch releases this package supports (2.11 to 2.15, setup.py
``TESTED_TORCH``), in one place: each shim names the torch releases that need it, so that it can go
when they leave the range.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


def all_gather_single(output: torch.Tensor, value: torch.Tensor, group: Optional[dist.ProcessGroup] = None) -> None:
    """``torch.distributed.all_gather_single(output, value, group)``: every rank's ``value`` (equal
    shapes), concatenated along dim 0 into ``output`` (``[world_size * value.shape[0], ...]``).

    torch 2.13 named it so, keeping ``all_gather_into_tensor`` as its alias; torch 2.11 (the GPU image)
    has only ``all_gather_into_tensor``, the same call. Looked up at each call, so a wrapper installed
    on ``torch.distributed`` (the tests count collectives that way) sees it."""
    gather = getattr(dist, "all_gather_single", None)
    if gather is None:  # torch 2.11 (2.12 untested)
        gather = dist.all_gather_into_tensor
    gather(output, value, group=group)
