"""Triton ``token_stats``: one read of each row -> logp, energy, entropy (SPEC section 2) of the
transformed logits (SPEC 10), and with ``extra_stats`` (constexpr ``EXTRAS``, no cost when off)
``log_sum_sq_probs``, ``mean_logits`` and ``is_top1`` from the same pass."""
import torch
import triton
import triton.language as tl

from ..constants import FLOAT32_MAX
from ..contract import TokenStatsOutputs
from .launch import Transform, device_guard, row_launch_config
from .row_stats import row_softmax_stats, target_logit, transformed


@triton.jit
def _token_stats_kernel(
    # pointers
    logits_ptr, targets_ptr, logp_ptr, energy_ptr, entropy_ptr, log_sum_sq_ptr, mean_ptr, top1_ptr,
    # strides
    stride_logits,
    # scalars
    temperature, row_temperature, value_scale, tanh_scale, softcap, logit_scale, ignore_index,
    # constexpr
    V: tl.constexpr, BLOCK_V: tl.constexpr, FLT_MAX: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    EXTRAS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_logits
    inv_temperature = tl.minimum(1.0 / row_temperature, FLT_MAX)  # a tiny T keeps its one-hot limit
    target = tl.load(targets_ptr + row)
    is_target = target != ignore_index
    row_max, log_d, mean_centred, sum_sq, total, before = row_softmax_stats(
        row_ptr, inv_temperature, tanh_scale, softcap, tl.where(is_target, target, -1), V, BLOCK_V, HAS_SOFTCAP,
        EXTRAS)
    target_value, _ = transformed(target_logit(row_ptr, target, V), tanh_scale, softcap, HAS_SOFTCAP)
    target_centred = (target_value.to(tl.float64) - row_max) / row_temperature
    tl.store(logp_ptr + row, tl.where(is_target, target_centred - log_d, 0.0).to(tl.float32))
    tl.store(energy_ptr + row, (-(row_max * value_scale + temperature * log_d)).to(tl.float32))
    tl.store(entropy_ptr + row, (log_d - mean_centred).to(tl.float32))
    if EXTRAS:
        tl.store(log_sum_sq_ptr + row, (tl.log(sum_sq.to(tl.float64)) - 2.0 * log_d).to(tl.float32))
        tl.store(mean_ptr + row, (total / V) * inv_temperature)
        top1 = is_target & (target_value >= row_max) & (target_value > before)
        tl.store(top1_ptr + row, top1.to(tl.int8))


def token_stats(logits: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int,
                logit_scale: float = 1.0, softcap: float = 0.0, extra_stats: bool = False) -> TokenStatsOutputs:
    """Rows ``logits [N, V]`` (unit stride in V), ``targets [N]`` -> ``TokenStatsOutputs``
    (the contract of ``actfocus_kernels.reference.token_stats``)."""
    n_rows, vocab = logits.shape
    device = logits.device
    logp, energy, entropy = (torch.empty(n_rows, dtype=torch.float32, device=device) for _ in range(3))
    extras = n_rows if extra_stats else 0
    log_sum_sq, mean_logits = (torch.empty(extras, dtype=torch.float32, device=device) for _ in range(2))
    top1 = torch.empty(extras, dtype=torch.int8, device=device)
    if n_rows > 0:
        block_v, num_warps = row_launch_config(vocab, logits.element_size(), bool(extra_stats))
        with device_guard(logits):
            _token_stats_kernel[(n_rows,)](
                logits, targets, logp, energy, entropy,
                log_sum_sq if extra_stats else logp, mean_logits if extra_stats else logp,
                top1 if extra_stats else logp,
                logits.stride(0),
                **Transform.of(temperature, logit_scale, softcap).kernel_args(), ignore_index=int(ignore_index),
                V=vocab, BLOCK_V=block_v, FLT_MAX=FLOAT32_MAX, EXTRAS=bool(extra_stats), num_warps=num_warps,
            )
    return TokenStatsOutputs(logp, energy, entropy, log_sum_sq, mean_logits, top1.bool())
