"""pytest-benchmark harness: ``pytest benchmarks/ --benchmark-only``.

Collects ``bench_*.py`` and runs each (op, variant) of benchmarks/cases.py at the first main point
of a size set (the linear ops at its linear point) on one device:

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

from benchmarks import cases

DEVICE = torch.device(os.environ.get("ACTFOCUS_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
SIZES_NAME = os.environ.get("ACTFOCUS_BENCH_SIZES") or ("gpu" if DEVICE.type == "cuda" else "cpu")
_INPUTS: dict[cases.Point, cases.Inputs] = {}


def pytest_configure(config):
    # raised from inside torch when torch.compile sets up; nothing here to act on
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _inputs(op: cases.Op) -> cases.Inputs:
    """One input set alive at a time (GPU sizes are several GiB)."""
    sizes = cases.SIZES[SIZES_NAME]
    if op.linear:
        tokens, hidden, vocab = sizes.linear[0]
        point = cases.Point(tokens, vocab, hidden)
    else:
        point = cases.Point(*sizes.main[0])
    if point not in _INPUTS:
        _INPUTS.clear()
        _INPUTS[point] = cases.make_inputs(point, sizes, DEVICE)
    return _INPUTS[point]


@pytest.fixture
def bench_case(benchmark):
    """``bench_case(op_name, variant_name)`` benchmarks that case, or skips with the reason."""

    def run(op_name: str, variant_name: str) -> None:
        op = cases.OPS[op_name]
        if op.linear and not hasattr(cases.ak, op_name):
            pytest.skip(f"actfocus_kernels has no {op_name} yet")
        variant = next(variant for variant in cases.VARIANTS if variant.name == variant_name)
        if variant.family == "compile" and os.environ.get("ACTFOCUS_BENCH_COMPILE", "1") == "0":
            pytest.skip("ACTFOCUS_BENCH_COMPILE=0")
        inputs = _inputs(op)
        try:
            case = cases.build_case(op_name, variant, inputs)
        except cases.Skip as skip:
            pytest.skip(str(skip))

        def target() -> None:
            case.run()
            if DEVICE.type == "cuda":
                torch.cuda.synchronize(DEVICE)

        sizes = cases.SIZES[SIZES_NAME]
        benchmark.group = f"{op_name} {inputs.point.label()} {sizes.dtype}".replace("torch.", "")
        benchmark.extra_info.update(op=op_name, variant=variant_name, device=DEVICE.type, tokens=inputs.point.tokens,
                                    vocab=inputs.point.vocab, hidden=inputs.point.hidden,
                                    bytes=op.bytes_moved(inputs.point, sizes.dtype), flops=op.flops(inputs.point))
        try:
            benchmark.pedantic(target, setup=case.setup, rounds=sizes.min_repeats, warmup_rounds=sizes.warmup)
        finally:
            case.teardown()
            inputs.zero_grads()

    return run
