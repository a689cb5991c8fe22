"""pytest-benchmark: ``pytest benchmarks/ --benchmark-only`` runs every (op, variant) of the op
modules (registry.py) at the first main point of a size set (the linear ops at its linear point)
on one device:

- ``ACTFOCUS_BENCH_DEVICE``: ``cpu`` or ``cuda`` (default: cuda when available);
- ``ACTFOCUS_BENCH_SIZES``: ``smoke``, ``cpu`` or ``gpu`` (default: cpu on CPU, gpu on CUDA);
- ``ACTFOCUS_BENCH_COMPILE=0`` skips the torch.compile variants.

Rounds are the size set's ``min_repeats`` after its warm-up; the untimed setup of each round
resets gradients (and restores logits an in-place gradient overwrote). The full comparison tables
come from ``python -m benchmarks.compare``.
"""
from __future__ import annotations

import os

import pytest
import torch

import actfocus_kernels as ak
from benchmarks import registry
from benchmarks.case import Op, Skip
from benchmarks.inputs import SIZES, Inputs, Point, linear_points, main_points, make_inputs

DEVICE = torch.device(os.environ.get("ACTFOCUS_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
SIZES_NAME = os.environ.get("ACTFOCUS_BENCH_SIZES") or ("gpu" if DEVICE.type == "cuda" else "cpu")
CASES = [(op, variant.name) for op in registry.OPS for variant in registry.variants_for(op)]
_INPUTS: dict[Point, Inputs] = {}

# raised from inside torch when torch.compile sets up; nothing here to act on
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def _inputs(op: Op) -> Inputs:
    """One input set alive at a time (GPU sizes are several GiB)."""
    sizes = SIZES[SIZES_NAME]
    point = (linear_points if op.linear else main_points)(sizes)[0]
    if point not in _INPUTS:
        _INPUTS.clear()
        _INPUTS[point] = make_inputs(point, sizes, DEVICE)
    return _INPUTS[point]


@pytest.mark.parametrize("op_name,variant_name", CASES)
def test_bench(benchmark, op_name, variant_name):
    op = registry.OPS[op_name]
    if op.linear and not hasattr(ak, op_name):
        pytest.skip(f"actfocus_kernels has no {op_name} yet")
    variant = registry.variant(op_name, variant_name)
    if variant.family == "compile" and os.environ.get("ACTFOCUS_BENCH_COMPILE", "1") == "0":
        pytest.skip("ACTFOCUS_BENCH_COMPILE=0")
    inputs = _inputs(op)
    try:
        case = registry.build_case(op_name, variant, inputs)
    except Skip as skip:
        pytest.skip(str(skip))

    def target() -> None:
        case.run()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)

    sizes = SIZES[SIZES_NAME]
    benchmark.group = f"{op_name} {inputs.point.label()} {sizes.dtype}".replace("torch.", "")
    benchmark.extra_info.update(op=op_name, variant=variant_name, device=DEVICE.type, tokens=inputs.point.tokens,
                                vocab=inputs.point.vocab, hidden=inputs.point.hidden,
                                bytes=op.bytes_moved(inputs.point, sizes.dtype), flops=op.flops(inputs.point))
    try:
        benchmark.pedantic(target, setup=case.setup, rounds=sizes.min_repeats, warmup_rounds=sizes.warmup)
    finally:
        case.teardown()
        inputs.zero_grads()
