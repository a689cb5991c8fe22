"""``actfocus::linear_token_stats`` and ``actfocus::linear_policy_loss``: the fused linear path on
rows ``hidden [N, H]``, ``weight [V, H]``, ``bias [V]?``; the logits ``z = hidden @ weight.T + bias``
are never materialised beyond one chunk (docs/linear.md).

Tokens go ``chunk`` rows at a time. For rows ``c``:

    logits_c = hidden_c @ weight.T + bias          [chunk, V], in the hidden dtype (one GEMM)
    row kernel (the backend's ``policy_loss``)     the rows' outputs, and the buffer overwritten
                                                   IN PLACE by G_c = d loss / d z
    grad_hidden[c] = G_c @ weight                  (second GEMM, written once per row)
    grad_weight  += G_c.T @ hidden_c               (third GEMM, accumulated, ``addmm_``)
    grad_bias    += G_c.sum(0)                     (fp32 accumulator)

so the arithmetic is the three GEMMs of the naive ``hidden @ weight.T`` + loss + backward, and the
memory beyond the inputs is one chunk of logits plus the gradients. The gradients are computed in
forward for a unit incoming gradient and backward only rescales them, once.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..contract import LossOpOutputs, RowLossInputs, RowLossOutputs
from .policy_loss import scaled_gradient
from .registry import define_op
from .routing import row_kernels
from .row_gradient import gradient_of_stats
from .token_stats import per_token_outputs

# --- chunk policy ------------------------------------------------------------------------------

# logits (and kernel workspace) of one chunk on CPU: large on purpose. Each chunk adds a pass of its
# addmm_ over the [V, H] grad_weight accumulator and shrinks the GEMMs' M; measured at N=512, H=512,
# V=32000 (docs/performance.md): 512 rows 425 ms, 256 445, 128 500, 64 658 beside 394 ms for the three
# GEMMs alone. 256 MiB is 2048 rows at V=32000 fp32, 441 at V=151936.
CPU_CHUNK_BYTES = 256 << 20
GPU_CHUNK_BYTES = 1 << 30  # at most this much on a GPU ...
GPU_FREE_FRACTION = 0.25  # ... and at most this share of the memory still free
REFERENCE_WORKSPACE_BYTES = 32  # fp32 temporaries of the plain-torch row kernel, per logit
ROW_ALIGN = 128  # chunk sizes above this are multiples of it (GEMM tiles)


def chunk_rows(num_rows: int, vocab: int, dtype: torch.dtype, device: torch.device, backend: str) -> int:
    """Tokens per chunk when the caller gives none.

    A chunk costs ``vocab`` logits of ``dtype`` per token (the buffer becomes the gradient in place;
    the plain-torch "reference" kernel adds its fp32 temporaries). The byte budget is
    ``CPU_CHUNK_BYTES`` on CPU, and ``min(GPU_CHUNK_BYTES, GPU_FREE_FRACTION * free)`` on a GPU, where
    free counts ``torch.cuda.mem_get_info`` plus what the caching allocator holds unused. Large chunks
    are rounded to ``ROW_ALIGN`` and balanced so that the last one is not a small remainder.
    """
    bytes_per_row = vocab * (torch.empty((), dtype=dtype).element_size()
                             + (REFERENCE_WORKSPACE_BYTES if backend == "reference" else 0))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        budget = min(GPU_CHUNK_BYTES, int(free * GPU_FREE_FRACTION))
    else:
        budget = CPU_CHUNK_BYTES
    limit = max(1, budget // bytes_per_row)
    if limit >= num_rows:
        return max(num_rows, 1)
    if limit >= ROW_ALIGN:
        limit -= limit % ROW_ALIGN
    balanced = math.ceil(num_rows / math.ceil(num_rows / limit))
    if limit >= ROW_ALIGN:
        balanced = min(limit, math.ceil(balanced / ROW_ALIGN) * ROW_ALIGN)
    return balanced


def _chunks(num_rows: int, chunk_size: int, vocab: int, hidden: Tensor, backend: str):
    """``(start, end)`` row ranges; ``chunk_size == 0`` is chosen by ``chunk_rows``."""
    step = chunk_size or chunk_rows(num_rows, vocab, hidden.dtype, hidden.device, backend)
    return ((start, min(start + step, num_rows)) for start in range(0, num_rows, step))


def _logits(hidden_rows: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``hidden_rows @ weight.T (+ bias)`` ``[chunk, V]`` in the input dtype, rounded once."""
    if bias is None:
        return torch.mm(hidden_rows, weight.t())
    return torch.addmm(bias, hidden_rows, weight.t())


def _check_head(hidden: Tensor, weight: Tensor) -> None:
    torch._check(hidden.dim() == 2 and weight.dim() == 2 and hidden.shape[1] == weight.shape[1],
                 lambda: f"actfocus linear ops: hidden [N, H] and weight [V, H], got {hidden.shape}, {weight.shape}")


# --- linear_token_stats ------------------------------------------------------------------------


def _stats_impl(hidden, weight, bias, targets, selected, temperature, ignore_index, chunk_size, backend):
    if selected is None:
        index, outputs = None, per_token_outputs(hidden, 3)
    else:
        index = selected.nonzero().squeeze(1)
        outputs = tuple(x.zero_() for x in per_token_outputs(hidden, 3))
    num_rows = hidden.shape[0] if index is None else index.numel()
    row_kernel = row_kernels(backend).token_stats
    for start, end in _chunks(num_rows, chunk_size, weight.shape[0], hidden, backend):
        rows = slice(start, end) if index is None else index[start:end]
        stats = row_kernel(_logits(hidden[rows], weight, bias), targets[rows], temperature, ignore_index)
        for output, value in zip(outputs, stats):
            output[rows] = value
    return outputs


def _stats_fake(hidden, weight, bias, targets, selected, temperature, ignore_index, chunk_size, backend):
    _check_head(hidden, weight)
    return per_token_outputs(hidden, 3)


def _stats_setup_context(ctx, inputs, output):
    named = LINEAR_TOKEN_STATS.bind(inputs)
    ctx.save_for_backward(*(named[name] for name in ("hidden", "weight", "bias", "targets", "selected")))
    ctx.options = {name: named[name] for name in ("temperature", "ignore_index", "chunk_size", "backend")}


def _stats_backward(ctx, grad_logp, grad_energy, grad_entropy):
    """Recomputes each chunk's logits, its ``row_gradient`` G, then ``G @ weight``, ``G.T @ hidden``
    and ``G.sum(0)``: no N x V intermediate, the same three GEMMs as the loss."""
    hidden, weight, bias, targets, selected = ctx.saved_tensors
    need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
    options = ctx.options
    grad_hidden = torch.zeros_like(hidden) if need_hidden else None
    grad_weight = torch.zeros_like(weight) if need_weight else None
    grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
    index = None if selected is None else selected.nonzero().squeeze(1)
    num_rows = hidden.shape[0] if index is None else index.numel()
    for start, end in _chunks(num_rows, options["chunk_size"], weight.shape[0], hidden, options["backend"]):
        rows = slice(start, end) if index is None else index[start:end]
        hidden_rows = hidden[rows]
        incoming = (None if g is None else g[rows] for g in (grad_logp, grad_energy, grad_entropy))
        grad = gradient_of_stats(_logits(hidden_rows, weight, bias), targets[rows], *incoming,
                                 options["temperature"], options["ignore_index"], options["backend"])
        if need_hidden:
            grad_hidden[rows] = torch.mm(grad, weight)
        if need_weight:
            grad_weight.addmm_(grad.t(), hidden_rows)
        if need_bias:
            grad_bias += grad.sum(0, dtype=torch.float32)
    return LINEAR_TOKEN_STATS.gradients(hidden=grad_hidden, weight=grad_weight,
                                        bias=None if grad_bias is None else grad_bias.to(bias.dtype))


# Rows -> fp32 (logp, energy, entropy) [N], chunk_size rows at a time (0: chunk_rows); with
# `selected` (bool [N]) only those rows are computed, the others are 0 (and get no gradient).
LINEAR_TOKEN_STATS = define_op(
    "linear_token_stats",
    "(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, Tensor? selected, float temperature, "
    "int ignore_index, int chunk_size, str backend) -> (Tensor logp, Tensor energy, Tensor entropy)",
    _stats_impl, _stats_fake, _stats_backward, _stats_setup_context,
)


# --- linear_policy_loss ------------------------------------------------------------------------

GRADIENTS = ("hidden", "weight", "bias")


def _gradient_buffers(named: dict) -> dict[str, Tensor]:
    """``grad_hidden [N, H]`` (every row written once), ``grad_weight [V, H]`` (zeros, accumulated in
    the weight dtype by GEMMs with fp32 accumulation), ``grad_bias [V]`` (an fp32 accumulator); an
    empty tensor for each gradient not asked for."""
    hidden, weight, bias = named["hidden"], named["weight"], named["bias"]
    return {  # a fresh empty tensor for each gradient not asked for: outputs must not alias
        "hidden": torch.empty_like(hidden, memory_format=torch.contiguous_format) if named["grad_hidden"]
        else weight.new_empty(0),
        "weight": torch.zeros_like(weight, memory_format=torch.contiguous_format) if named["grad_weight"]
        else weight.new_empty(0),
        "bias": torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if named["grad_bias"]
        else weight.new_empty(0),
    }


def _loss_impl(*args, **kwargs):
    named = LINEAR_POLICY_LOSS.bind(args, kwargs)
    hidden, weight, bias, backend = named["hidden"], named["weight"], named["bias"], named["backend"]
    inputs = RowLossInputs.from_named(named)
    num_rows = hidden.shape[0]
    token_loss, logp, energy, entropy, ratio = per_token_outputs(hidden, 5)
    outputs = RowLossOutputs(token_loss, logp, energy, entropy, ratio, hidden.new_empty(num_rows, dtype=torch.bool))
    grads = _gradient_buffers(named)
    need = {name: named[f"grad_{name}"] for name in GRADIENTS}
    row_kernel = row_kernels(backend).policy_loss
    for start, end in _chunks(num_rows, named["chunk_size"], weight.shape[0], hidden, backend):
        hidden_rows = hidden[start:end]
        logits = _logits(hidden_rows, weight, bias)
        # with a gradient asked for, the kernel overwrites the logits by their gradient (dlogits aliases logits)
        chunk = row_kernel(logits, inputs.take(slice(start, end)), logits if any(need.values()) else None)
        for output, value in zip(outputs, chunk):
            output[start:end] = value
        if need["hidden"]:
            torch.mm(logits, weight, out=grads["hidden"][start:end])
        if need["weight"]:
            grads["weight"].addmm_(logits.t(), hidden_rows)
        if need["bias"]:
            grads["bias"] += logits.sum(0, dtype=torch.float32)
    if need["bias"]:
        grads["bias"] = grads["bias"].to(bias.dtype)
    loss = LossOpOutputs(token_loss.sum(), outputs.logp, outputs.energy, outputs.entropy, outputs.ratio,
                         outputs.clipped)
    return (*loss, *(grads[name] for name in GRADIENTS))


def _loss_fake(*args, **kwargs):
    named = LINEAR_POLICY_LOSS.bind(args, kwargs)
    hidden, weight, bias = named["hidden"], named["weight"], named["bias"]
    _check_head(hidden, weight)
    num_rows = hidden.shape[0]
    return (
        hidden.new_empty((), dtype=torch.float32), *per_token_outputs(hidden, 4),
        hidden.new_empty(num_rows, dtype=torch.bool),
        torch.empty_like(hidden, memory_format=torch.contiguous_format) if named["grad_hidden"]
        else weight.new_empty(0),
        torch.empty_like(weight, memory_format=torch.contiguous_format) if named["grad_weight"]
        else weight.new_empty(0),
        torch.empty_like(bias) if named["grad_bias"] else weight.new_empty(0),
    )


def _loss_setup_context(ctx, inputs, output):
    named = LINEAR_POLICY_LOSS.bind(inputs)
    ctx.computed = {name: named[f"grad_{name}"] for name in GRADIENTS}
    ctx.used = False
    ctx.save_for_backward(*output[-len(GRADIENTS):])
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # no zeros shaped like the unused gradient outputs


def _loss_backward(ctx, grad_loss, *_output_grads):
    if torch.is_grad_enabled():
        raise RuntimeError("actfocus linear_policy_loss does not support double backward (create_graph=True)")
    # with an incoming gradient of exactly 1 the saved buffers are returned as they are, and autograd
    # may adopt them as .grad without a copy: a second backward would hand out .grad itself
    if ctx.used:
        raise RuntimeError("actfocus linear_policy_loss computes its gradients in forward and hands them out once: "
                           "backward may run only once (call linear_policy_loss again for another backward)")
    ctx.used = True
    grads = {}
    for name, needed, saved in zip(GRADIENTS, ctx.needs_input_grad[:len(GRADIENTS)], ctx.saved_tensors):
        if not needed or grad_loss is None:
            continue
        if not ctx.computed[name]:
            raise RuntimeError(f"linear_policy_loss ran without the gradient of {name} (grad_{name}=False)")
        grads[name] = scaled_gradient(saved, grad_loss)
    return LINEAR_POLICY_LOSS.gradients(**grads)


LINEAR_POLICY_LOSS = define_op(
    "linear_policy_loss",
    f"(Tensor hidden, Tensor weight, Tensor? bias, {RowLossInputs.schema()}, int chunk_size, bool grad_hidden, "
    f"bool grad_weight, bool grad_bias, str backend) "
    f"-> ({LossOpOutputs.schema()}, Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)",
    _loss_impl, _loss_fake, _loss_backward, _loss_setup_context,
)
