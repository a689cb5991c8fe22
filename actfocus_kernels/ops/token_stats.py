"""``actfocus::token_stats``: rows -> ``TokenStatsOutputs`` ``[N]`` in one read (SPEC 2 and 10):
fp32 ``(logp, energy, entropy)`` of the transformed logits ``s``, and with ``extra_stats`` the
non-differentiable ``log_sum_sq_probs = log sum_v p_v^2``, ``mean_logits = mean_v s_v`` and
``is_top1`` (empty ``[0]`` tensors otherwise). Differentiable in the logits through the first three:
backward is one ``row_gradient`` pass with ``a = g_logp``, ``b = a + T g_energy``, ``h = -g_entropy``
and the transform's slope ``ds/dz`` (exact; no second-order gradient). ``InplaceGradTokenStats``:
the same statistics whose backward writes the gradient over the logits buffer."""
from __future__ import annotations

import torch

from ..contract import TokenStatsInputs, TokenStatsOutputs
from .registry import define_op
from .routing import check_transform, row_kernels
from .row_gradient import gradient_of_stats, stats_gradient_inputs

SCHEMA = f"(Tensor logits, {TokenStatsInputs.schema()}, str backend) -> ({TokenStatsOutputs.schema()})"
DIFFERENTIABLE = 3  # logp, energy, entropy


def per_token_outputs(rows: torch.Tensor, count: int) -> tuple[torch.Tensor, ...]:
    """``count`` fp32 ``[N]`` tensors for rows ``[N, D]``, uninitialised."""
    return tuple(rows.new_empty(rows.shape[0], dtype=torch.float32) for _ in range(count))


def empty_stats(rows: torch.Tensor, extra_stats: bool) -> TokenStatsOutputs:
    """Uninitialised ``TokenStatsOutputs`` for rows ``[N, D]``: the extras ``[N]`` or ``[0]``."""
    count = rows.shape[0] if extra_stats else 0
    logp, energy, entropy = per_token_outputs(rows, 3)
    return TokenStatsOutputs(logp, energy, entropy, rows.new_empty(count, dtype=torch.float32),
                             rows.new_empty(count, dtype=torch.float32), rows.new_empty(count, dtype=torch.bool))


def run_token_stats(logits: torch.Tensor, inputs: TokenStatsInputs, backend: str) -> TokenStatsOutputs:
    """The backend's row kernel on ``logits``; the float outputs in fp32."""
    check_transform("token_stats", inputs.logit_scale, inputs.softcap)
    outputs = row_kernels(backend).token_stats(logits, **inputs.as_kwargs())
    return TokenStatsOutputs(*(x.to(torch.float32) for x in outputs[:-1]), outputs.is_top1)


def _impl(*args, **kwargs):
    named = TOKEN_STATS.bind(args, kwargs)
    return tuple(run_token_stats(named["logits"], TokenStatsInputs.from_named(named), named["backend"]))


def _fake(*args, **kwargs):
    named = TOKEN_STATS.bind(args, kwargs)
    return tuple(empty_stats(named["logits"], named["extra_stats"]))


def _setup_context(ctx, inputs, output):
    named = TOKEN_STATS.bind(inputs)
    ctx.inputs, ctx.backend = TokenStatsInputs.from_named(named), named["backend"]
    ctx.save_for_backward(named["logits"], named["targets"])
    ctx.mark_non_differentiable(*output[DIFFERENTIABLE:])


def _backward(ctx, grad_logp, grad_energy, grad_entropy, *_extras):
    logits, targets = ctx.saved_tensors
    grad = gradient_of_stats(logits, ctx.inputs, (grad_logp, grad_energy, grad_entropy), ctx.backend)
    return TOKEN_STATS.gradients(logits=grad.to(logits.dtype))


TOKEN_STATS = define_op("token_stats", SCHEMA, _impl, _fake, _backward, _setup_context)


class InplaceGradTokenStats(torch.autograd.Function):
    """``token_stats`` (its three differentiable outputs, no extras) whose backward overwrites the
    logits rows by their gradient (``row_gradient_inplace``): the two-pass policy losses with
    ``inplace_grad=True``.

    A plain ``autograd.Function`` because ``register_autograd`` takes no mutating op. Forward moves
    the logits' version counter, so every autograd node that saved them earlier raises instead of
    reading the gradient; until backward the buffer still holds the logits, after it the gradient.
    Backward may run once.
    """

    @staticmethod
    def forward(ctx, logits, targets, temperature: float, ignore_index: int, backend: str, logit_scale: float = 1.0,
                softcap: float = 0.0):
        inputs = TokenStatsInputs(targets, temperature, ignore_index, logit_scale, softcap, extra_stats=False)
        stats = torch.ops.actfocus.token_stats(logits, **inputs.as_kwargs(), backend=backend)
        torch.autograd.graph.increment_version(logits)
        # kept on ctx, not saved for backward: its version moved on purpose, and backward overwrites it
        ctx.logits, ctx.inputs, ctx.backend = logits, inputs, backend
        ctx.used = False
        return stats[:DIFFERENTIABLE]

    @staticmethod
    def backward(ctx, grad_logp, grad_energy, grad_entropy):
        if ctx.used:
            raise RuntimeError("policy_loss(inplace_grad=True) supports a single backward pass")
        ctx.used = True
        logits = ctx.logits
        inputs = stats_gradient_inputs(ctx.inputs, (grad_logp, grad_energy, grad_entropy), logits.shape[0],
                                       logits.device)
        torch.ops.actfocus.row_gradient_inplace(logits, **inputs.as_kwargs(), backend=ctx.backend)
        # one entry per forward input: logits, targets, temperature, ignore_index, backend, logit_scale, softcap
        return logits, None, None, None, None, None, None
