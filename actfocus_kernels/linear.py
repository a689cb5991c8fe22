"""Fused linear path (SPEC section 5): statistics and policy loss from hidden states and an LM head,
the logits ``z = hidden @ weight.T + bias`` never materialised.

Tokens are processed ``chunk`` rows at a time. For rows ``c`` of ``hidden [N, H]``:

    logits_c = hidden_c @ weight.T + bias          [chunk, V], in the hidden dtype (one GEMM)
    row kernel (the backend's ``policy_loss``)     logp/energy/entropy/loss of the rows, and the
                                                   buffer overwritten IN PLACE by G_c = d loss / d z
    grad_hidden[c] = G_c @ weight                  (second GEMM, written once per row)
    grad_weight  += G_c.T @ hidden_c               (third GEMM, accumulated, ``addmm_``)
    grad_bias    += G_c.sum(0)                     (fp32 accumulator)

so the arithmetic is the three GEMMs of the naive ``hidden @ weight.T`` + loss + backward, with no
recomputation, and the memory beyond the inputs is one chunk of logits plus the gradients. The
gradients are computed in forward for a unit incoming gradient (every ``c_t`` of SPEC section 4 is
known before the pass) and backward only rescales them. See docs/linear.md for the design.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from . import ops
from .api import (
    _check,
    _check_loss_configs,
    _check_targets,
    _loss_inputs,
    _loss_output,
    _rows,
    resolve_backend,
)
from .config import ActFocusConfig, PolicyLossConfig, PolicyLossOutput, TokenStats

# --- chunk policy ------------------------------------------------------------------------------

CPU_CHUNK_BYTES = 256 << 20  # logits (and kernel workspace) of one chunk on CPU
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


def _per_token_outputs(hidden: Tensor) -> tuple[Tensor, ...]:
    """fp32 ``(logp, energy, entropy)`` ``[N]``."""
    return tuple(hidden.new_empty(hidden.shape[0], dtype=torch.float32) for _ in range(3))


# --- linear_token_stats ------------------------------------------------------------------------


@torch.library.custom_op("actfocus::linear_token_stats", mutates_args=())
def linear_token_stats_op(
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    targets: Tensor,
    selected: Optional[Tensor],
    temperature: float,
    ignore_index: int,
    chunk_size: int,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Rows ``hidden [N, H]``, ``weight [V, H]``, ``bias [V]?`` -> fp32 ``(logp, energy, entropy)``
    ``[N]`` of ``hidden @ weight.T + bias``, ``chunk_size`` rows at a time (0: ``chunk_rows``).
    With ``selected`` (bool ``[N]``) only those rows are computed (gathered a chunk at a time);
    the others are 0. No gradient."""
    if selected is None:
        index, outputs = None, _per_token_outputs(hidden)
    else:
        index = selected.nonzero().squeeze(1)
        outputs = tuple(x.zero_() for x in _per_token_outputs(hidden))
    num_rows = hidden.shape[0] if index is None else index.numel()
    row_kernel = ops.kernels(backend).token_stats
    for start, end in _chunks(num_rows, chunk_size, weight.shape[0], hidden, backend):
        rows = slice(start, end) if index is None else index[start:end]
        logits = _logits(hidden[rows], weight, bias)
        stats = row_kernel(logits, targets[rows], temperature, ignore_index)
        for output, value in zip(outputs, stats):
            output[rows] = value
    return outputs


@linear_token_stats_op.register_fake
def _(hidden, weight, bias, targets, selected, temperature, ignore_index, chunk_size, backend):
    return _per_token_outputs(hidden)


# --- linear_policy_loss ------------------------------------------------------------------------

torch.library.define(
    "actfocus::linear_policy_loss",
    f"(Tensor hidden, Tensor weight, Tensor? bias, {ops._POLICY_ARGS}, int chunk_size, bool grad_hidden, "
    "bool grad_weight, bool grad_bias, str backend) -> (Tensor loss, Tensor logp, Tensor energy, "
    "Tensor entropy, Tensor ratio, Tensor clipped, Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)",
)
NUM_ROW_ARGS = 14  # targets ... ignore_index, the row-kernel contract of ``ops``


def _gradient_buffers(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], grad_hidden: bool, grad_weight: bool,
                      grad_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``grad_hidden [N, H]`` (every row written once), ``grad_weight [V, H]`` (zeros, accumulated in
    the weight dtype by GEMMs with fp32 accumulation), ``grad_bias [V]`` (an fp32 accumulator); an
    empty tensor for each gradient not asked for."""
    return (
        torch.empty_like(hidden, memory_format=torch.contiguous_format) if grad_hidden else hidden.new_empty(0),
        torch.zeros_like(weight, memory_format=torch.contiguous_format) if grad_weight else weight.new_empty(0),
        torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if grad_bias else weight.new_empty(0),
    )


@torch.library.impl("actfocus::linear_policy_loss", "CompositeExplicitAutograd")
def _linear_policy_loss_impl(hidden, weight, bias, *args):
    row_args, (chunk_size, need_hidden, need_weight, need_bias, backend) = args[:NUM_ROW_ARGS], args[NUM_ROW_ARGS:]
    num_rows = hidden.shape[0]
    per_token, scalars = row_args[:6], row_args[6:]  # (targets ... scale) [N], then the scalars
    token_loss, ratio = (hidden.new_empty(num_rows, dtype=torch.float32) for _ in range(2))
    logp, energy, entropy = _per_token_outputs(hidden)
    clipped = hidden.new_empty(num_rows, dtype=torch.bool)
    grad_hidden, grad_weight, grad_bias = _gradient_buffers(hidden, weight, bias, need_hidden, need_weight, need_bias)
    compute_grad = need_hidden or need_weight or need_bias
    row_kernel = ops.kernels(backend).policy_loss
    for start, end in _chunks(num_rows, chunk_size, weight.shape[0], hidden, backend):
        hidden_rows = hidden[start:end]
        logits = _logits(hidden_rows, weight, bias)
        chunk_args = tuple(None if x is None else x[start:end] for x in per_token) + scalars
        # with compute_grad the kernel overwrites the logits by their gradient (dlogits aliases logits)
        outputs = row_kernel(logits, *chunk_args, logits if compute_grad else None)
        for output, value in zip((token_loss, logp, energy, entropy, ratio, clipped), outputs):
            output[start:end] = value
        if need_hidden:
            torch.mm(logits, weight, out=grad_hidden[start:end])
        if need_weight:
            grad_weight.addmm_(logits.t(), hidden_rows)
        if need_bias:
            grad_bias += logits.sum(0, dtype=torch.float32)
    if need_bias:
        grad_bias = grad_bias.to(bias.dtype)
    return token_loss.sum(), logp, energy, entropy, ratio, clipped, grad_hidden, grad_weight, grad_bias


@torch.library.register_fake("actfocus::linear_policy_loss")
def _(hidden, weight, bias, *args):
    need_hidden, need_weight, need_bias = args[NUM_ROW_ARGS + 1:NUM_ROW_ARGS + 4]
    torch._check(hidden.dim() == 2 and weight.dim() == 2 and hidden.shape[1] == weight.shape[1],
                 lambda: f"linear_policy_loss: hidden [N, H] and weight [V, H], got {hidden.shape}, {weight.shape}")
    num_rows = hidden.shape[0]
    return (
        hidden.new_empty((), dtype=torch.float32),
        *(hidden.new_empty(num_rows, dtype=torch.float32) for _ in range(4)),
        hidden.new_empty(num_rows, dtype=torch.bool),
        torch.empty_like(hidden, memory_format=torch.contiguous_format) if need_hidden else hidden.new_empty(0),
        torch.empty_like(weight, memory_format=torch.contiguous_format) if need_weight else weight.new_empty(0),
        torch.empty_like(bias) if need_bias else weight.new_empty(0),
    )


def _linear_setup(ctx, inputs, output):
    ctx.computed = inputs[3 + NUM_ROW_ARGS + 1:3 + NUM_ROW_ARGS + 4]
    ctx.used = False
    ctx.save_for_backward(*output[-3:])
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # no zeros shaped like the unused gradient outputs


def _linear_backward(ctx, grad_loss, *_):
    if torch.is_grad_enabled():
        raise RuntimeError("actfocus linear_policy_loss does not support double backward (create_graph=True)")
    # with an incoming gradient of exactly 1 the saved buffers are returned as they are, and autograd
    # may adopt them as .grad without a copy: a second backward would hand out .grad itself
    if ctx.used:
        raise RuntimeError("actfocus linear_policy_loss computes its gradients in forward and hands them out once: "
                           "backward may run only once (call linear_policy_loss again for another backward)")
    ctx.used = True
    grads = []
    for name, needed, computed, grad in zip(("hidden", "weight", "bias"), ctx.needs_input_grad[:3], ctx.computed,
                                            ctx.saved_tensors):
        if not needed or grad_loss is None:
            grads.append(None)
            continue
        if not computed:
            raise RuntimeError(f"linear_policy_loss ran without the gradient of {name} (grad_{name}=False)")
        grads.append(ops.scaled_gradient(grad, grad_loss))
    return tuple(grads) + (None,) * (NUM_ROW_ARGS + 5)


torch.library.register_autograd("actfocus::linear_policy_loss", _linear_backward, setup_context=_linear_setup)


# --- public functions --------------------------------------------------------------------------


def _check_head(hidden: Tensor, weight: Tensor, bias: Optional[Tensor]) -> int:
    """Validate the LM head against ``hidden [..., H]``; returns the vocabulary size V."""
    _check(isinstance(hidden, Tensor), f"hidden must be a torch.Tensor, got {type(hidden).__name__}", TypeError)
    _check(isinstance(weight, Tensor), f"weight must be a torch.Tensor, got {type(weight).__name__}", TypeError)
    _check(weight.dim() == 2, f"weight must be the LM head [V, H], got shape {tuple(weight.shape)}")
    _check(hidden.dim() >= 1, "hidden must have a feature dimension [..., H]")
    _check(weight.shape[1] == hidden.shape[-1],
           f"hidden [..., H] has H={hidden.shape[-1]} features but weight has shape {tuple(weight.shape)} "
           "(expected [V, H])")
    _check(weight.shape[0] > 0, "weight has an empty vocabulary dimension (V = 0)")
    _check(weight.device == hidden.device, f"weight is on {weight.device}, hidden on {hidden.device}")
    _check(weight.dtype == hidden.dtype, f"weight dtype {weight.dtype} must equal hidden dtype {hidden.dtype}",
           TypeError)
    if bias is not None:
        _check(isinstance(bias, Tensor), f"bias must be a torch.Tensor or None, got {type(bias).__name__}", TypeError)
        _check(tuple(bias.shape) == (weight.shape[0],),
               f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        _check(bias.device == hidden.device, f"bias is on {bias.device}, hidden on {hidden.device}")
        _check(bias.dtype == hidden.dtype, f"bias dtype {bias.dtype} must equal hidden dtype {hidden.dtype}",
               TypeError)
    return weight.shape[0]


def _chunk_arg(chunk_size: Optional[int]) -> int:
    _check(chunk_size is None or (isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size > 0),
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
) -> TokenStats:
    """``token_stats`` of the logits ``z = hidden @ weight.T + bias``, never materialised.

    ``hidden [..., H]``, ``weight [V, H]``, ``bias [V]`` (optional), all one dtype; ``targets
    hidden.shape[:-1]``. With ``s = z / T``: ``logp = s[y] - logsumexp(s)``, ``energy = -T
    logsumexp(s)``, ``entropy = logsumexp(s) - sum_v p_v s_v`` (SPEC section 2), fp32, shaped like
    the targets; no gradient. ``chunk_size`` tokens at a time (``None``: ``chunk_rows`` picks it from
    the shapes and the free memory); the logits of a chunk are computed in the hidden dtype.
    """
    _check(isinstance(targets, Tensor), f"targets must be a torch.Tensor, got {type(targets).__name__}", TypeError)
    _check(temperature > 0, f"temperature must be > 0, got {temperature}")
    vocab = _check_head(hidden, weight, bias)
    batch_shape = tuple(hidden.shape[:-1])
    _check(tuple(targets.shape) == batch_shape, f"targets must have shape {batch_shape}, got {tuple(targets.shape)}")
    backend = resolve_backend(backend, hidden.device)
    rows = _rows(hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1), None, backend, name="hidden")
    _check_targets(targets, vocab, ignore_index)
    flat_targets = targets.reshape(-1).to(torch.int64).contiguous()
    stats = torch.ops.actfocus.linear_token_stats(
        rows.flat.detach(), weight.detach(), _detached(bias), flat_targets, None, float(temperature),
        int(ignore_index), _chunk_arg(chunk_size), backend)
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
    """
    _check_loss_configs(cfg, actfocus)
    vocab = _check_head(hidden, weight, bias)
    backend = resolve_backend(backend, hidden.device)
    rows = _rows(hidden, targets, cu_seqlens, backend, name="hidden")
    chunk = _chunk_arg(chunk_size)

    def current_stats(flat_targets: Tensor, selected: Tensor) -> TokenStats:
        return TokenStats(*torch.ops.actfocus.linear_token_stats(
            rows.flat.detach(), weight.detach(), _detached(bias), flat_targets, selected, float(cfg.temperature),
            int(cfg.ignore_index), chunk, backend))

    inputs = _loss_inputs(rows, targets, vocab, old_logp, advantages, loss_mask, weights, action_mask, ref_logp,
                          turn_ids, cfg, actfocus, current_stats)
    grad_mode = torch.is_grad_enabled()
    outputs = torch.ops.actfocus.linear_policy_loss(
        rows.flat, weight, bias, *inputs.row_args, chunk, grad_mode and hidden.requires_grad,
        grad_mode and weight.requires_grad, grad_mode and bias is not None and bias.requires_grad, backend)
    return _loss_output(*outputs[:6], rows, inputs)
