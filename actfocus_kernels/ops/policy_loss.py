"""``actfocus::policy_loss`` and ``actfocus::policy_loss_inplace``: the fused policy loss on rows.

Both take ``logits [N, V]`` and the fields of ``RowLossInputs`` (SPEC section 4, the row contract
of ``actfocus_kernels.contract``) and return ``loss = sum_t token_loss_t`` with the detached
per-token ``RowLossOutputs``. The gradient ``d loss / d logits`` is computed in forward for a unit
incoming gradient while each row is on chip (every ``c_t`` is known before the pass); backward only
rescales it (skipped when the incoming gradient is exactly 1):

- ``policy_loss`` (functional): with ``compute_grad`` the gradient is an extra output, saved for
  backward;
- ``policy_loss_inplace``: the gradient overwrites the logits buffer.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..contract import LossOpOutputs, RowLossInputs, RowLossOutputs
from .registry import define_op
from .routing import check_transform, row_kernels
from .token_stats import per_token_outputs


def run_policy_loss(logits: Tensor, inputs: RowLossInputs, backend: str, dlogits: Optional[Tensor]) -> LossOpOutputs:
    """The backend's row kernel on ``logits``; the loss summed in float64."""
    check_transform("policy_loss", inputs.logit_scale, inputs.softcap)
    out = RowLossOutputs(*row_kernels(backend).policy_loss(logits, inputs, dlogits))
    loss = out.token_loss.sum(dtype=torch.float64).to(torch.float32)
    return LossOpOutputs(loss, *(x.float() for x in (out.logp, out.energy, out.entropy, out.ratio)), out.clipped)


def _fake_outputs(logits: Tensor) -> LossOpOutputs:
    return LossOpOutputs(logits.new_empty((), dtype=torch.float32), *per_token_outputs(logits, 4),
                         logits.new_empty(logits.shape[0], dtype=torch.bool))


def scaled_gradient(grad: Tensor, grad_loss: Tensor) -> Tensor:
    """``grad`` was computed for a unit incoming gradient: rescale unless it is exactly 1."""
    if torch.is_grad_enabled():
        raise RuntimeError("actfocus policy losses do not support double backward (create_graph=True)")
    # the check reads the value: only for plain eager tensors, never while tracing
    eager = type(grad_loss) is torch.Tensor and not torch.compiler.is_compiling()
    if eager and bool(grad_loss == 1):
        return grad
    return grad * grad_loss.to(grad.dtype)


# --- policy_loss (functional: the gradient is an output, saved for backward) -------------------


def _gradient_buffer(logits: Tensor, compute_grad: bool) -> Tensor:
    return torch.empty_like(logits, memory_format=torch.contiguous_format) if compute_grad else logits.new_empty(0)


def _impl(*args, **kwargs):
    named = POLICY_LOSS.bind(args, kwargs)
    logits, compute_grad = named["logits"], named["compute_grad"]
    dlogits = _gradient_buffer(logits, compute_grad)
    outputs = run_policy_loss(logits, RowLossInputs.from_named(named), named["backend"],
                              dlogits if compute_grad else None)
    return (*outputs, dlogits)


def _fake(*args, **kwargs):
    named = POLICY_LOSS.bind(args, kwargs)
    return (*_fake_outputs(named["logits"]), _gradient_buffer(named["logits"], named["compute_grad"]))


def _setup_context(ctx, inputs, output):
    ctx.compute_grad = POLICY_LOSS.bind(inputs)["compute_grad"]
    ctx.used = False
    dlogits = output[-1]
    ctx.save_for_backward(dlogits)
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # no [N, V] zeros for the unused dlogits output


def _backward(ctx, grad_loss, *_output_grads):
    if not ctx.compute_grad:
        raise RuntimeError("policy_loss ran without gradient (no grad mode or logits not requiring grad)")
    # with an incoming gradient of exactly 1 the saved gradient is handed out as it is and autograd may
    # adopt it as .grad: a second backward would hand out (or find modified) .grad itself
    if ctx.used:
        raise RuntimeError("actfocus policy_loss computes its gradient in forward and hands it out once: backward "
                           "may run only once (call policy_loss again for another backward)")
    ctx.used = True
    (dlogits,) = ctx.saved_tensors
    return POLICY_LOSS.gradients(logits=None if grad_loss is None else scaled_gradient(dlogits, grad_loss))


POLICY_LOSS = define_op(
    "policy_loss",
    f"(Tensor logits, {RowLossInputs.schema()}, bool compute_grad, str backend) "
    f"-> ({LossOpOutputs.schema()}, Tensor dlogits)",
    _impl, _fake, _backward, _setup_context,
)


# --- policy_loss_inplace (the gradient overwrites the logits buffer) ---------------------------


def _inplace_impl(*args, **kwargs):
    named = POLICY_LOSS_INPLACE.bind(args, kwargs)
    logits = named["logits"]
    return tuple(run_policy_loss(logits, RowLossInputs.from_named(named), named["backend"], logits))


def _inplace_fake(*args, **kwargs):
    return tuple(_fake_outputs(POLICY_LOSS_INPLACE.bind(args, kwargs)["logits"]))


POLICY_LOSS_INPLACE = define_op(
    "policy_loss_inplace",
    f"(Tensor(a!) logits, {RowLossInputs.schema()}, str backend) -> ({LossOpOutputs.schema()})",
    _inplace_impl, _inplace_fake,
)


class InplaceGradPolicyLoss(torch.autograd.Function):
    """Autograd around ``policy_loss_inplace``: the logits buffer becomes the gradient.

    A plain ``autograd.Function`` because ``torch.library.register_autograd`` does not take mutating
    ops. The mutation moves the logits' version counter, so any autograd node that saved the logits
    for its backward raises instead of reading the gradient; backward may run once.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, inputs: RowLossInputs, backend: str):
        version = logits._version
        outputs = torch.ops.actfocus.policy_loss_inplace(logits, **inputs.as_kwargs(), backend=backend)
        if logits._version == version:
            torch.autograd.graph.increment_version(logits)
        ctx.mark_non_differentiable(*outputs[1:])
        ctx.save_for_backward(logits)
        ctx.used = False
        return outputs

    @staticmethod
    def backward(ctx, grad_loss, *_output_grads):
        if ctx.used:
            raise RuntimeError("policy_loss(inplace_grad=True) supports a single backward pass")
        ctx.used = True
        (dlogits,) = ctx.saved_tensors
        grad = scaled_gradient(dlogits, grad_loss)
        # one entry per forward input: logits, inputs, backend
        return (grad if grad is dlogits else dlogits.copy_(grad)), None, None
