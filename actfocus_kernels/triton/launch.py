"""Launch parameters shared by the row kernels.

Rows are streamed in ``BLOCK_V`` chunks by one program per row (N = 16384 rows fill an H100/H200
many times over). About 16 elements per thread keeps the gradient pass at ~60-90 registers with no
spills (checked by tests/triton_aot.py with the real compiler), so several programs share an SM and
keep loads in flight. Liger's forward uses BLOCK 2048 with one warp; these settings are starting
points until tuned on a GPU (benchmarks/gpu_check.sh).
"""
import contextlib

import torch
import triton


def row_launch_config(vocab: int, element_size: int) -> tuple[int, int]:
    """``(BLOCK_V, num_warps)`` for streaming rows of ``vocab`` entries of ``element_size`` bytes."""
    block_v = min(triton.next_power_of_2(vocab), 4096 if element_size <= 2 else 2048)
    # about 16 elements per thread: two 16-byte loads of bf16, four of fp32, without spilling
    num_warps = max(1, min(8, block_v // (16 * 32)))
    return block_v, num_warps


def device_guard(tensor: torch.Tensor):
    """Launch on the tensor's GPU (its current stream); nothing to do for interpreter (CPU) runs."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()
