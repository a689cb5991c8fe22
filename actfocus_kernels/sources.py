"""Statistics sources: where a call's logits come from, and what can be computed from them.

A source holds validated rows and answers, for flat int64 targets ``[N]``:

- ``token_stats(targets, temperature, ignore_index, extra_stats)``: the differentiable per-token
  ``logp``, ``energy`` and ``entropy`` (SPEC section 2), ``[N]`` fp32, and the extra statistics of SPEC
  section 10 when asked (not differentiable);
- ``detached_stats(targets, temperature, ignore_index, selected)``: the same without gradient, needed
  on the ``selected`` tokens at least (ActFocus ``source="current"`` before a fused pass);
- ``fused_loss(row)`` where ``fused`` is true: the single-pass policy loss of the row contract
  (``contract.RowLossInputs``), its gradient computed in the same pass;
- ``with_replicated_input(replicate)``: the source with its replicated input (the hidden states of an
  LM head) passed through ``replicate`` (tensor parallel sums its gradient over the group).

``LogitsSource``: rows of logits ``[N, V]``. ``HeadSource``: hidden states ``[N, H]`` and an LM head
``weight [V, H]`` (``bias [V]``), read ``chunk_size`` tokens at a time, the logits never materialised
(in fp32 from a bf16/fp16 head with ``logits_dtype=torch.float32``). Each carries the ``transform`` of
its logits (SPEC section 10: ``logit_scale``, ``softcap``), applied inside the kernels.
``tensor_parallel.ShardedSource`` wraps either around a vocabulary shard.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar, Optional, Protocol

import torch
from torch import Tensor

from . import ops
from .backends import resolve_backend
from .config import LogitTransform, TokenStats, check_ignore_index, check_temperature
from .contract import LossOpOutputs, RowLossInputs
from .rows import check, check_targets, flat_rows


class StatsSource(Protocol):
    """What the engine asks of a source (module docstring); ``vocab`` is the global vocabulary;
    ``fused_loss`` is called only where ``fused`` is true."""

    fused: ClassVar[bool]
    transform: LogitTransform

    @property
    def vocab(self) -> int: ...

    def token_stats(self, targets: Tensor, temperature: float, ignore_index: int,
                    extra_stats: bool = False) -> TokenStats: ...

    def detached_stats(self, targets: Tensor, temperature: float, ignore_index: int,
                       selected: Optional[Tensor]) -> TokenStats: ...

    def fused_loss(self, row: RowLossInputs) -> LossOpOutputs: ...

    def row_max(self) -> Tensor: ...

    def with_replicated_input(self, replicate: Callable[[Tensor], Tensor]) -> StatsSource: ...


def _stats(outputs, extra_stats: bool) -> TokenStats:
    """The ``TokenStats`` of a statistics op's six outputs (the extras None unless asked for)."""
    return TokenStats(*(outputs if extra_stats else outputs[:3]))


@dataclass(frozen=True)
class LogitsSource:
    """Rows of logits ``[N, V]``, a view of the caller's tensor; with ``inplace_grad`` the gradient
    overwrites them (in the fused pass, or in the backward of ``token_stats``)."""

    rows: Tensor
    backend: str
    transform: LogitTransform = LogitTransform()
    inplace_grad: bool = False
    fused: ClassVar[bool] = True

    @classmethod
    def of(cls, logits: Tensor, targets: Tensor, backend: str, transform: LogitTransform,
           inplace_grad: bool = False) -> LogitsSource:
        """``logits [B, L, V]`` or ``[N, V]`` checked against ``targets`` shaped like their tokens."""
        check(isinstance(logits, Tensor), f"logits must be a torch.Tensor, got {type(logits).__name__}", TypeError)
        backend = resolve_backend(backend, logits.device)
        return cls(flat_rows(logits, targets, backend, need_view=inplace_grad), backend, transform, inplace_grad)

    @property
    def vocab(self) -> int:
        return self.rows.shape[1]

    def token_stats(self, targets: Tensor, temperature: float, ignore_index: int,
                    extra_stats: bool = False) -> TokenStats:
        if self.inplace_grad and torch.is_grad_enabled() and self.rows.requires_grad:
            return TokenStats(*ops.InplaceGradTokenStats.apply(self.rows, targets, float(temperature),
                                                               int(ignore_index), self.backend, *self.transform))
        return _stats(torch.ops.actfocus.token_stats(self.rows, targets, float(temperature), int(ignore_index),
                                                     *self.transform, extra_stats, self.backend), extra_stats)

    def detached_stats(self, targets: Tensor, temperature: float, ignore_index: int,
                       selected: Optional[Tensor]) -> TokenStats:
        return _stats(torch.ops.actfocus.token_stats(self.rows.detach(), targets, float(temperature),
                                                     int(ignore_index), *self.transform, False, self.backend), False)

    def fused_loss(self, row: RowLossInputs) -> LossOpOutputs:
        compute_grad = torch.is_grad_enabled() and self.rows.requires_grad
        if self.inplace_grad and compute_grad:
            return LossOpOutputs(*ops.InplaceGradPolicyLoss.apply(self.rows, row, self.backend))
        *outputs, _dlogits = torch.ops.actfocus.policy_loss(self.rows, **row.as_kwargs(), compute_grad=compute_grad,
                                                            backend=self.backend)
        return LossOpOutputs(*outputs)

    def row_max(self) -> Tensor:
        """``max_v z_v`` per row (raw logits; one more read)."""
        return self.rows.detach().max(dim=-1).values

    def with_replicated_input(self, replicate: Callable[[Tensor], Tensor]) -> LogitsSource:
        return self  # the logits are the source's own rows: nothing replicated


def check_head(hidden: Tensor, weight: Tensor, bias: Optional[Tensor]) -> int:
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


def _detached(value: Optional[Tensor]) -> Optional[Tensor]:
    return None if value is None else value.detach()


@dataclass(frozen=True)
class HeadSource:
    """Hidden states ``[N, H]`` and the LM head ``weight [V, H]`` (``bias [V]``) of the logits
    ``z = hidden @ weight.T + bias``, read ``chunk_size`` tokens at a time (0: ``ops.linear.chunk_rows``
    chooses); the ``actfocus`` linear ops compute their gradients with the same chunks."""

    hidden: Tensor
    weight: Tensor
    bias: Optional[Tensor]
    chunk_size: int
    backend: str
    transform: LogitTransform = LogitTransform()
    logits_dtype: Optional[torch.dtype] = None
    fused: ClassVar[bool] = True

    @classmethod
    def of(cls, hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor, chunk_size: Optional[int],
           backend: str, transform: LogitTransform, logits_dtype: Optional[torch.dtype] = None) -> HeadSource:
        """``hidden [B, L, H]`` or ``[N, H]`` checked against the head and ``targets``; ``logits_dtype``
        None (the hidden dtype) or ``torch.float32``."""
        check_head(hidden, weight, bias)
        valid_chunk = isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size > 0
        check(chunk_size is None or valid_chunk, f"chunk_size must be a positive int or None, got {chunk_size!r}")
        check(logits_dtype in (None, torch.float32),
              f"logits_dtype must be None or torch.float32, got {logits_dtype!r}", TypeError)
        backend = resolve_backend(backend, hidden.device)
        return cls(flat_rows(hidden, targets, backend, name="hidden"), weight, bias, chunk_size or 0, backend,
                   transform, logits_dtype)

    @property
    def vocab(self) -> int:
        return self.weight.shape[0]

    def _stats(self, hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor,
               selected: Optional[Tensor], temperature: float, ignore_index: int, extra_stats: bool) -> TokenStats:
        return _stats(torch.ops.actfocus.linear_token_stats(
            hidden, weight, bias, targets, selected, float(temperature), int(ignore_index), *self.transform,
            extra_stats, self.logits_dtype, self.chunk_size, self.backend), extra_stats)

    def token_stats(self, targets: Tensor, temperature: float, ignore_index: int,
                    extra_stats: bool = False) -> TokenStats:
        return self._stats(self.hidden, self.weight, self.bias, targets, None, temperature, ignore_index, extra_stats)

    def detached_stats(self, targets: Tensor, temperature: float, ignore_index: int,
                       selected: Optional[Tensor]) -> TokenStats:
        """Only the ``selected`` tokens' logits are computed (the others read 0)."""
        return self._stats(self.hidden.detach(), self.weight.detach(), _detached(self.bias), targets, selected,
                           temperature, ignore_index, False)

    def fused_loss(self, row: RowLossInputs) -> LossOpOutputs:
        grad_mode = torch.is_grad_enabled()
        *outputs, _grad_hidden, _grad_weight, _grad_bias = torch.ops.actfocus.linear_policy_loss(
            self.hidden, self.weight, self.bias, **row.as_kwargs(), logits_dtype=self.logits_dtype,
            chunk_size=self.chunk_size,
            grad_hidden=grad_mode and self.hidden.requires_grad, grad_weight=grad_mode and self.weight.requires_grad,
            grad_bias=grad_mode and self.bias is not None and self.bias.requires_grad, backend=self.backend)
        return LossOpOutputs(*outputs)

    def row_max(self) -> Tensor:
        """``max_v z_v`` per row (raw logits), a chunk of logits at a time (one more GEMM)."""
        hidden, weight = self.hidden.detach(), self.weight.detach()
        dtype = self.logits_dtype or hidden.dtype
        step = self.chunk_size or 1024
        peaks = [torch.nn.functional.linear(hidden[start:start + step].to(dtype), weight.to(dtype),
                                            None if self.bias is None else self.bias.detach().to(dtype)).max(-1).values
                 for start in range(0, hidden.shape[0], step)]
        return torch.cat(peaks) if peaks else hidden.new_empty(0, dtype=dtype)

    def with_replicated_input(self, replicate: Callable[[Tensor], Tensor]) -> HeadSource:
        return dataclasses.replace(self, hidden=replicate(self.hidden))


def check_stats_call(owner: str, values: Tensor, targets, temperature: float, ignore_index: int,
                     extra_stats: bool) -> None:
    """The arguments of ``token_stats`` / ``linear_token_stats`` but the source: ``targets`` shaped
    like the tokens of ``values [..., D]``, a valid temperature and ignore index."""
    check(isinstance(targets, Tensor), f"targets must be a torch.Tensor, got {type(targets).__name__}", TypeError)
    check_temperature(owner, temperature)
    check_ignore_index(owner, ignore_index)
    check(isinstance(extra_stats, bool), f"{owner}.extra_stats must be a bool, got {extra_stats!r}", TypeError)
    batch_shape = tuple(values.shape[:-1])
    check(tuple(targets.shape) == batch_shape, f"targets must have shape {batch_shape}, got {tuple(targets.shape)}")


def checked_targets(source: StatsSource, targets: Tensor, ignore_index: int) -> StatsSource:
    """``source``, once ``targets`` are known to lie in its vocabulary (or equal ``ignore_index``)."""
    check_targets(targets, source.vocab, ignore_index)
    return source
