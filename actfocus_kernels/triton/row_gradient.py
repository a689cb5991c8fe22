"""Triton gradient pass of given per-row coefficients (``contract.RowGradientInputs``): per row,
the statistics pass over the logits, then

    dz_v = ds_v/dz_v (a 1{v = y} - b p_v + h p_v (s_v - mu)),

with ``s`` the transformed logits (SPEC 10: ``ds/dz = logit_scale (1 - tanh^2) / T`` with a cap,
``logit_scale / T`` without), exactly 0 on rows whose three coefficients are 0. ``dlogits`` may be
the logits buffer itself: each element is read before it is overwritten by the same program.
"""
import torch
import triton
import triton.language as tl

from ..constants import FLOAT32_MAX
from ..contract import RowGradientInputs
from .launch import Transform, device_guard, row_launch_config
from .row_stats import row_softmax_stats, transformed


@triton.jit
def _row_gradient_kernel(
    # pointers
    logits_ptr, targets_ptr, target_coef_ptr, prob_coef_ptr, centred_coef_ptr, dlogits_ptr,
    # strides
    stride_logits, stride_dlogits,
    # scalars
    temperature, row_temperature, value_scale, tanh_scale, softcap, logit_scale, ignore_index,
    # constexpr
    V: tl.constexpr, BLOCK_V: tl.constexpr, FLT_MAX: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_logits
    out_ptr = dlogits_ptr + row * stride_dlogits
    inv_temperature = tl.minimum(1.0 / row_temperature, FLT_MAX)  # a tiny T keeps its one-hot limit
    target_coef = tl.load(target_coef_ptr + row)
    prob_coef = tl.load(prob_coef_ptr + row)
    centred_coef = tl.load(centred_coef_ptr + row)
    active = (target_coef != 0) | (prob_coef != 0) | (centred_coef != 0)
    target = tl.load(targets_ptr + row)
    target = tl.where(target == ignore_index, -1, target)

    row_max, log_d, mean_centred, _, _, _ = row_softmax_stats(
        row_ptr, inv_temperature, tanh_scale, softcap, target, V, BLOCK_V, HAS_SOFTCAP, False)
    log_d = log_d.to(tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        in_vocab = offs < V
        z = tl.load(row_ptr + offs, mask=in_vocab, other=float("-inf")).to(tl.float32)
        v, tanh = transformed(z, tanh_scale, softcap, HAS_SOFTCAP)
        centred = (v - row_max) * inv_temperature
        probs = tl.exp(centred - log_d)
        grad = tl.where(offs == target, target_coef, 0.0) - prob_coef * probs
        grad += centred_coef * tl.where(probs > 0, probs * (centred - mean_centred), 0.0)
        grad = grad * inv_temperature
        if HAS_SOFTCAP:
            grad = grad * (logit_scale * (1.0 - tanh * tanh))
        grad = tl.where(active, grad, 0.0)  # exactly 0 on inactive rows, NaN logits included
        tl.store(out_ptr + offs, grad.to(dlogits_ptr.dtype.element_ty), mask=in_vocab)


def row_gradient(logits: torch.Tensor, inputs: RowGradientInputs, dlogits: torch.Tensor) -> None:
    """Row-level contract of ``actfocus_kernels.reference.row_gradient`` on Triton."""
    n_rows, vocab = logits.shape
    if n_rows == 0:
        return
    block_v, num_warps = row_launch_config(vocab, logits.element_size(), inputs.softcap > 0)
    with device_guard(logits):
        _row_gradient_kernel[(n_rows,)](
            logits, inputs.targets, inputs.target_coef, inputs.prob_coef, inputs.centred_coef, dlogits,
            logits.stride(0), dlogits.stride(0),
            **Transform.of(inputs.temperature, inputs.logit_scale, inputs.softcap).kernel_args(),
            ignore_index=int(inputs.ignore_index),
            V=vocab, BLOCK_V=block_v, FLT_MAX=FLOAT32_MAX, num_warps=num_warps,
        )
