"""Launch parameters shared by the row kernels.

Rows are streamed in ``BLOCK_V`` chunks by one program per row (N = 16384 rows fill an H100/H200
many times over). About 16 elements per thread keeps the gradient pass at ~60-90 registers with no
spills (checked by tests/triton_aot.py with the real compiler), so several programs share an SM and
keep loads in flight. Liger's forward uses BLOCK 2048 with one warp; these settings are starting
points until tuned on a GPU (benchmarks/gpu_check.sh).
"""
import contextlib
from typing import NamedTuple

import torch
import triton


def row_launch_config(vocab: int, element_size: int, heavy: bool = False) -> tuple[int, int]:
    """``(BLOCK_V, num_warps)`` for streaming rows of ``vocab`` entries of ``element_size`` bytes;
    ``heavy`` (token_stats' three extra accumulators, or the softcap's tanh and its slope in a gradient
    pass) halves the block, which otherwise spills (sm_80 with the extras; sm_90 bf16 with the softcap
    under triton 3.9)."""
    block_v = min(triton.next_power_of_2(vocab), (4096 if element_size <= 2 else 2048) // (2 if heavy else 1))
    # about 16 elements per thread: two 16-byte loads of bf16, four of fp32, without spilling
    num_warps = max(1, min(8, block_v // (16 * 32)))
    return block_v, num_warps


def device_guard(tensor: torch.Tensor):
    """Launch on the tensor's GPU (its current stream); nothing to do for interpreter (CPU) runs."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


class Transform(NamedTuple):
    """Host-side scalars of the logit transform (SPEC 10) for the kernels (see ``row_stats``):
    ``s = value_scale v / T = v / row_temperature``; ``HAS_SOFTCAP`` is a constexpr (no cost when off)."""

    temperature: float
    row_temperature: float  # T / logit_scale without cap (bit-identical to T at logit_scale 1), T with
    value_scale: float  # logit_scale without cap, 1 with
    tanh_scale: float  # logit_scale / softcap (0 without cap)
    softcap: float
    logit_scale: float

    @classmethod
    def of(cls, temperature: float, logit_scale: float, softcap: float) -> "Transform":
        value_scale = float(logit_scale) if softcap == 0 else 1.0
        tanh_scale = float(logit_scale) / float(softcap) if softcap != 0 else 0.0
        return cls(float(temperature), float(temperature) / value_scale, value_scale, tanh_scale, float(softcap),
                   float(logit_scale))

    def kernel_args(self) -> dict:
        """The kernels' keyword arguments (scalars and the ``HAS_SOFTCAP`` constexpr)."""
        return {**self._asdict(), "HAS_SOFTCAP": self.softcap != 0}
