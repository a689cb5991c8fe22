"""Triton ``token_stats``: one read of each row -> logp, energy, entropy (SPEC section 2)."""
import torch
import triton
import triton.language as tl

from ..constants import FLOAT32_MAX
from .launch import device_guard, row_launch_config
from .row_stats import row_softmax_stats, target_logit


@triton.jit
def _token_stats_kernel(
    # pointers
    logits_ptr, targets_ptr, logp_ptr, energy_ptr, entropy_ptr,
    # strides
    stride_logits,
    # scalars
    temperature, ignore_index,
    # constexpr
    V: tl.constexpr, BLOCK_V: tl.constexpr, FLT_MAX: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_logits
    inv_temperature = tl.minimum(1.0 / temperature, FLT_MAX)  # a tiny T keeps its one-hot limit
    row_max, log_d, mean_centred = row_softmax_stats(row_ptr, inv_temperature, V, BLOCK_V)
    target = tl.load(targets_ptr + row)
    target_centred = (target_logit(row_ptr, target, V).to(tl.float64) - row_max) / temperature
    tl.store(logp_ptr + row, tl.where(target == ignore_index, 0.0, target_centred - log_d).to(tl.float32))
    tl.store(energy_ptr + row, (-(row_max + temperature * log_d)).to(tl.float32))
    tl.store(entropy_ptr + row, (log_d - mean_centred).to(tl.float32))


def token_stats(logits: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int):
    """Rows ``logits [N, V]`` (unit stride in V), ``targets [N]`` -> fp32 ``(logp, energy, entropy)``."""
    n_rows, vocab = logits.shape
    logp, energy, entropy = (torch.empty(n_rows, dtype=torch.float32, device=logits.device) for _ in range(3))
    if n_rows == 0:
        return logp, energy, entropy
    block_v, num_warps = row_launch_config(vocab, logits.element_size())
    with device_guard(logits):
        _token_stats_kernel[(n_rows,)](
            logits, targets, logp, energy, entropy,
            logits.stride(0),
            float(temperature), int(ignore_index),
            V=vocab, BLOCK_V=block_v, FLT_MAX=FLOAT32_MAX, num_warps=num_warps,
        )
    return logp, energy, entropy
