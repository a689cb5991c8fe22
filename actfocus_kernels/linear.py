"""Public functions of the fused linear path (SPEC section 5): ``linear_token_stats`` and
``linear_policy_loss`` from hidden states and an LM head, the logits ``z = hidden @ weight.T + bias``
never materialised. They validate and flatten (``rows``, ``policy_rows``), choose the backend and
call the ``actfocus`` linear ops (``ops.linear``: the chunked GEMM + row kernel + gradient GEMMs,
docs/linear.md)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import tensor_parallel
from .backends import resolve_backend
from .config import (ActFocusConfig, PolicyLossConfig, PolicyLossOutput, TokenStats, check_ignore_index,
                     check_temperature)
from .contract import LossOpOutputs
from .policy_rows import CurrentStats, LossInputs, check_loss_configs, loss_inputs, loss_output
from .rows import check, check_targets, flat_targets, flatten_rows
from .variants import is_fused, two_pass_loss

def _check_head(hidden: Tensor, weight: Tensor, bias: Optional[Tensor]) -> int:
    """Validate the LM head against ``hidden [..., H]``; returns the vocabulary size V."""
    check(isinstance(hidden, Tensor), f"hidden must be a torch.Tensor, got {type(hidden).__name__}", TypeError)
    check(isinstance(weight, Tensor), f"weight must be a torch.Tensor, got {type(weight).__name__}", TypeError)
    check(weight.dim() == 2, f"weight must be the LM head [V, H], got shape {tuple(weight.shape)}")
    check(hidden.dim() >= 1, "hidden must have a feature dimension [..., H]")
    check(weight.shape[1] == hidden.shape[-1],
           f"hidden [..., H] has H={hidden.shape[-1]} features but weight has shape {tuple(weight.shape)} "
           "(expected [V, H])")
    check(weight.shape[0] > 0, "weight has an empty vocabulary dimension (V = 0)")
    check(weight.device == hidden.device, f"weight is on {weight.device}, hidden on {hidden.device}")
    check(weight.dtype == hidden.dtype, f"weight dtype {weight.dtype} must equal hidden dtype {hidden.dtype}",
           TypeError)
    if bias is not None:
        check(isinstance(bias, Tensor), f"bias must be a torch.Tensor or None, got {type(bias).__name__}", TypeError)
        check(tuple(bias.shape) == (weight.shape[0],),
               f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        check(bias.device == hidden.device, f"bias is on {bias.device}, hidden on {hidden.device}")
        check(bias.dtype == hidden.dtype, f"bias dtype {bias.dtype} must equal hidden dtype {hidden.dtype}",
               TypeError)
    return weight.shape[0]


def _chunk_arg(chunk_size: Optional[int]) -> int:
    check(chunk_size is None or (isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size > 0),
           f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return chunk_size or 0


def _detached(value: Optional[Tensor]) -> Optional[Tensor]:
    return None if value is None else value.detach()


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
    tp_group=None,
) -> TokenStats:
    """``token_stats`` of the logits ``z = hidden @ weight.T + bias``, never materialised.

    ``hidden [..., H]``, ``weight [V, H]``, ``bias [V]`` (optional), all one dtype; ``targets
    hidden.shape[:-1]``. With ``s = z / T``: ``logp = s[y] - logsumexp(s)``, ``energy = -T
    logsumexp(s)``, ``entropy = logsumexp(s) - sum_v p_v s_v`` (SPEC section 2), fp32, shaped like
    the targets. ``chunk_size`` tokens at a time (``None``: ``chunk_rows`` picks it from the shapes
    and the free memory); the logits of a chunk are computed in the hidden dtype. Differentiable in
    ``hidden``, ``weight`` and ``bias``: backward recomputes each chunk's logits, one ``row_gradient``
    pass, then the two gradient GEMMs (no N x V intermediate; no second-order gradient). With
    ``tp_group`` the weight and bias are this rank's vocabulary rows, the targets global ids and the
    gradient of ``hidden`` is summed over the group in backward (``tensor_parallel``, SPEC section 8).
    """
    if tp_group is not None:
        return tensor_parallel.sharded_linear_token_stats(
            hidden, weight, targets, temperature, bias=bias, chunk_size=chunk_size, backend=backend,
            ignore_index=ignore_index, group=tp_group)
    check(isinstance(targets, Tensor), f"targets must be a torch.Tensor, got {type(targets).__name__}", TypeError)
    check_temperature("linear_token_stats", temperature)
    check_ignore_index("linear_token_stats", ignore_index)
    vocab = _check_head(hidden, weight, bias)
    batch_shape = tuple(hidden.shape[:-1])
    check(tuple(targets.shape) == batch_shape, f"targets must have shape {batch_shape}, got {tuple(targets.shape)}")
    backend = resolve_backend(backend, hidden.device)
    rows = flatten_rows(hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1), None, backend, name="hidden")
    check_targets(targets, vocab, ignore_index)
    stats = torch.ops.actfocus.linear_token_stats(
        rows.flat, weight, bias, flat_targets(targets), None, float(temperature), int(ignore_index),
        _chunk_arg(chunk_size), backend)
    return TokenStats(*(x.view(batch_shape) for x in stats))


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
    cu_seqlens: Optional[Tensor] = None,
    turn_ids: Optional[Tensor] = None,
    cfg: PolicyLossConfig = PolicyLossConfig(),
    actfocus: Optional[ActFocusConfig] = None,
    inplace_grad: bool = False,
    backend: str = "auto",
    generator: Optional[torch.Generator] = None,
    tp_group=None,
) -> PolicyLossOutput:
    """``policy_loss`` (SPEC section 4) of the logits ``z = hidden @ weight.T + bias``, never materialised.

    ``hidden [B, L, H]`` (per-token inputs ``[B, L]``, advantages ``[B, L]`` or ``[B]``) or packed
    ``[N, H]`` with ``cu_seqlens [S + 1]``; ``weight [V, H]`` and ``bias [V]`` (optional) of the
    hidden dtype. Every other argument and the output are those of ``policy_loss``: the same loss,
    per-token outputs, metrics and gradients as ``policy_loss(hidden @ weight.T + bias, ...)``.

    The tokens go ``chunk_size`` at a time (``None``: ``chunk_rows`` picks it from the shapes and the
    free memory) through one GEMM to the chunk's logits, the backend's row kernel (which overwrites
    them in place with their gradient when one is needed), and the two GEMMs of the gradients of
    ``hidden`` and ``weight``. The gradients of the inputs that require one are computed in forward
    (only with grad mode on) and backward scales them by the incoming gradient, once: a second
    backward or ``create_graph=True`` is a ``RuntimeError``. ``inplace_grad`` is accepted for parity
    with ``policy_loss`` and changes nothing: the chunk buffers are always reused in place.

    ``actfocus=ActFocusConfig(source="current")`` needs the weights before any gradient is written.
    They depend on the uncertainty of the masked action tokens only (reasoning tokens get the
    constant ``reasoning_weight``), so a first pass gathers those rows of ``hidden`` (a chunk at a
    time), computes their statistics (``linear_token_stats`` on the selected rows: ``|A| V H``
    extra multiply-adds, small as actions are a small share of the tokens), then the weights, then
    runs the chunked loss pass with them.

    Variants that are not single-pass (``variants.is_fused``) take their statistics from
    ``linear_token_stats`` (differentiable: its backward recomputes each chunk's logits, a fourth
    GEMM) and form the loss from them; ``generator`` as in ``policy_loss``. With ``tp_group`` the
    weight and bias are this rank's vocabulary rows (``tensor_parallel``, SPEC 8): every configuration
    runs the two passes, and the gradient of ``hidden`` is summed over the group in backward.
    """
    if tp_group is not None:
        return tensor_parallel.sharded_linear_policy_loss(hidden, weight, tensor_parallel.LossArguments(
            targets=targets, old_logp=old_logp, advantages=advantages, loss_mask=loss_mask, weights=weights,
            action_mask=action_mask, ref_logp=ref_logp, cu_seqlens=cu_seqlens, turn_ids=turn_ids, cfg=cfg,
            actfocus=actfocus, generator=generator), bias=bias, chunk_size=chunk_size, backend=backend,
            group=tp_group)
    check_loss_configs(cfg, actfocus)
    vocab = _check_head(hidden, weight, bias)
    backend = resolve_backend(backend, hidden.device)
    rows = flatten_rows(hidden, targets, cu_seqlens, backend, name="hidden")
    chunk = _chunk_arg(chunk_size)

    def inputs_with(current_stats: CurrentStats) -> LossInputs:
        return loss_inputs(rows, targets, vocab, old_logp, advantages, loss_mask, weights, action_mask, ref_logp,
                           turn_ids, cfg, actfocus, current_stats)

    def head_stats(selected: Optional[Tensor], targets_flat: Tensor, detach: bool) -> TokenStats:
        tensors = (rows.flat, weight, bias)
        hidden_rows, head, head_bias = (_detached(x) for x in tensors) if detach else tensors
        return TokenStats(*torch.ops.actfocus.linear_token_stats(
            hidden_rows, head, head_bias, targets_flat, selected, float(cfg.temperature), int(cfg.ignore_index),
            chunk, backend))

    if not is_fused(cfg):
        check_targets(targets, vocab, cfg.ignore_index)
        return two_pass_loss(head_stats(None, flat_targets(targets), detach=False), rows, inputs_with, cfg, generator,
                             weights is not None or actfocus is not None)
    inputs = inputs_with(lambda targets_flat, selected: head_stats(selected, targets_flat, detach=True))
    grad_mode = torch.is_grad_enabled()
    *outputs, _grad_hidden, _grad_weight, _grad_bias = torch.ops.actfocus.linear_policy_loss(
        rows.flat, weight, bias, **inputs.row.as_kwargs(), chunk_size=chunk,
        grad_hidden=grad_mode and hidden.requires_grad, grad_weight=grad_mode and weight.requires_grad,
        grad_bias=grad_mode and bias is not None and bias.requires_grad, backend=backend)
    return loss_output(LossOpOutputs(*outputs), rows, inputs)
