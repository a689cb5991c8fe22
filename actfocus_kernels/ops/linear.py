"""``actfocus::linear_token_stats`` and ``actfocus::linear_policy_loss``: the fused linear path on
rows ``hidden [N, H]`` and the LM head ``head_weight [V, H]``, ``head_bias [V]?`` (``weights`` are the
token weights); the logits ``z = hidden @ head_weight.T + head_bias`` are never materialised beyond one
chunk (docs/linear.md).

Tokens go ``chunk`` rows at a time. For rows ``c``:

    logits_c = hidden_c @ weight.T + bias          [chunk, V], in ``logits_dtype`` (one GEMM; None:
                                                   the hidden dtype, float32: fp32 from a half head)
    row kernel (the backend's ``policy_loss``)     the rows' outputs, and the buffer overwritten
                                                   IN PLACE by G_c = d loss / d z (transform included)
    grad_hidden[c] = G_c @ weight                  (second GEMM, written once per row)
    grad_weight  += G_c.T @ hidden_c               (third GEMM, accumulated, ``addmm_``; inactive
                                                   rows of hidden_c zeroed so a NaN there stays out)
    grad_bias    += G_c.sum(0)                     (fp32 accumulator)

so the arithmetic is the three GEMMs of the naive ``hidden @ weight.T`` + loss + backward, and the
memory beyond the inputs is one chunk of logits plus the gradients. The gradients are computed in
forward for a unit incoming gradient and backward only rescales them, once.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from ..contract import LossOpOutputs, RowLossInputs, RowLossOutputs, TokenStatsInputs, TokenStatsOutputs
from .policy_loss import scaled_gradient
from .registry import define_op
from .routing import check_transform, row_kernels
from .row_gradient import active_rows, stats_gradient_inputs
from .token_stats import DIFFERENTIABLE, empty_stats, per_token_outputs, run_token_stats

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

    A chunk costs ``vocab`` logits of ``dtype`` per token (the chunk logits' dtype: 4 bytes each with
    ``logits_dtype=float32``; the buffer becomes the gradient in place;
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


def _chunks(num_rows: int, chunk_size: int, head: "Head", backend: str):
    """``(start, end)`` row ranges; ``chunk_size == 0`` is chosen by ``chunk_rows`` (at the logits' dtype)."""
    weight = head.weight
    step = chunk_size or chunk_rows(num_rows, weight.shape[0], head.logits_dtype, weight.device, backend)
    return ((start, min(start + step, num_rows)) for start in range(0, num_rows, step))


# torch builds with a mixed-precision GEMM output (``mm(a, b, out_dtype=)``, CUDA only)
_MM_OUT_DTYPE = any("mm.dtype" in str(schema) for schema in torch._C._jit_get_schemas_for_operator("aten::mm"))


class Head(NamedTuple):
    """The LM head of a linear op: ``weight [V, H]``, ``bias [V]?`` and the dtype of the chunk logits
    (``logits_dtype`` None = the hidden dtype). With fp32 logits from a bf16/fp16 head every GEMM
    runs in fp32 (exact products, fp32 accumulation) and each gradient is rounded once to its
    parameter's dtype; on CUDA the logits GEMM reads the half head directly (``out_dtype``)."""

    weight: Tensor
    bias: Optional[Tensor]
    logits_dtype: torch.dtype

    @classmethod
    def of(cls, weight: Tensor, bias: Optional[Tensor], logits_dtype: Optional[torch.dtype]) -> "Head":
        return cls(weight, bias, weight.dtype if logits_dtype is None else logits_dtype)

    @property
    def widened(self) -> bool:
        """True when the logits are wider than the head (fp32 logits from a bf16/fp16 head)."""
        return self.logits_dtype != self.weight.dtype

    def gemm_weight(self) -> Tensor:
        """The head in the GEMMs' dtype (an fp32 copy when widened: make it once per call)."""
        return self.weight.to(self.logits_dtype) if self.widened else self.weight

    def logits(self, hidden_rows: Tensor, gemm_weight: Tensor) -> Tensor:
        """``hidden_rows @ weight.T (+ bias)`` ``[chunk, V]`` in ``logits_dtype``, rounded once."""
        bias = None if self.bias is None else self.bias.to(self.logits_dtype)
        if self.widened and _MM_OUT_DTYPE and hidden_rows.is_cuda:
            out = torch.mm(hidden_rows, self.weight.t(), out_dtype=self.logits_dtype)
            return out if bias is None else out.add_(bias)
        rows = hidden_rows.to(self.logits_dtype)
        return torch.mm(rows, gemm_weight.t()) if bias is None else torch.addmm(bias, rows, gemm_weight.t())


def _check_head(hidden: Tensor, weight: Tensor, logits_dtype: Optional[torch.dtype]) -> None:
    torch._check(hidden.dim() == 2 and weight.dim() == 2 and hidden.shape[1] == weight.shape[1],
                 lambda: f"actfocus linear ops: hidden [N, H] and head_weight [V, H], got {hidden.shape}, "
                         f"{weight.shape}")
    torch._check(logits_dtype in (None, torch.float32),
                 lambda: f"actfocus linear ops: logits_dtype must be None or torch.float32, got {logits_dtype}")


def _without_inactive(hidden_rows: Tensor, active: Tensor) -> Tensor:
    """The rows with the inactive ones zeroed: their gradient row is 0, and ``0 * NaN`` of a NaN hidden
    state on a masked row must not reach the head's gradient ``G.T @ hidden``."""
    return torch.where(active.unsqueeze(1), hidden_rows, 0)


def _finite_or_without_inactive(hidden_rows: Tensor, active_of: Callable[[], Tensor]) -> Tensor:
    """``_without_inactive`` where it matters: a chunk whose entries are all finite (their sum is: one
    read, no copy; an overflow only takes the zeroing path) is used as it is, so the usual chunk of the
    fused loss costs no chunk-sized copy. Reads a value on the host: inside an op's implementation only,
    never in a traced backward (``active_of()`` gives the active rows, bool)."""
    if bool(torch.isfinite(hidden_rows.sum())):
        return hidden_rows
    return _without_inactive(hidden_rows, active_of())


# --- linear_token_stats ------------------------------------------------------------------------

STATS_FIELDS = ("temperature", "ignore_index", "logit_scale", "softcap", "extra_stats")


def _stats_inputs(named: dict, targets: Tensor) -> TokenStatsInputs:
    return TokenStatsInputs(targets, *(named[name] for name in STATS_FIELDS))


def _stats_impl(*args, **kwargs):
    named = LINEAR_TOKEN_STATS.bind(args, kwargs)
    hidden, selected, backend = named["hidden"], named["selected"], named["backend"]
    head = Head.of(named["head_weight"], named["head_bias"], named["logits_dtype"])
    outputs = empty_stats(hidden, named["extra_stats"])
    if selected is None:
        index = None
    else:
        index = selected.nonzero().squeeze(1)
        outputs = TokenStatsOutputs(*(x.zero_() for x in outputs))
    num_rows = hidden.shape[0] if index is None else index.numel()
    gemm_weight = head.gemm_weight()
    for start, end in _chunks(num_rows, named["chunk_size"], head, backend):
        rows = slice(start, end) if index is None else index[start:end]
        stats = run_token_stats(head.logits(hidden[rows], gemm_weight), _stats_inputs(named, named["targets"][rows]),
                                backend)
        for output, value in zip(outputs, stats):
            if output.numel():
                output[rows] = value
    return tuple(outputs)


def _stats_fake(*args, **kwargs):
    named = LINEAR_TOKEN_STATS.bind(args, kwargs)
    _check_head(named["hidden"], named["head_weight"], named["logits_dtype"])
    return tuple(empty_stats(named["hidden"], named["extra_stats"]))


def _stats_setup_context(ctx, inputs, output):
    named = LINEAR_TOKEN_STATS.bind(inputs)
    ctx.save_for_backward(*(named[name] for name in ("hidden", "head_weight", "head_bias", "targets", "selected")))
    ctx.options = {name: named[name] for name in (*STATS_FIELDS, "logits_dtype", "chunk_size", "backend")}
    ctx.mark_non_differentiable(*output[DIFFERENTIABLE:])


def _stats_backward(ctx, grad_logp, grad_energy, grad_entropy, *_extras):
    """Recomputes each chunk's logits, its ``row_gradient`` G, then ``G @ weight``, ``G.T @ hidden``
    and ``G.sum(0)``: no N x V intermediate, the same three GEMMs as the loss. Rows with a zero
    incoming gradient contribute exactly 0 to every gradient, whatever their hidden state holds."""
    hidden, weight, bias, targets, selected = ctx.saved_tensors
    need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
    options, backend = ctx.options, ctx.options["backend"]
    head = Head.of(weight, bias, options["logits_dtype"])
    gemm_weight = head.gemm_weight()
    grad_hidden = torch.zeros_like(hidden) if need_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=gemm_weight.dtype, device=weight.device) if need_weight else None
    grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
    index = None if selected is None else selected.nonzero().squeeze(1)
    num_rows = hidden.shape[0] if index is None else index.numel()
    for start, end in _chunks(num_rows, options["chunk_size"], head, backend):
        rows = slice(start, end) if index is None else index[start:end]
        hidden_rows = hidden[rows]
        incoming = tuple(None if g is None else g[rows] for g in (grad_logp, grad_energy, grad_entropy))
        coefficients = stats_gradient_inputs(_stats_inputs(options, targets[rows]), incoming, hidden_rows.shape[0],
                                             hidden.device)
        grad = torch.ops.actfocus.row_gradient(head.logits(hidden_rows, gemm_weight), **coefficients.as_kwargs(),
                                               backend=backend)
        if need_hidden:
            grad_hidden[rows] = torch.mm(grad, gemm_weight).to(hidden.dtype)
        if need_weight:
            active = _without_inactive(hidden_rows, active_rows(coefficients))
            grad_weight.addmm_(grad.t(), active.to(grad.dtype))
        if need_bias:
            grad_bias += grad.sum(0, dtype=torch.float32)
    return LINEAR_TOKEN_STATS.gradients(
        hidden=grad_hidden, head_weight=None if grad_weight is None else grad_weight.to(weight.dtype),
        head_bias=None if grad_bias is None else grad_bias.to(bias.dtype))


# Rows -> TokenStatsOutputs [N], chunk_size rows at a time (0: chunk_rows); with `selected`
# (bool [N]) only those rows are computed, the others are 0 (and get no gradient).
LINEAR_TOKEN_STATS = define_op(
    "linear_token_stats",
    "(Tensor hidden, Tensor head_weight, Tensor? head_bias, Tensor targets, Tensor? selected, float temperature, "
    "int ignore_index, float logit_scale, float softcap, bool extra_stats, ScalarType? logits_dtype, int chunk_size, "
    f"str backend) -> ({TokenStatsOutputs.schema()})",
    _stats_impl, _stats_fake, _stats_backward, _stats_setup_context,
)


# --- linear_policy_loss ------------------------------------------------------------------------

# gradient flags and outputs ``grad_<name>``, for the op inputs of GRADIENT_INPUTS
GRADIENTS = ("hidden", "weight", "bias")
GRADIENT_INPUTS = dict(zip(GRADIENTS, ("hidden", "head_weight", "head_bias")))


def _gradient_buffers(named: dict, head: Head) -> dict[str, Tensor]:
    """``grad_hidden [N, H]`` (every row written once), ``grad_weight [V, H]`` (zeros, accumulated by
    GEMMs with fp32 accumulation, in the logits' dtype), ``grad_bias [V]`` (an fp32 accumulator); an
    empty tensor for each gradient not asked for."""
    hidden, weight, bias = named["hidden"], named["head_weight"], named["head_bias"]
    return {  # a fresh empty tensor for each gradient not asked for: outputs must not alias
        "hidden": torch.empty_like(hidden, memory_format=torch.contiguous_format) if named["grad_hidden"]
        else weight.new_empty(0),
        "weight": torch.zeros_like(weight, dtype=head.logits_dtype, memory_format=torch.contiguous_format)
        if named["grad_weight"] else weight.new_empty(0),
        "bias": torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if named["grad_bias"]
        else weight.new_empty(0),
    }


def _loss_impl(*args, **kwargs):
    named = LINEAR_POLICY_LOSS.bind(args, kwargs)
    hidden, backend = named["hidden"], named["backend"]
    head = Head.of(named["head_weight"], named["head_bias"], named["logits_dtype"])
    inputs = RowLossInputs.from_named(named)
    num_rows = hidden.shape[0]
    token_loss, logp, energy, entropy, ratio = per_token_outputs(hidden, 5)
    outputs = RowLossOutputs(token_loss, logp, energy, entropy, ratio, hidden.new_empty(num_rows, dtype=torch.bool))
    grads = _gradient_buffers(named, head)
    need = {name: named[f"grad_{name}"] for name in GRADIENTS}
    check_transform("linear_policy_loss", inputs.logit_scale, inputs.softcap)
    row_kernel = row_kernels(backend).policy_loss
    gemm_weight = head.gemm_weight()
    for start, end in _chunks(num_rows, named["chunk_size"], head, backend):
        hidden_rows = hidden[start:end]
        rows = inputs.take(slice(start, end))
        logits = head.logits(hidden_rows, gemm_weight)
        # with a gradient asked for, the kernel overwrites the logits by their gradient (dlogits aliases logits)
        chunk = row_kernel(logits, rows, logits if any(need.values()) else None)
        for output, value in zip(outputs, chunk):
            output[start:end] = value
        if need["hidden"]:
            if grads["hidden"].dtype == logits.dtype:  # straight into the output: no chunk-sized temporary
                torch.mm(logits, gemm_weight, out=grads["hidden"][start:end])
            else:  # fp32 logits of a bf16/fp16 head: rounded once into the hidden dtype
                grads["hidden"][start:end] = torch.mm(logits, gemm_weight)
        if need["weight"]:
            def active_of(rows=rows):
                return (rows.scale != 0) & (rows.targets != inputs.ignore_index)

            grads["weight"].addmm_(logits.t(), _finite_or_without_inactive(hidden_rows, active_of).to(logits.dtype))
        if need["bias"]:
            grads["bias"] += logits.sum(0, dtype=torch.float32)
    for name, parameter in (("weight", head.weight), ("bias", head.bias)):
        if need[name]:
            grads[name] = grads[name].to(parameter.dtype)
    loss = LossOpOutputs(token_loss.sum(), outputs.logp, outputs.energy, outputs.entropy, outputs.ratio,
                         outputs.clipped)
    return (*loss, *(grads[name] for name in GRADIENTS))


def _loss_fake(*args, **kwargs):
    named = LINEAR_POLICY_LOSS.bind(args, kwargs)
    hidden, weight, bias = named["hidden"], named["head_weight"], named["head_bias"]
    _check_head(hidden, weight, named["logits_dtype"])
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
            raise RuntimeError(f"linear_policy_loss ran without the gradient of {GRADIENT_INPUTS[name]} "
                               f"(grad_{name}=False)")
        grads[GRADIENT_INPUTS[name]] = scaled_gradient(saved, grad_loss)
    return LINEAR_POLICY_LOSS.gradients(**grads)


LINEAR_POLICY_LOSS = define_op(
    "linear_policy_loss",
    f"(Tensor hidden, Tensor head_weight, Tensor? head_bias, {RowLossInputs.schema()}, ScalarType? logits_dtype, "
    f"int chunk_size, bool grad_hidden, bool grad_weight, bool grad_bias, str backend) "
    f"-> ({LossOpOutputs.schema()}, Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)",
    _loss_impl, _loss_fake, _loss_backward, _loss_setup_context,
)
