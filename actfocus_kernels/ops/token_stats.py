"""``actfocus::token_stats``: rows -> fp32 ``(logp, energy, entropy)`` ``[N]`` in one read (SPEC 2),
differentiable: backward is one ``row_gradient`` pass with ``a = g_logp``, ``b = a + T g_energy``,
``h = -g_entropy`` (exact; no second-order gradient). ``InplaceGradTokenStats``: the same statistics
whose backward writes the gradient over the logits buffer."""
from __future__ import annotations

import torch

from .registry import define_op
from .row_gradient import gradient_of_stats, stats_gradient_inputs
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



class InplaceGradTokenStats(torch.autograd.Function):
    """``token_stats`` whose backward overwrites the logits rows by their gradient
    (``row_gradient_inplace``): the two-pass policy losses with ``inplace_grad=True``.

    A plain ``autograd.Function`` because ``register_autograd`` takes no mutating op. Forward moves
    the logits' version counter, so every autograd node that saved them earlier raises instead of
    reading the gradient; until backward the buffer still holds the logits, after it the gradient.
    Backward may run once.
    """

    @staticmethod
    def forward(ctx, logits, targets, temperature: float, ignore_index: int, backend: str):
        stats = torch.ops.actfocus.token_stats(logits, targets, temperature, ignore_index, backend)
        torch.autograd.graph.increment_version(logits)
        # kept on ctx, not saved for backward: its version moved on purpose, and backward overwrites it
        ctx.logits, ctx.targets = logits, targets
        ctx.temperature, ctx.ignore_index, ctx.backend = temperature, ignore_index, backend
        ctx.used = False
        return stats

    @staticmethod
    def backward(ctx, grad_logp, grad_energy, grad_entropy):
        if ctx.used:
            raise RuntimeError("policy_loss(inplace_grad=True) supports a single backward pass")
        ctx.used = True
        logits = ctx.logits
        inputs = stats_gradient_inputs(ctx.targets, grad_logp, grad_energy, grad_entropy, ctx.temperature,
                                       ctx.ignore_index, logits.shape[0], logits.device)
        torch.ops.actfocus.row_gradient_inplace(logits, **inputs.as_kwargs(), backend=ctx.backend)
        # one entry per forward input: logits, targets, temperature, ignore_index, backend
        return logits, None, None, None, None
