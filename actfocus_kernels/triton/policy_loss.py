"""Triton fused policy loss (SPEC section 4): per row, one statistics pass over the logits, the
per-token surrogate/KL/entropy loss, and (when asked) a second pass writing the gradient

    dz = scale ds/dz (c (onehot(y) - p) + h p (s - mu)),   c = w dL_pg/dlogp + beta dKL/dlogp,

with ``s`` the transformed logits (SPEC 10, ``ds/dz = 1 / T`` untransformed; see ``row_stats``),

for ``loss = sum_t scale_t l_t``. ``dlogits`` may be the logits buffer itself (in-place gradient):
each element is read before it is overwritten by the same program.
"""
import torch
import triton
import triton.language as tl

from ..constants import FLOAT32_MAX, RATIO_LOG_CLAMP
from ..contract import RowLossInputs, RowLossOutputs
from .launch import Transform, device_guard, row_launch_config
from .row_stats import row_softmax_stats, target_logit, transformed


@triton.jit
def _policy_loss_kernel(
    # pointers
    logits_ptr, targets_ptr, old_logp_ptr, advantages_ptr, ref_logp_ptr, weights_ptr, scale_ptr,
    token_loss_ptr, logp_ptr, energy_ptr, entropy_ptr, ratio_ptr, clipped_ptr, dlogits_ptr,
    # strides
    stride_logits, stride_dlogits,
    # scalars
    temperature, row_temperature, value_scale, tanh_scale, softcap, logit_scale,
    clip_low, clip_high, dual_clip, kl_coef, entropy_coef, ignore_index,
    # constexpr
    V: tl.constexpr, BLOCK_V: tl.constexpr, HAS_OLD_LOGP: tl.constexpr, HAS_KL: tl.constexpr,
    KL_TYPE: tl.constexpr, HAS_DUAL_CLIP: tl.constexpr, HAS_ENTROPY: tl.constexpr,
    WRITE_GRAD: tl.constexpr, LOG_CLAMP: tl.constexpr, FLT_MAX: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_logits
    inv_temperature = tl.minimum(1.0 / row_temperature, FLT_MAX)  # a tiny T keeps its one-hot limit

    # statistics pass
    target = tl.load(targets_ptr + row)
    is_target = target != ignore_index
    row_max, log_d, mean_centred, _, _, _ = row_softmax_stats(
        row_ptr, inv_temperature, tanh_scale, softcap, target, V, BLOCK_V, HAS_SOFTCAP, False)
    entropy = log_d - mean_centred
    target_value, _ = transformed(target_logit(row_ptr, target, V), tanh_scale, softcap, HAS_SOFTCAP)
    target_centred = (target_value.to(tl.float64) - row_max) / row_temperature
    logp = tl.where(is_target, target_centred - log_d, 0.0)

    # per-token loss in float64 (a few scalars per row); inputs of inactive rows (scale 0 or
    # ignored target) may hold anything
    scale = tl.load(scale_ptr + row)
    active = (scale != 0) & is_target
    advantage = tl.where(active, tl.load(advantages_ptr + row), 0.0).to(tl.float64)
    weight = tl.where(active, tl.load(weights_ptr + row), 0.0).to(tl.float64)
    if HAS_OLD_LOGP:
        delta = logp - tl.where(active, tl.load(old_logp_ptr + row), 0.0)
    else:
        delta = tl.zeros((), tl.float64)
    # the clamp keeps NaN (a NaN input propagates, SPEC section 2)
    ratio = tl.exp(tl.minimum(tl.maximum(delta, -LOG_CLAMP, propagate_nan=tl.PropagateNan.ALL), LOG_CLAMP,
                              propagate_nan=tl.PropagateNan.ALL))
    unclipped = -advantage * ratio
    clipped_loss = -advantage * tl.minimum(tl.maximum(ratio, 1.0 - clip_low), 1.0 + clip_high)
    clipped = clipped_loss > unclipped
    pg_loss = tl.where(clipped, clipped_loss, unclipped)
    if HAS_DUAL_CLIP:
        dual = -advantage * dual_clip
        dual_clipped = (advantage < 0) & (pg_loss > dual)
        pg_loss = tl.where(dual_clipped, dual, pg_loss)
        clipped = clipped | dual_clipped
    flat = clipped | (delta > LOG_CLAMP) | (delta < -LOG_CLAMP)
    coeff = weight * tl.where(flat, 0.0, unclipped)
    token_loss = weight * pg_loss
    if HAS_KL:
        diff = logp - tl.where(active, tl.load(ref_logp_ptr + row), 0.0)
        if KL_TYPE == 1:
            token_loss += kl_coef * diff
            coeff += kl_coef
        elif KL_TYPE == 2:
            token_loss += kl_coef * 0.5 * diff * diff
            coeff += kl_coef * diff
        else:
            token_loss += kl_coef * (tl.exp(-diff) + diff - 1.0)
            coeff += kl_coef * (1.0 - tl.exp(-diff))
    if HAS_ENTROPY:
        token_loss -= entropy_coef * entropy
    tl.store(token_loss_ptr + row, tl.where(active, scale * token_loss, 0.0).to(tl.float32))
    tl.store(logp_ptr + row, logp.to(tl.float32))
    tl.store(energy_ptr + row, (-(row_max * value_scale + temperature * log_d)).to(tl.float32))
    tl.store(entropy_ptr + row, entropy.to(tl.float32))
    tl.store(ratio_ptr + row, tl.where(active, ratio, 1.0).to(tl.float32))
    tl.store(clipped_ptr + row, (clipped & active).to(tl.int8))

    # gradient pass: dz = scale ds/dz (c (onehot - p) + h p (s - mu))
    if WRITE_GRAD:
        coeff = tl.where(active, coeff, 0.0).to(tl.float32)
        grad_scale = tl.where(active, scale * inv_temperature, 0.0)  # finite: inv_temperature <= FLT_MAX
        log_d = log_d.to(tl.float32)
        mean_centred = mean_centred.to(tl.float32)
        out_ptr = dlogits_ptr + row * stride_dlogits
        for start in range(0, V, BLOCK_V):
            offs = start + tl.arange(0, BLOCK_V)
            in_vocab = offs < V
            z = tl.load(row_ptr + offs, mask=in_vocab, other=float("-inf")).to(tl.float32)
            v, tanh = transformed(z, tanh_scale, softcap, HAS_SOFTCAP)
            centred = (v - row_max) * inv_temperature
            probs = tl.exp(centred - log_d)
            grad = coeff * (tl.where(offs == target, 1.0, 0.0) - probs)
            if HAS_ENTROPY:
                grad += entropy_coef * tl.where(probs > 0, probs * (centred - mean_centred), 0.0)
            grad = grad_scale * grad
            if HAS_SOFTCAP:
                grad = grad * (logit_scale * (1.0 - tanh * tanh))
            # inactive rows get exactly 0 whatever their logits hold (NaN included)
            grad = tl.where(active, grad, 0.0)
            tl.store(out_ptr + offs, grad.to(dlogits_ptr.dtype.element_ty), mask=in_vocab)


def policy_loss(logits: torch.Tensor, inputs: RowLossInputs, dlogits) -> RowLossOutputs:
    """Row-level contract of ``actfocus_kernels.reference.policy_loss`` on Triton."""
    n_rows, vocab = logits.shape
    device = logits.device
    token_loss, logp, energy, entropy, ratio = (torch.empty(n_rows, dtype=torch.float32, device=device)
                                                for _ in range(5))
    clipped = torch.empty(n_rows, dtype=torch.int8, device=device)
    if n_rows > 0:
        has_kl = inputs.kl_coef > 0 and inputs.ref_logp is not None
        block_v, num_warps = row_launch_config(vocab, logits.element_size(), inputs.softcap > 0)
        with device_guard(logits):
            _policy_loss_kernel[(n_rows,)](
                logits, inputs.targets, inputs.old_logp if inputs.old_logp is not None else logits,
                inputs.advantages, inputs.ref_logp if has_kl else logits, inputs.weights, inputs.scale,
                token_loss, logp, energy, entropy, ratio, clipped,
                dlogits if dlogits is not None else logits,
                logits.stride(0), dlogits.stride(0) if dlogits is not None else 0,
                **Transform.of(inputs.temperature, inputs.logit_scale, inputs.softcap).kernel_args(),
                clip_low=float(inputs.clip_low), clip_high=float(inputs.clip_high), dual_clip=float(inputs.dual_clip),
                kl_coef=float(inputs.kl_coef), entropy_coef=float(inputs.entropy_coef),
                ignore_index=int(inputs.ignore_index),
                V=vocab, BLOCK_V=block_v, HAS_OLD_LOGP=inputs.old_logp is not None, HAS_KL=has_kl,
                KL_TYPE=int(inputs.kl_type), HAS_DUAL_CLIP=inputs.dual_clip > 1.0, HAS_ENTROPY=inputs.entropy_coef != 0,
                WRITE_GRAD=dlogits is not None, LOG_CLAMP=RATIO_LOG_CLAMP,
                FLT_MAX=FLOAT32_MAX, num_warps=num_warps,
            )
    return RowLossOutputs(token_loss, logp, energy, entropy, ratio, clipped.bool())
