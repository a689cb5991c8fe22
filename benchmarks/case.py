"""What a benchmark case is: the records every op module fills in (``Op``, ``Variant``, ``Case``,
``Skip``) and the pieces their builders share.

Every (op, variant) pair builds a ``Case``: an untimed ``setup`` (reset gradients, restore logits
that an in-place gradient overwrote), the timed ``run``, ``check`` (small CPU tensors taken after a
run, compared with the naive result so that every row computes the same thing) and ``teardown``.
A variant that cannot run here raises ``Skip`` with the reason, which the tables show.
The variants every op has — naive torch, ``torch.compile`` of it, our backends — are made here
(``naive_variant``, ``compiled_variant``, ``backend_variants``) from the op module's builder, so
their names and descriptions are the same for every op.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

from actfocus_kernels import PolicyLossConfig, native

from . import peers
from .inputs import Inputs, Point


class Skip(Exception):
    """The variant cannot run here; the message says why."""


def _nothing() -> None:
    return None


@dataclass
class Case:
    run: Callable[[], None]
    setup: Callable[[], None] = _nothing
    teardown: Callable[[], None] = _nothing
    check: Callable[[], dict[str, Tensor]] = dict
    note: str = ""


@dataclass(frozen=True)
class Variant:
    name: str
    family: str  # "naive" | "compile" | "ours" | "peer"
    about: str
    build: Callable[["Op", Inputs], Case] = field(compare=False)
    main_only: bool = False  # measured at the main points only (slow, or compiled per shape)
    reserve_s: float = 5.0  # started only with this much of the run's time budget left (compilation)


def no_expectations(op: "Op", inputs: Inputs) -> dict[str, Tensor]:
    return {}


@dataclass(frozen=True)
class Op:
    """One benchmarked op and the variants its module measures, in table order. ``expectations``
    gives the values beyond naive's that a variant's checks are compared with (a peer's loss)."""

    name: str
    title: str
    linear: bool  # inputs are hidden states + LM head
    grad: bool  # timed as forward + backward
    variants: tuple[Variant, ...] = field(compare=False)
    cfg: Optional[PolicyLossConfig] = None
    main_only: bool = False  # no sweeps
    expectations: Callable[["Op", Inputs], dict[str, Tensor]] = field(default=no_expectations, compare=False)

    def bytes_moved(self, point: Point, dtype: torch.dtype) -> int:
        """The fewest bytes the op must move: logits read once (and the gradient written once),
        plus about 40 bytes of per-token inputs and outputs. Linear ops: hidden and weight read
        (and their gradients written)."""
        element = torch.tensor([], dtype=dtype).element_size()
        per_token = 40 * point.tokens
        if self.linear:
            operands = (point.tokens + point.vocab) * point.hidden * element
            return operands * (2 if self.grad else 1) + per_token
        return point.tokens * point.vocab * element * (2 if self.grad else 1) + per_token

    def flops(self, point: Point) -> int:
        """Matrix-product flops of linear ops: logits ``2NHV``; with grad also dhidden and dweight."""
        return 2 * point.tokens * point.hidden * point.vocab * (3 if self.grad else 1) if self.linear else 0


# --- checks and case shapes --------------------------------------------------------------------

CHECK_ROWS = 4  # gradient rows compared: the first tokens of sequence 0 (always on the mask)
STAT_NAMES = ("logp", "energy", "entropy")


def small(value: Tensor) -> Tensor:
    return value.detach().float().cpu()


def loss_checks(inputs: Inputs, loss: Tensor, logp: Tensor) -> dict[str, Tensor]:
    checks = {"loss": small(loss), "logp": small(logp[inputs.loss_mask])}  # kernels may skip masked rows
    if inputs.logits is not None:
        checks["grad"] = small(inputs.logits.grad[0, :CHECK_ROWS])
    else:
        checks["grad_hidden"] = small(inputs.hidden.grad[0, :CHECK_ROWS])
        checks["grad_weight"] = small(inputs.weight.grad[:CHECK_ROWS])
    return checks


def stats_case(compute: Callable[[], tuple[Tensor, ...]]) -> Case:
    """``compute()`` returns ``(logp, energy, entropy)``, all checked."""
    out: dict[str, tuple[Tensor, ...]] = {}

    def run() -> None:
        out["stats"] = compute()

    return Case(run=run, check=lambda: dict(zip(STAT_NAMES, map(small, out["stats"]))))


def logp_case(compute: Callable[[], Tensor]) -> Case:
    """A peer that gives the per-token log-prob only."""
    out: dict[str, Tensor] = {}

    def run() -> None:
        out["logp"] = compute()

    return Case(run=run, check=lambda: {"logp": small(out["logp"])}, note="log-prob only")


def loss_case(inputs: Inputs, compute: Callable[[], tuple[Tensor, Tensor]], setup: Optional[Callable] = None,
              teardown: Callable[[], None] = _nothing, note: str = "") -> Case:
    """``compute()`` returns ``(loss, logp)``; the run also back-propagates the loss. Checked: the
    loss, the log-probs on the mask and the first gradient rows."""
    out: dict[str, Tensor] = {}

    def run() -> None:
        loss, logp = compute()
        loss.backward()
        out["loss"], out["logp"] = loss.detach(), logp.detach()

    return Case(run=run, setup=setup or inputs.zero_grads, teardown=teardown, note=note,
                check=lambda: loss_checks(inputs, out["loss"], out["logp"]))


def peer_loss_case(compute: Callable[[], Tensor], setup: Callable[[], None], note: str) -> Case:
    """A peer's loss (its own terms: checked against ``Op.expectations``), back-propagated."""
    out: dict[str, Tensor] = {}

    def run() -> None:
        loss = compute()
        loss.backward()
        out["loss"] = loss.detach()

    return Case(run=run, setup=setup, check=lambda: {"peer_loss": small(out["loss"])}, note=note)


def restorer(leaf: Tensor, reset_grads: Callable[[], None]) -> Callable[[], None]:
    """Setup of an in-place gradient: reset the gradients and put back the values ``leaf`` has now."""
    original = leaf.detach().clone()

    def restore() -> None:
        reset_grads()
        with torch.no_grad():
            leaf.copy_(original)

    return restore


_COMPILED: dict[str, Callable] = {}


def compiled(op: Op, fn: Callable) -> Callable:
    """``torch.compile`` of the naive ``fn`` (default mode, static shapes), made once per op."""
    if op.name not in _COMPILED:
        _COMPILED[op.name] = torch.compile(fn, dynamic=False)
    return _COMPILED[op.name]


# --- where a variant can run ---------------------------------------------------------------------


def require_backend(backend: str, device: torch.device) -> None:
    if backend in ("cpu", "cuda"):
        if device.type != backend:
            raise Skip("GPU only" if backend == "cuda" else "CPU only")
        if not native.has_backend(backend):
            raise Skip(f"the extension was built without the {backend} backend")
    elif backend == "triton" and device.type != "cuda":
        raise Skip("GPU only (on CPU only under TRITON_INTERPRET=1: not timed)")
    elif backend == "reference" and device.type == "cuda":
        raise Skip("CPU table only (the fp32 ground truth, not a fast path)")


def require_peer(distribution: str, device: torch.device, cpu_ok: bool = False) -> None:
    if device.type != "cuda" and not cpu_ok:
        raise Skip("GPU only (Triton kernels)")
    if peers.version(distribution) is None:
        raise Skip(f"{distribution} is not importable")


# --- the variants every op has -------------------------------------------------------------------


def naive_variant(build: Callable[[Op, Inputs], Case]) -> Variant:
    return Variant("naive", "naive", "eager torch as trainers write it: fp32 upcast, log_softmax, gather, "
                   "softmax entropy, logsumexp energy, clipped surrogate, autograd (benchmarks/naive.py)", build)


def compiled_variant(build: Callable[[Op, Inputs], Case]) -> Variant:
    return Variant("torch.compile", "compile", "torch.compile(naive), default mode, static shapes; compile "
                   "time excluded (warm-up)", build, main_only=True, reserve_s=60.0)


def _on_backend(build: Callable[..., Case], backend: str, **options) -> Callable[[Op, Inputs], Case]:
    def build_case(op: Op, inputs: Inputs) -> Case:
        require_backend(backend, inputs.device)
        return build(op, inputs, backend, **options)

    return build_case


BACKEND_ABOUT = {"cpu": "backend='cpu': C++ extension, OpenMP over rows, at::vec", "triton": "backend='triton'",
                 "cuda": "backend='cuda': CUDA C++ extension"}


def backend_variants(build: Callable[..., Case], inplace: bool = False) -> tuple[Variant, ...]:
    """``reference``, ``cpu``, ``triton``, ``cuda`` — each followed by its ``inplace_grad=True``
    variant when ``inplace`` — built by ``build(op, inputs, backend[, inplace=True])``."""
    variants = [Variant("reference", "ours", "actfocus_kernels backend='reference' (plain torch, fp32)",
                        _on_backend(build, "reference"), main_only=True)]
    for backend, about in BACKEND_ABOUT.items():
        variants.append(Variant(backend, "ours", about, _on_backend(build, backend)))
        if inplace:
            variants.append(Variant(f"{backend} inplace", "ours", f"backend='{backend}', inplace_grad=True",
                                    _on_backend(build, backend, inplace=True)))
    return tuple(variants)
