"""``actfocus::token_stats``: rows -> fp32 ``(logp, energy, entropy)`` ``[N]`` in one read (SPEC 2),
differentiable: backward is one ``row_gradient`` pass with ``a = g_logp``, ``b = a + T g_energy``,
``h = -g_entropy`` (exact; no second-order gradient)."""
from __future__ import annotations

import torch

from .registry import define_op
from .row_gradient import gradient_of_stats
from .routing import row_kernels

SCHEMA = ("(Tensor logits, Tensor targets, float temperature, int ignore_index, str backend) "
          "-> (Tensor logp, Tensor energy, Tensor entropy)")


def per_token_outputs(rows: torch.Tensor, count: int) -> tuple[torch.Tensor, ...]:
    """``count`` fp32 ``[N]`` tensors for rows ``[N, D]``, uninitialised."""
    return tuple(rows.new_empty(rows.shape[0], dtype=torch.float32) for _ in range(count))


def _impl(logits, targets, temperature, ignore_index, backend):
    outputs = row_kernels(backend).token_stats(logits, targets, temperature, ignore_index)
    return tuple(x.to(torch.float32) for x in outputs)


def _fake(logits, targets, temperature, ignore_index, backend):
    return per_token_outputs(logits, 3)


def _setup_context(ctx, inputs, output):
    named = TOKEN_STATS.bind(inputs)
    ctx.temperature, ctx.ignore_index, ctx.backend = named["temperature"], named["ignore_index"], named["backend"]
    ctx.save_for_backward(named["logits"], named["targets"])


def _backward(ctx, grad_logp, grad_energy, grad_entropy):
    logits, targets = ctx.saved_tensors
    grad = gradient_of_stats(logits, targets, grad_logp, grad_energy, grad_entropy, ctx.temperature,
                             ctx.ignore_index, ctx.backend)
    return TOKEN_STATS.gradients(logits=grad.to(logits.dtype))


TOKEN_STATS = define_op("token_stats", SCHEMA, _impl, _fake, _backward, _setup_context)
