"""SPEC section 7's CPU targets, measured side by side: each target's op and the machine ceiling it is
judged against, timed in interleaved rounds (ceiling, op, ceiling, op, ...) in one process, so that the
load of a shared machine falls on both alike (docs/performance.md).

Ceilings, each on buffers the size of the op's own:

- read bandwidth: ``x.sum()`` of the logits (fp32 and bf16: the same bytes as ``token_stats`` reads);
- copy bandwidth: ``dst.copy_(logits)`` into a preallocated buffer (read + write);
- gradient buffer: ``torch.empty_like(logits)`` plus one write per 4 KiB page (allocation and first
  touch: the page faults a fresh gradient costs, without the writes the kernel makes anyway);
- three GEMMs: ``hidden @ weight.T``, ``G @ weight``, ``G.T @ hidden`` at the linear point, as torch
  code writes them (fresh outputs: the gradients' allocation and first touch are part of any
  implementation); the same into preallocated outputs is reported beside it (the arithmetic alone).

Statistic: the shortest round of each (the ceiling is what the machine can do, and the op's best is
the same statistic; the small calls are judged on their median, see tiny_targets); medians are kept.
``measure_cpu_targets`` returns a plain dict (JSON).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import torch

import actfocus_kernels as ak

from . import registry
from .case import Case
from .inputs import SIZES, Point, make_inputs

LOGITS_POINT = Point(1024, 32000)
LINEAR_POINT = Point(512, 32000, 512)
TINY_TOKENS = (1, 8, 64)


def interleaved(cases: dict[str, Case], rounds: int, warmup: int = 1) -> dict[str, dict]:
    """``{name: {"best_ms", "median_ms", "times_ms"}}``: ``warmup`` untimed calls of each, then
    ``rounds`` rounds timing every case once, in order (setup untimed)."""
    for case in cases.values():
        for _ in range(warmup):
            case.setup()
            case.run()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            case.setup()
            begin = time.perf_counter()
            case.run()
            times[name].append(1e3 * (time.perf_counter() - begin))
    return {name: {"best_ms": min(values), "median_ms": statistics.median(values), "times_ms": values}
            for name, values in times.items()}


def _op_case(op: str, variant: str, inputs) -> Case:
    return registry.build_case(op, registry.variant(op, variant), inputs)


def _read_case(x: torch.Tensor) -> Case:
    return Case(run=lambda: x.sum())


def token_stats_targets(rounds: int) -> dict:
    """``token_stats`` (cpu) against ``x.sum()`` of the same logits, fp32 and bf16."""
    out = {}
    gen = torch.Generator().manual_seed(0)
    tokens, vocab = LOGITS_POINT.tokens, LOGITS_POINT.vocab
    targets = torch.randint(0, vocab, (tokens,), generator=gen)
    base = torch.randn(tokens, vocab, generator=gen).mul_(2.0)
    for dtype in (torch.float32, torch.bfloat16):
        logits = base.to(dtype)
        timed = interleaved({"read": _read_case(logits),
                             "token_stats": Case(run=lambda: ak.token_stats(logits, targets, backend="cpu"))}, rounds)
        out[str(dtype).replace("torch.", "")] = dict(timed, bytes=logits.numel() * logits.element_size())
    return out


def loss_targets(rounds: int) -> dict:
    """The loss fwd+bwd in place and not, the copy of the logits, the gradient buffer's first touch."""
    inputs = make_inputs(LOGITS_POINT, SIZES["cpu"], torch.device("cpu"))
    source = inputs.logits.detach()
    target = torch.empty_like(source)
    page = 4096 // source.element_size()

    def alloc_touch() -> None:
        buffer = torch.empty_like(source)
        buffer.view(-1)[::page].fill_(0.0)

    cases = {"copy": Case(run=lambda: target.copy_(source)),
             "inplace": _op_case("policy_loss", "cpu inplace", inputs),
             "not_inplace": _op_case("policy_loss", "cpu", inputs),
             "alloc_touch": Case(run=alloc_touch)}
    # the in-place case overwrites the logits by their gradient: both losses start from the original
    cases["not_inplace"].setup = cases["inplace"].setup
    timed = interleaved(cases, rounds)
    for case in cases.values():
        case.teardown()
    return dict(timed, bytes=2 * source.numel() * source.element_size())


def _three_gemms(inputs, preallocated: bool) -> Case:
    """``z = hidden @ weight.T``, ``z @ weight``, ``z.T @ hidden``: as torch code writes them (each
    output a fresh tensor: allocated and first-touched, as the gradients must be), or into
    preallocated outputs (the arithmetic alone)."""
    hidden = inputs.hidden.detach().view(-1, inputs.point.hidden)
    weight = inputs.weight.detach()
    logits = torch.empty(hidden.shape[0], weight.shape[0])
    grad_hidden = torch.empty_like(hidden)
    grad_weight = torch.empty_like(weight)

    def fresh() -> None:
        z = hidden @ weight.t()
        z @ weight
        z.t() @ hidden

    def into() -> None:
        torch.mm(hidden, weight.t(), out=logits)
        torch.mm(logits, weight, out=grad_hidden)
        torch.mm(logits.t(), hidden, out=grad_weight)

    return Case(run=into if preallocated else fresh)


def linear_targets(rounds: int) -> dict:
    """The fused linear loss (cpu) against its three GEMMs alone and naive torch; its peak memory."""
    from actfocus_kernels.ops.linear import chunk_rows

    from . import harness

    inputs = make_inputs(LINEAR_POINT, SIZES["cpu"], torch.device("cpu"))
    cases = {"three_gemms": _three_gemms(inputs, preallocated=False),
             "three_gemms_preallocated": _three_gemms(inputs, preallocated=True),
             "fused": _op_case("linear_policy_loss", "cpu", inputs),
             "naive": _op_case("linear_policy_loss", "naive", inputs)}
    timed = interleaved(cases, rounds)
    extra = harness.memory_case(cases["fused"], torch.device("cpu"))
    point = LINEAR_POINT
    rows = chunk_rows(point.tokens, point.vocab, torch.float32, torch.device("cpu"), "cpu")
    gradients = 4 * (point.tokens + point.vocab) * point.hidden
    inputs.zero_grads()
    # the per-token outputs (5 fp32 + 1 bool), the per-token inputs the loss derives (scale, ...) and the
    # scalar loss: 64 bytes per token and 64 bytes
    per_token = 64 * point.tokens + 64
    return dict(timed, extra_bytes=extra, chunk_rows=rows, chunk_bytes=4 * rows * point.vocab,
                gradient_bytes=gradients, per_token_bytes=per_token)


GAP_S = 0.01  # untimed pause before each small call


def _after_gap(setup: Callable[[], None]) -> Callable[[], None]:
    def pause_then_setup() -> None:
        time.sleep(GAP_S)
        setup()

    return pause_then_setup


def tiny_targets(rounds: int) -> dict:
    """Calls at N <= 64 (V = 32000): token_stats and the loss fwd+bwd (not in place), each after a
    10 ms pause, as calls come in a trainer (between other work): an OpenMP worker then sleeps and a
    parallel region waits for it to be scheduled again; back-to-back calls would keep it spinning and
    hide that floor. Judged on the median (the floor is the typical call, not the best one)."""
    out = {}
    for tokens in TINY_TOKENS:
        inputs = make_inputs(Point(tokens, LOGITS_POINT.vocab), SIZES["cpu"], torch.device("cpu"))
        logits = inputs.logits.detach()
        cases = {"token_stats": Case(run=lambda: ak.token_stats(logits, inputs.targets, backend="cpu")),
                 "loss": _op_case("policy_loss", "cpu", inputs),
                 "sum": Case(run=lambda: logits.sum())}
        for case in cases.values():
            case.setup = _after_gap(case.setup)
        out[str(tokens)] = interleaved(cases, rounds)
    return out


def measure_cpu_targets(log: Optional[Callable[[str], None]] = None, rounds: int = 7) -> dict:
    """Every CPU target's measurements (see the module docstring)."""
    log = log or (lambda message: None)
    result = {}
    for name, measure, count in (("token_stats", token_stats_targets, rounds), ("loss", loss_targets, rounds),
                                 ("tiny", tiny_targets, 3 * rounds), ("linear", linear_targets, max(3, rounds // 2))):
        log(f"targets: {name} beside its ceilings ({count} interleaved rounds) ...")
        result[name] = measure(count)
    return result
