"""How one thing is measured: time, peak extra memory, agreement with naive, the machine's
ceilings (device-copy bandwidth, matmul rate), the machine's description and the run's budget.

- time: median of repeats after warm-up (the first call, compilation included, is reported apart);
  CUDA events around each repeat on GPU, ``time.perf_counter`` on CPU; untimed setup between
  repeats (gradients reset, logits that an in-place gradient overwrote restored);
- peak extra memory: the peak of memory allocated during one call above what was allocated before
  it (inputs), gradients included. GPU: ``torch.cuda.max_memory_allocated``. CPU: the torch
  profiler's allocation events (``profile_memory=True``), summed in time order — every tensor
  allocation through torch's CPU allocator, ATen, inductor-generated code and the C++ extension
  alike; scratch memory the extension takes outside torch's allocator (if any) is not seen;
- ceilings: a large ``copy_`` (bytes read + written per second) and a large matmul (flop/s), each
  the best of several repeats;
- check: the largest relative error ``|x - naive| / |naive|`` of a case's checked tensors, passing
  within ``check_rtol`` (derived from the SPEC section 6 table in actfocus_kernels.testing).
"""
from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

from actfocus_kernels.testing import GRAD_RTOL, OUTPUT_RTOL, relative_error

from .case import Case
from .inputs import SizeSet

ROOT = Path(__file__).resolve().parents[1]  # the checkout, whose git commit a run records

# --- timing --------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn``: CUDA events around it on GPU, ``time.perf_counter`` on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def time_case(case: Case, device: torch.device, sizes: SizeSet) -> tuple[list[float], float]:
    """``(repeat times in ms, first call in s)``: warm-up, then repeats until ``min_repeats`` and
    ``target_s`` are both reached, or ``max_repeats``."""
    begin = time.perf_counter()
    case.setup()
    case.run()
    sync(device)
    first_s = time.perf_counter() - begin
    for _ in range(sizes.warmup - 1):
        case.setup()
        case.run()
        sync(device)
    times_ms: list[float] = []
    while len(times_ms) < sizes.max_repeats and (
            len(times_ms) < sizes.min_repeats or sum(times_ms) < 1e3 * sizes.target_s):
        case.setup()
        sync(device)
        times_ms.append(1e3 * timed_call(case.run, device))
    return times_ms, first_s


# --- memory --------------------------------------------------------------------------------------


def _profiled_peak(prof) -> int:
    """Peak of the running sum of CPU allocation events (bytes) recorded by the profiler."""
    from torch._C._profiler import _EventType

    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.typed[0] == _EventType.Allocation and node.typed[1].device.type == "cpu":
            events.append((node.start_time_ns, node.typed[1].alloc_size))
        stack.extend(node.children)
    current = peak = 0
    for _, size in sorted(events):
        current += size
        peak = max(peak, current)
    return peak


def memory_case(case: Case, device: torch.device) -> int:
    """Peak bytes allocated during one call above those allocated before it."""
    case.setup()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        case.run()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        case.run()
    return _profiled_peak(prof)


# --- agreement with naive ------------------------------------------------------------------------


def check_error(checks: dict[str, Tensor], expected: dict[str, Tensor]) -> Optional[float]:
    """The largest relative error of the checked tensors that have an expected value (None: none has)."""
    errors = [relative_error(checks[key], expected[key]) for key in checks if key in expected]
    return max(errors) if errors else None


def check_rtol(dtype: torch.dtype, linear: bool) -> float:
    """Relative error against naive that passes the check. The variant and naive each stay within
    SPEC section 6 of the exact values (per-token outputs and the loss; gradients rounded once to
    ``dtype``), so they agree within twice the larger tolerance; a linear op's naive path also
    rounds its materialised logits to ``dtype``: one rounding more."""
    roundings = 3 if linear and dtype != torch.float32 else 2
    return roundings * max(OUTPUT_RTOL, GRAD_RTOL[dtype])


# --- machine ceilings ----------------------------------------------------------------------------


def best_time_s(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Shortest of ``repeats`` timed calls after one warm-up call: a ceiling is what the device can
    do, so the best repeat is the estimate (the machine may be shared)."""
    fn()
    sync(device)
    return min(timed_call(fn, device) for _ in range(repeats))


def copy_bandwidth(device: torch.device, size: int) -> float:
    """Bytes per second of a ``size``-byte device copy, counting the bytes read and the bytes written."""
    source = torch.randn(size // 4, device=device)
    target = torch.empty_like(source)
    seconds = best_time_s(lambda: target.copy_(source), device, 10)
    return 2 * size / seconds


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """Flop/s of an ``n x n`` by ``n x n`` matrix product on random data."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = best_time_s(lambda: a @ b, device, 10 if device.type == "cuda" else 5)
    return 2 * n**3 / seconds


# --- the machine and the run ---------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB)"
    model = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()}-core CPU, {torch.get_num_threads()} torch threads ({model})"


def git_commit() -> str:
    """The checkout's short commit, with "+changes" when the work tree differs from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + ("+changes" if dirty else "")


class Budget:
    """The wall-clock budget of one run: the time used, whether a job that needs ``reserve_s`` may
    still start, and log lines stamped with the elapsed time."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def used_up(self, reserve_s: float) -> bool:
        return self.elapsed() > self.seconds - reserve_s

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {message}", flush=True)
