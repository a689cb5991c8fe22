"""Public functions of the fused linear path (SPEC section 5): ``linear_token_stats`` and
``linear_policy_loss`` from hidden states and an LM head, the logits ``z = hidden @ weight.T + bias``
never materialised. Facades like ``api``: the source is a ``sources.HeadSource`` (vocab-sharded with
``tp_group``), run by the ``engine`` through the ``actfocus`` linear ops (``ops.linear``: the chunked
GEMM + row kernel + gradient GEMMs, docs/linear.md)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import engine
from .config import ActFocusConfig, LogitTransform, PolicyLossConfig, PolicyLossOutput, TokenStats
from .dtensor import local_head
from .request import LossRequest
from .rows import check
from .sources import HeadSource, check_head, check_stats_call, checked_targets
from .tensor_parallel import agreed, sharded


def linear_token_stats(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    temperature: float = 1.0,
    *,
    bias: Optional[Tensor] = None,
    chunk_size: Optional[int] = None,
    backend: str = "auto",
    ignore_index: int = -100,
    logit_scale: float = 1.0,
    softcap: Optional[float] = None,
    extra_stats: bool = False,
    logits_dtype: Optional[torch.dtype] = None,
    tp_group=None,
) -> TokenStats:
    """``token_stats`` of the logits ``z = hidden @ weight.T + bias``, never materialised.

    With ``s = z / T``: ``logp = s[y] - logsumexp(s)``, ``energy = -T logsumexp(s)``, ``entropy =
    logsumexp(s) - sum_v p_v s_v`` (SPEC section 2). The logits of a chunk are computed in the hidden
    dtype; backward recomputes each chunk's logits, one ``row_gradient`` pass, then the two gradient
    GEMMs (no N x V intermediate; no second-order gradient).

    Args:
        hidden: ``[..., H]``; ``weight``: the LM head ``[V, H]``; ``bias``: ``[V]`` or None; one dtype.
        targets: integer ``hidden.shape[:-1]``, in ``[0, V)`` or ``ignore_index``.
        temperature, backend, ignore_index, logit_scale, softcap, extra_stats: as in ``token_stats``.
        logits_dtype: None (each chunk's logits in the hidden dtype) or ``torch.float32`` (fp32 logits from a
            bf16/fp16 head, as TRL's ``cast_lm_head_to_fp32``).
        chunk_size: tokens per chunk (None: ``ops.linear.chunk_rows`` picks it from the shapes and the
            free memory).
        tp_group: the weight and bias are this rank's vocabulary rows, the targets global ids; the
            gradient of ``hidden`` is summed over the group in backward (SPEC section 8). A DTensor
            ``weight`` (``bias``) names its own group instead (``dtensor.local_head``, SPEC 8): vocab
            parallel over its mesh when ``hidden`` is a DTensor ``Replicate()``, else gathered for
            the call (FSDP2).

    Returns:
        ``TokenStats(logp, energy, entropy)``, fp32, shaped like ``targets``; differentiable in
        ``hidden``, ``weight`` and ``bias``.
    """
    head = local_head(hidden, weight, bias, tp_group)

    def build():
        check_head(head.hidden, head.weight, head.bias)
        check(head.hidden.shape[-1] > 0, f"hidden: empty feature dimension, shape {tuple(head.hidden.shape)}")
        check_stats_call("linear_token_stats", head.hidden, targets, temperature, ignore_index, extra_stats)
        rows = HeadSource.of(head.hidden.reshape(-1, head.hidden.shape[-1]), head.weight, head.bias,
                             targets.reshape(-1), chunk_size, backend,
                             LogitTransform.checked("linear_token_stats", logit_scale, softcap), logits_dtype)
        return checked_targets(sharded(rows, head.tp_group), targets, ignore_index)

    return engine.token_stats(agreed(head.tp_group, targets, build, extra_stats), targets, temperature, ignore_index,
                              extra_stats)


def linear_policy_loss(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    old_logp: Optional[Tensor],
    advantages: Tensor,
    loss_mask: Tensor,
    *,
    bias: Optional[Tensor] = None,
    chunk_size: Optional[int] = None,
    weights: Optional[Tensor] = None,
    action_mask: Optional[Tensor] = None,
    ref_logp: Optional[Tensor] = None,
    rollout_logp: Optional[Tensor] = None,
    cu_seqlens: Optional[Tensor] = None,
    turn_ids: Optional[Tensor] = None,
    cfg: PolicyLossConfig = PolicyLossConfig(),
    actfocus: Optional[ActFocusConfig] = None,
    inplace_grad: bool = False,
    backend: str = "auto",
    generator: Optional[torch.Generator] = None,
    logit_scale: float = 1.0,
    softcap: Optional[float] = None,
    logits_dtype: Optional[torch.dtype] = None,
    tp_group=None,
) -> PolicyLossOutput:
    """``policy_loss`` (SPEC section 4) of the logits ``z = hidden @ weight.T + bias``, never materialised.

    The same loss, per-token outputs, metrics and gradients as ``policy_loss(hidden @ weight.T + bias,
    ...)``. The tokens go ``chunk_size`` at a time through one GEMM to the chunk's logits, the
    backend's row kernel (which overwrites them in place with their gradient when one is needed) and
    the two GEMMs of the gradients of ``hidden`` and ``weight``, computed in forward for a unit
    incoming gradient (only with grad mode on): backward scales them by the incoming gradient, once (a
    second backward or ``create_graph=True`` is a ``RuntimeError``). ActFocus ``source="current"``
    first computes the statistics of the masked action tokens only (``|A| V H`` extra multiply-adds).
    Variants that are not single-pass take differentiable statistics (their backward recomputes each
    chunk's logits: a fourth GEMM).

    Args:
        hidden: ``[B, L, H]``, or packed ``[N, H]`` with ``cu_seqlens [S + 1]``.
        weight, bias: the LM head ``[V, H]`` and ``[V]`` (optional), of the hidden dtype.
        chunk_size, logits_dtype: as in ``linear_token_stats``.
        inplace_grad: accepted for parity with ``policy_loss``; the chunk buffers are always reused.
        tp_group: the weight and bias are this rank's vocabulary rows (SPEC 8); every configuration
            runs the two passes and the gradient of ``hidden`` is summed over the group in backward.
            A DTensor head: as in ``linear_token_stats``.
        Every other argument: as in ``policy_loss``.

    Returns:
        ``PolicyLossOutput``, as ``policy_loss``.
    """
    head = local_head(hidden, weight, bias, tp_group)

    def build():
        transform = LogitTransform.checked("linear_policy_loss", logit_scale, softcap)
        source = sharded(HeadSource.of(head.hidden, head.weight, head.bias, targets, chunk_size, backend, transform,
                                       logits_dtype), head.tp_group)
        return source, LossRequest.build(
            targets, old_logp, advantages, loss_mask, weights=weights, action_mask=action_mask, ref_logp=ref_logp,
            rollout_logp=rollout_logp, cu_seqlens=cu_seqlens, turn_ids=turn_ids, cfg=cfg, actfocus=actfocus,
            generator=generator,
            vocab=source.vocab, name="hidden")

    return engine.policy_loss(*agreed(head.tp_group, targets, build))
