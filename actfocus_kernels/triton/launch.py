"""Launch parameters shared by the row kernels.

Rows are streamed in ``BLOCK_V`` chunks by one program per row (N = 16384 rows fill an H100/H200
many times over). Following the fastest peer's forward (Liger: BLOCK 2048, one warp, many programs
per SM) small warps per program keep many rows in flight; these are starting points until tuned
on a GPU (benchmarks/gpu_check.sh).
"""
import contextlib

import torch
import triton


def row_launch_config(vocab: int, element_size: int) -> tuple[int, int]:
    """``(BLOCK_V, num_warps)`` for streaming rows of ``vocab`` entries of ``element_size`` bytes."""
    block_v = min(triton.next_power_of_2(vocab), 4096 if element_size <= 2 else 2048)
    num_warps = 4 if block_v >= 2048 else 2
    return block_v, num_warps


def device_guard(tensor: torch.Tensor):
    """Launch on the tensor's GPU (its current stream); nothing to do for interpreter (CPU) runs."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()
