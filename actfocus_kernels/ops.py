"""``torch.library`` custom ops in namespace ``actfocus``: schema, fake, autograd.

Each op takes a concrete ``backend`` ("reference", "triton", "cpu", "cuda") chosen by ``api.py``
and routes the rows to that backend's kernels; all backends share the row-level contract of
``actfocus_kernels.reference``. The ops see flat rows: ``logits [N, V]`` with unit stride in V,
per-token ``[N]`` tensors, and the aggregation folded into a per-token ``scale`` so that
``loss = sum_t scale_t l_t`` (SPEC section 4).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import torch
from torch import Tensor

from . import reference
from .weights import scope_weights

KL_TYPE_IDS = {"k1": 1, "k2": 2, "k3": 3}


def kernels(backend: str):
    """The module-like object with ``token_stats`` and ``policy_loss`` row kernels of ``backend``."""
    if backend == "reference":
        return reference
    if backend == "triton":
        from .triton.policy_loss import policy_loss
        from .triton.token_stats import token_stats

        return SimpleNamespace(token_stats=token_stats, policy_loss=policy_loss)
    if backend in ("cpu", "cuda"):
        return SimpleNamespace(
            token_stats=torch.ops.actfocus_native.token_stats, policy_loss=torch.ops.actfocus_native.policy_loss
        )
    raise ValueError(f"unknown backend {backend!r}")


def _per_token_like(logits: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    return logits.new_empty(logits.shape[0], dtype=dtype)


# --- token_stats -------------------------------------------------------------------------------


@torch.library.custom_op("actfocus::token_stats", mutates_args=())
def token_stats(
    logits: Tensor, targets: Tensor, temperature: float, ignore_index: int, backend: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Rows -> fp32 ``(logp, energy, entropy)`` ``[N]``; no gradient (SPEC section 2)."""
    outputs = kernels(backend).token_stats(logits, targets, temperature, ignore_index)
    return tuple(x.to(torch.float32) for x in outputs)


@token_stats.register_fake
def _(logits, targets, temperature, ignore_index, backend):
    return tuple(_per_token_like(logits) for _ in range(3))


# --- policy_loss (functional, gradient returned as an output and saved for backward) ----------

_POLICY_ARGS = (
    "Tensor targets, Tensor? old_logp, Tensor advantages, Tensor? ref_logp, Tensor weights, "
    "Tensor scale, float temperature, float clip_low, float clip_high, float dual_clip, "
    "float kl_coef, int kl_type, float entropy_coef, int ignore_index"
)


def _run_policy_loss(logits: Tensor, args: tuple, backend: str, dlogits: Optional[Tensor]) -> tuple[Tensor, ...]:
    token_loss, logp, energy, entropy, ratio, clipped = kernels(backend).policy_loss(logits, *args, dlogits)
    return (token_loss.sum(dtype=torch.float64).to(torch.float32), logp.float(), energy.float(), entropy.float(), ratio.float(), clipped)


torch.library.define(
    "actfocus::policy_loss",
    f"(Tensor logits, {_POLICY_ARGS}, bool compute_grad, str backend) "
    "-> (Tensor loss, Tensor logp, Tensor energy, Tensor entropy, Tensor ratio, Tensor clipped, Tensor dlogits)",
)


@torch.library.impl("actfocus::policy_loss", "CompositeExplicitAutograd")
def _policy_loss_impl(logits, *args):
    *row_args, compute_grad, backend = args
    dlogits = torch.empty_like(logits, memory_format=torch.contiguous_format) if compute_grad else logits.new_empty(0)
    outputs = _run_policy_loss(logits, tuple(row_args), backend, dlogits if compute_grad else None)
    return outputs + (dlogits,)


def _policy_loss_meta(logits, *args):
    *_, compute_grad, _backend = args
    dlogits = torch.empty_like(logits, memory_format=torch.contiguous_format) if compute_grad else logits.new_empty(0)
    return (
        logits.new_empty((), dtype=torch.float32),
        *(_per_token_like(logits) for _ in range(4)),
        _per_token_like(logits, torch.bool),
        dlogits,
    )


torch.library.register_fake("actfocus::policy_loss", _policy_loss_meta)


def _policy_loss_setup(ctx, inputs, output):
    ctx.compute_grad = inputs[-2]
    ctx.save_for_backward(output[-1])
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # no [N, V] zeros for the unused dlogits output


def scaled_gradient(dlogits: Tensor, grad_loss: Tensor) -> Tensor:
    """``dlogits`` was computed for a unit incoming gradient: rescale unless it is exactly 1."""
    if torch.is_grad_enabled():
        raise RuntimeError("actfocus policy_loss does not support double backward (create_graph=True)")
    # the check reads the value: only for plain eager tensors, never while tracing
    eager = type(grad_loss) is torch.Tensor and not torch.compiler.is_compiling()
    if eager and bool(grad_loss == 1):
        return dlogits
    return dlogits * grad_loss.to(dlogits.dtype)


def _policy_loss_backward(ctx, grad_loss, *_):
    if not ctx.compute_grad:
        raise RuntimeError("policy_loss ran without gradient (no grad mode or logits not requiring grad)")
    (dlogits,) = ctx.saved_tensors
    grad = None if grad_loss is None else scaled_gradient(dlogits, grad_loss)
    return (grad,) + (None,) * 17


torch.library.register_autograd("actfocus::policy_loss", _policy_loss_backward, setup_context=_policy_loss_setup)


# --- policy_loss_inplace (the gradient overwrites the logits buffer) ---------------------------

torch.library.define(
    "actfocus::policy_loss_inplace",
    f"(Tensor(a!) logits, {_POLICY_ARGS}, str backend) "
    "-> (Tensor loss, Tensor logp, Tensor energy, Tensor entropy, Tensor ratio, Tensor clipped)",
)


@torch.library.impl("actfocus::policy_loss_inplace", "CompositeExplicitAutograd")
def _policy_loss_inplace_impl(logits, *args):
    *row_args, backend = args
    return _run_policy_loss(logits, tuple(row_args), backend, logits)


@torch.library.register_fake("actfocus::policy_loss_inplace")
def _(logits, *args):
    return _policy_loss_meta(logits, *args[:-1], False, args[-1])[:-1]


class InplaceGradPolicyLoss(torch.autograd.Function):
    """Autograd around ``policy_loss_inplace``: the logits buffer becomes the gradient.

    The mutation moves the logits' version counter, so any autograd node that saved the logits
    for its backward raises instead of reading the gradient; backward may run once.
    """

    @staticmethod
    def forward(ctx, logits, *args):
        version = logits._version
        outputs = torch.ops.actfocus.policy_loss_inplace(logits, *args)
        if logits._version == version:
            torch.autograd.graph.increment_version(logits)
        ctx.mark_non_differentiable(*outputs[1:])
        ctx.save_for_backward(logits)
        ctx.used = False
        return outputs

    @staticmethod
    def backward(ctx, grad_loss, *_):
        if ctx.used:
            raise RuntimeError("policy_loss(inplace_grad=True) supports a single backward pass")
        ctx.used = True
        (dlogits,) = ctx.saved_tensors
        grad = scaled_gradient(dlogits, grad_loss)
        return (grad if grad is dlogits else dlogits.copy_(grad),) + (None,) * 16


# --- actfocus_weights --------------------------------------------------------------------------


def scope_ids_of(seq_ids: Tensor, turn_ids: Optional[Tensor]) -> Tensor:
    """Dense scope index per token: its sequence, or its (sequence, turn) pair."""
    if turn_ids is None:
        return seq_ids
    turn = turn_ids.to(torch.int64) - turn_ids.min()
    key = seq_ids * (int(turn.max()) + 1) + turn
    return torch.unique(key, return_inverse=True)[1]


@torch.library.custom_op("actfocus::actfocus_weights", mutates_args=())
def actfocus_weights(
    uncertainty: Tensor,
    loss_mask: Tensor,
    action_mask: Tensor,
    seq_ids: Tensor,
    turn_ids: Optional[Tensor],
    reasoning_weight: float,
    action_weight: float,
    redistribution: float,
    energy_temperature: float,
    max_weight: float,
    preserve_total: bool,
) -> Tensor:
    """Flat ``[N]`` per-token inputs -> fp32 ActFocus weights (SPEC section 3); the scope of a
    token is its sequence (``seq_ids``) or, with ``turn_ids``, its turn within the sequence."""
    if uncertainty.numel() == 0:
        return torch.zeros_like(uncertainty, dtype=torch.float32)
    return scope_weights(
        uncertainty, loss_mask, action_mask, scope_ids_of(seq_ids, turn_ids), reasoning_weight,
        action_weight, redistribution, energy_temperature, max_weight, preserve_total,
    )


@actfocus_weights.register_fake
def _(uncertainty, *args):
    return torch.empty_like(uncertainty, dtype=torch.float32)
