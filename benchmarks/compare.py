"""One command for the comparison tables: ``python -m benchmarks.compare --device cpu|cuda``.

For each op (benchmarks/cases.py) and each variant that can run here — naive torch, torch.compile
of it, our backends, peers — at the size set's main points and across a vocabulary sweep and a
token sweep, it measures:

- time: median of repeats after warm-up (the first call, compilation included, is reported apart);
  CUDA events around each repeat on GPU, ``time.perf_counter`` on CPU; untimed setup between
  repeats (gradients reset, logits that an in-place gradient overwrote restored);
- peak extra memory: the peak of memory allocated during one call above what was allocated before
  it (inputs), gradients included. GPU: ``torch.cuda.max_memory_allocated``. CPU: the torch
  profiler's allocation events (``profile_memory=True``), summed in time order — every tensor
  allocation through torch's CPU allocator, ATen, inductor-generated code and the C++ extension
  alike; scratch memory the extension takes outside torch's allocator (if any) is not seen;
- effective bandwidth: the op's minimal bytes (``cases.Op.bytes_moved``) over the time, and its
  share of the device-copy bandwidth measured in the same run (a large ``copy_``, read + write);
  linear ops: matrix-product TFLOP/s and the share of a large matmul measured in the same run
  (both ceilings: the best of several repeats);
- speed-up vs naive and vs the best peer at the same size, and ``check``: the relative error
  ``|x - naive| / |naive|`` of the variant's loss, gradient rows and per-token outputs (peers,
  whose loss differs, are checked against the same loss written in torch on fp32 log-probs).

It prints one table per op and size, the sweep tables and the SPEC section 7 targets; writes
``results_<device>_<sizes>.json`` (rewritten after every measurement, so a run cut short keeps
what it measured), ``results_<device>_<sizes>.md`` and ``<op>_<device>_<sizes>.png`` (time and
memory against vocabulary size and token count) into ``--out`` (default benchmarks/out/).
A wall-clock budget (``--budget-s``) keeps the run bounded: work left when it runs out is listed as
skipped. Order: main points, torch.compile at the first main point, linear ops, sweeps, the rest.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

import actfocus_kernels as ak
from actfocus_kernels import native

from . import cases, peers
from .cases import OPS, SIZES, Point

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
# relative error against naive that passes the check: fp32 math agrees to rounding; with bf16 logits
# the gradients are rounded to bf16 (SPEC section 6: 1e-2), and linear ops also round the naive
# path's materialised bf16 logits
CHECK_TOLERANCE = {(torch.float32, False): 1e-4, (torch.float32, True): 1e-4,
                   (torch.bfloat16, False): 2e-2, (torch.bfloat16, True): 5e-2}


# --- device ceilings ---------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time_s(fn, device: torch.device, repeats: int) -> float:
    """Shortest of ``repeats`` timed calls after one warm-up call: a ceiling is what the device can
    do, so the best repeat is the estimate (the machine may be shared)."""
    fn()
    sync(device)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - begin)
    return min(samples)


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
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + ("+changes" if dirty else "")


# --- measuring one case ------------------------------------------------------------------------


def time_case(case: cases.Case, device: torch.device, sizes: cases.SizeSet) -> tuple[list[float], float]:
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
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            case.run()
            end.record()
            end.synchronize()
            times_ms.append(start.elapsed_time(end))
        else:
            tick = time.perf_counter()
            case.run()
            times_ms.append(1e3 * (time.perf_counter() - tick))
    return times_ms, first_s


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


def memory_case(case: cases.Case, device: torch.device) -> int:
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


def relative_error(checks: dict, expected: dict) -> Optional[float]:
    keys = [key for key in checks if key in expected]
    if not keys:
        return None
    errors = []
    for key in keys:
        value, reference = checks[key].double(), expected[key].double()
        errors.append(float((value - reference).norm() / reference.norm().clamp(min=1e-30)))
    return max(errors)


# --- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    op: str
    point: Point
    variant: cases.Variant


class Runner:
    """Measures jobs point by point, keeps the rows and rewrites the JSON after each one."""

    def __init__(self, device: torch.device, sizes_name: str, out: Path, budget_s: float, compile_ok: bool):
        self.device = device
        self.sizes_name = sizes_name
        self.sizes = SIZES[sizes_name]
        self.out = out
        self.budget_s = budget_s
        self.compile_ok = compile_ok
        self.start = time.monotonic()
        self.rows: dict[tuple, dict] = {}
        self.expected: dict[tuple, dict] = {}  # (op, point) -> checks of the naive run (+ peer values)
        self.meta = self._meta()
        out.mkdir(parents=True, exist_ok=True)
        self.json_path = out / f"results_{device.type}_{sizes_name}.json"

    def _meta(self) -> dict:
        import triton

        self.log("measuring the device-copy bandwidth and the matmul rate ...")
        return {
            "device": self.device.type,
            "device_name": device_name(self.device),
            "sizes": self.sizes_name,
            "dtype": str(self.sizes.dtype).replace("torch.", ""),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "actfocus_kernels": ak.__version__,
            "commit": git_commit(),
            "native": native.build_info(),
            "peers": {name: peers.version(name) for name in ("liger-kernel", "cut-cross-entropy")},
            "copy_bandwidth_Bps": copy_bandwidth(self.device, self.sizes.copy_bytes),
            "matmul_flops": matmul_rate(self.device, self.sizes.dtype, self.sizes.matmul_n),
            "load_average_start": os.getloadavg()[0],
            "compile": self.compile_ok,
            "budget_s": self.budget_s,
            "ops": cases.available_ops(),
        }

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {message}", flush=True)

    def key(self, job: Job) -> tuple:
        return (job.op, job.point.tokens, job.point.vocab, job.point.hidden, job.variant.name)

    def _row(self, job: Job, status: str, reason: str = "", **values) -> dict:
        op = OPS[job.op]
        row = {
            "op": job.op, "variant": job.variant.name, "family": job.variant.family,
            "tokens": job.point.tokens, "vocab": job.point.vocab, "hidden": job.point.hidden,
            "dtype": self.meta["dtype"], "status": status, "reason": reason,
            "bytes": op.bytes_moved(job.point, self.sizes.dtype), "flops": op.flops(job.point),
        }
        row.update(values)
        self.rows[self.key(job)] = row
        self.save()
        return row

    def save(self) -> None:
        payload = {"meta": self.meta, "rows": list(self.rows.values())}
        temporary = self.json_path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(payload, indent=1))
        temporary.replace(self.json_path)

    def out_of_time(self, job: Job) -> bool:
        return self.elapsed() > self.budget_s - job.variant.reserve_s

    def run_point(self, point: Point, jobs: list[Job]) -> None:
        """Measure ``jobs`` (all at ``point``) on one set of inputs."""
        pending = [job for job in jobs if self.key(job) not in self.rows]
        for job in pending:
            if self.out_of_time(job):
                self._row(job, "skipped", "time budget of this run used up")
            elif not self.compile_ok and job.variant.family == "compile":
                self._row(job, "skipped", "--no-compile")
        pending = [job for job in pending if self.key(job) not in self.rows]
        if not pending:
            return
        inputs = None
        try:
            inputs = cases.make_inputs(point, self.sizes, self.device)
            for job in pending:
                self.measure(job, inputs)
        except Exception as error:  # the inputs could not be made: every job at this point fails alike
            status = "oom" if isinstance(error, torch.OutOfMemoryError) else "error"
            self.log(f"inputs at {point.label()}: {type(error).__name__}: {error}")
            for job in pending:
                if self.key(job) not in self.rows:
                    self._row(job, status, f"making the inputs: {type(error).__name__}: {str(error)[:200]}")
        finally:
            del inputs
            self.release()

    def release(self) -> None:
        """Free what the last case left (a failed CUDA context makes this raise: logged, not fatal)."""
        try:
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as error:
            self.log(f"releasing memory failed: {type(error).__name__}: {error}")

    def measure(self, job: Job, inputs: cases.Inputs) -> None:
        if self.out_of_time(job):
            self._row(job, "skipped", "time budget of this run used up")
            return
        expected_key = (job.op, job.point)
        case = None
        try:
            case = cases.build_case(job.op, job.variant, inputs)
            times_ms, first_s = time_case(case, self.device, self.sizes)
            extra = memory_case(case, self.device)
            checks = case.check()
            if job.variant.family == "naive":
                self.expected[expected_key] = dict(checks)
            expected = dict(self.expected.get(expected_key, {}))
            expected.update(cases.peer_expectations(OPS[job.op], inputs))
            error = relative_error(checks, expected)
            time_ms = statistics.median(times_ms)
            row = self._row(job, "ok", case.note, time_ms=time_ms, times_ms=times_ms, first_call_s=first_s,
                            extra_bytes=extra, check_error=error,
                            check_ok=error is None or error <= CHECK_TOLERANCE[self.sizes.dtype, OPS[job.op].linear])
            self.log(f"{job.op:18s} {job.point.label():28s} {job.variant.name:18s} {time_ms:10.3f} ms "
                     f"{extra / 2**20:10.1f} MiB  check {_fmt_error(error)}")
            if not row["check_ok"]:
                self.log(f"  check failed: relative error {error:.2e} against naive")
        except cases.Skip as skip:
            self._row(job, "skipped", str(skip))
        except torch.OutOfMemoryError as oom:
            self._row(job, "oom", str(oom).splitlines()[0][:160])
            self.log(f"{job.op} {job.point.label()} {job.variant.name}: out of memory")
        except Exception as error:  # a failing variant is a row, not the end of the run
            self._row(job, "error", f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}")
            self.log(f"{job.op} {job.point.label()} {job.variant.name}: {type(error).__name__}: {error}")
        finally:
            if case is not None:
                try:
                    case.teardown()
                except Exception as error:
                    self.log(f"teardown of {job.variant.name} failed: {error}")
            del case
            inputs.zero_grads()
            self.release()

    def plan(self, ops: list[str]) -> list[tuple[Point, list[Job]]]:
        """``(point, jobs)`` in priority order (see the module docstring)."""
        sizes = self.sizes
        logit_ops = [name for name in ops if not OPS[name].linear]
        linear_ops = [name for name in ops if OPS[name].linear]

        def jobs_at(point: Point, names: list[str], want) -> list[Job]:
            return [Job(name, point, variant) for name in names for variant in cases.variants_for(name)
                    if want(OPS[name], variant)]

        main = [Point(tokens, vocab) for tokens, vocab in sizes.main]
        not_compiled = lambda op, variant: variant.family != "compile"  # noqa: E731
        compiled = lambda op, variant: variant.family == "compile"  # noqa: E731
        swept = lambda op, variant: not op.main_only and not variant.main_only  # noqa: E731
        plan = [(point, jobs_at(point, logit_ops, not_compiled)) for point in main]
        plan += [(point, jobs_at(point, logit_ops, compiled)) for point in main[:1]]
        plan += [(point, jobs_at(point, linear_ops, not_compiled))
                 for point in (Point(tokens, vocab, hidden) for tokens, hidden, vocab in sizes.linear)]
        sweep_tokens, vocabs = sizes.vocab_sweep
        sweep_vocab, token_counts = sizes.token_sweep
        sweep_points = [Point(sweep_tokens, vocab) for vocab in vocabs] + [Point(n, sweep_vocab) for n in token_counts]
        plan += [(point, jobs_at(point, logit_ops, swept)) for point in dict.fromkeys(sweep_points)]
        plan += [(point, jobs_at(point, logit_ops, compiled)) for point in main[1:]]
        return plan

    def run(self, ops: list[str]) -> None:
        for point, jobs in self.plan(ops):
            self.run_point(point, sorted(jobs, key=lambda job: job.variant.family != "naive"))


# --- reporting ---------------------------------------------------------------------------------


def _fmt_error(error: Optional[float]) -> str:
    return "—" if error is None else f"{error:.1e}"


def _fmt_time(ms: float) -> str:
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _fmt_amount(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def _fmt_ratio(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _mem_unit(device: str) -> tuple[str, float]:
    return ("GiB", 2.0**30) if device == "cuda" else ("MiB", 2.0**20)


def enrich(rows: list[dict], meta: dict) -> None:
    """Add bandwidth, shares of the measured ceilings and speed-ups to the ok rows."""
    by_point: dict[tuple, list[dict]] = {}
    for row in rows:
        by_point.setdefault((row["op"], row["tokens"], row["vocab"], row["hidden"]), []).append(row)
    for group in by_point.values():
        ok = [row for row in group if row["status"] == "ok"]
        naive_ms = next((row["time_ms"] for row in ok if row["family"] == "naive"), None)
        peer_ms = min((row["time_ms"] for row in ok if row["family"] == "peer"), default=None)
        for row in ok:
            seconds = row["time_ms"] / 1e3
            row["GBps"] = row["bytes"] / seconds / 1e9
            row["copy_share"] = row["bytes"] / seconds / meta["copy_bandwidth_Bps"]
            if row["flops"]:
                row["TFLOPs"] = row["flops"] / seconds / 1e12
                row["matmul_share"] = row["flops"] / seconds / meta["matmul_flops"]
            row["speedup_vs_naive"] = naive_ms / row["time_ms"] if naive_ms else None
            row["speedup_vs_best_peer"] = peer_ms / row["time_ms"] if peer_ms else None


def _status_text(row: dict) -> str:
    return {"skipped": "skipped", "oom": "out of memory", "error": "error"}[row["status"]] + (
        f": {row['reason']}" if row["reason"] else "")


def main_table(rows: list[dict], op_name: str, point: tuple, meta: dict) -> list[str]:
    unit, scale = _mem_unit(meta["device"])
    op = OPS[op_name]
    selected = [row for row in rows if row["op"] == op_name and (row["tokens"], row["vocab"], row["hidden"]) == point]
    if not selected:
        return []
    tokens, vocab, hidden = point
    label = Point(tokens, vocab, hidden).label()
    lines = [f"### {op.title} — {label}, {meta['dtype']}", ""]
    if op.linear:
        lines += [f"| variant | time ms | extra {unit} | TFLOP/s | % matmul | vs naive | vs best peer | check | note |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    else:
        lines += [f"| variant | time ms | extra {unit} | GB/s | % copy | vs naive | vs best peer | check | note |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    order = {variant.name: index for index, variant in enumerate(cases.VARIANTS)}
    for row in sorted(selected, key=lambda row: order[row["variant"]]):
        if row["status"] != "ok":
            lines.append(f"| {row['variant']} | | | | | | | | {_status_text(row)} |")
            continue
        rate = f"{_fmt_amount(row['TFLOPs'])} | {100 * row['matmul_share']:.0f}%" if op.linear else \
            f"{_fmt_amount(row['GBps'])} | {100 * row['copy_share']:.0f}%"
        check = _fmt_error(row["check_error"]) + ("" if row["check_ok"] else " ✗")
        note = row["reason"]
        if row["family"] == "compile":
            note = (note + "; " if note else "") + f"first call {row['first_call_s']:.1f} s"
        lines.append(f"| {row['variant']} | {_fmt_time(row['time_ms'])} | {_fmt_amount(row['extra_bytes'] / scale)} | "
                     f"{rate} | "
                     f"{_fmt_ratio(row['speedup_vs_naive'])} | {_fmt_ratio(row['speedup_vs_best_peer'])} | "
                     f"{check} | {note} |")
    return lines + [""]


def sweep_table(rows: list[dict], op_name: str, axis: str, fixed: int, values: tuple, meta: dict) -> list[str]:
    unit, scale = _mem_unit(meta["device"])
    fixed_key, axis_key = ("tokens", "vocab") if axis == "vocab" else ("vocab", "tokens")
    selected = [row for row in rows if row["op"] == op_name and row["hidden"] == 0 and row[fixed_key] == fixed
                and row[axis_key] in values and row["status"] == "ok"]
    if not selected:
        return []
    variants = [variant.name for variant in cases.VARIANTS
                if sum(row["variant"] == variant.name for row in selected) >= 2]
    if not variants:
        return []
    fixed_label = f"N={fixed}" if axis == "vocab" else f"V={fixed}"
    axis_label = "V" if axis == "vocab" else "N"
    lines = [f"#### {op_name}: time ms (extra {unit}) against {axis_label}, {fixed_label}", "",
             "| variant | " + " | ".join(f"{axis_label}={value}" for value in values) + " |",
             "|---|" + "---:|" * len(values)]
    for name in variants:
        cells = []
        for value in values:
            row = next((row for row in selected if row["variant"] == name and row[axis_key] == value), None)
            cells.append("" if row is None else
                         f"{_fmt_time(row['time_ms'])} ({_fmt_amount(row['extra_bytes'] / scale)})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def _find(rows: list[dict], op: str, tokens: int, vocab: int, variant: str) -> Optional[dict]:
    return next((row for row in rows if row["op"] == op and row["tokens"] == tokens and row["vocab"] == vocab
                 and row["variant"] == variant and row["status"] == "ok"), None)


def targets(rows: list[dict], meta: dict) -> list[str]:
    """SPEC section 7's targets, wherever this run has the rows they need."""
    lines = []
    if meta["device"] == "cpu":
        naive_row = _find(rows, "policy_loss", 1024, 32000, "naive")
        for variant in ("cpu", "cpu inplace"):
            ours = _find(rows, "policy_loss", 1024, 32000, variant)
            if naive_row and ours and meta["dtype"] == "float32":
                speedup = naive_row["time_ms"] / ours["time_ms"]
                memory = ours["extra_bytes"] / max(naive_row["extra_bytes"], 1)
                lines.append(f"- policy loss fwd+bwd, N=1024, V=32000 fp32, `{variant}` vs eager naive: "
                             f"**{speedup:.1f}×** faster (target ≥ 4×: {'met' if speedup >= 4 else 'NOT met'}); "
                             f"extra memory {100 * memory:.1f}% of naive (target ≤ 10%: "
                             f"{'met' if memory <= 0.10 else 'NOT met'})")
        return lines
    vocab = 151936
    ours_loss = [row for row in (_find(rows, "policy_loss", 16384, vocab, name) for name in
                                 ("cuda", "cuda inplace", "triton", "triton inplace")) if row]
    liger = [row for row in (_find(rows, "policy_loss", 16384, vocab, name) for name in ("liger", "liger inplace"))
             if row]
    if ours_loss and liger:
        best, peer = min(ours_loss, key=lambda r: r["time_ms"]), min(liger, key=lambda r: r["time_ms"])
        ratio = best["time_ms"] / peer["time_ms"]
        lines.append(f"- policy loss fwd+bwd, N=16384, V={vocab} bf16: best ours (`{best['variant']}`, "
                     f"{best['time_ms']:.2f} ms) = **{ratio:.2f}×** Liger `{peer['variant']}` "
                     f"({peer['time_ms']:.2f} ms); target ≤ 0.7×: {'met' if ratio <= 0.7 else 'NOT met'}")
    for name in ("cuda inplace", "triton inplace"):
        row = _find(rows, "policy_loss", 16384, vocab, name)
        if row:
            lines.append(f"- `{name}` extra memory: {row['extra_bytes'] / 2**30:.3f} GiB (target ≈ 0)")
    stats = [row for row in (_find(rows, "token_stats", 16384, vocab, name) for name in ("cuda", "triton")) if row]
    liger_logp = _find(rows, "token_stats", 16384, vocab, "liger logp")
    if stats:
        best = min(stats, key=lambda r: r["time_ms"])
        share = best["bytes"] / (best["time_ms"] / 1e3) / meta["copy_bandwidth_Bps"]
        versus = f" = {best['time_ms'] / liger_logp['time_ms']:.2f}× Liger logp (target ≤ 1.0×)" if liger_logp else ""
        lines.append(f"- token stats, N=16384, V={vocab}: best ours (`{best['variant']}`) {best['time_ms']:.3f} ms"
                     f"{versus}, **{100 * share:.0f}%** of copy bandwidth (target ≥ 90%)")
    linear_naive = next((row for row in rows if row["op"] == "linear_policy_loss" and row["variant"] == "naive"
                         and row["status"] == "ok"), None)
    linear_ours = [row for row in rows if row["op"] == "linear_policy_loss" and row["family"] == "ours"
                   and row["status"] == "ok"]
    if linear_naive and linear_ours:
        best = min(linear_ours, key=lambda r: r["time_ms"])
        ratio = best["time_ms"] / linear_naive["time_ms"]
        lines.append(f"- linear policy loss fwd+bwd: best ours (`{best['variant']}`) = **{ratio:.2f}×** naive "
                     f"time (target ≤ 0.8×: {'met' if ratio <= 0.8 else 'NOT met'})")
    return lines


def report(rows: list[dict], meta: dict) -> str:
    sizes = SIZES[meta["sizes"]]
    unit, _ = _mem_unit(meta["device"])
    lines = [f"## {meta['device_name']} — sizes `{meta['sizes']}`, {meta['dtype']}", "",
             f"{meta['date']}; Python {meta['python']}, torch {meta['torch']}, triton {meta['triton']}, "
             f"actfocus_kernels {meta['actfocus_kernels']} (native backends: "
             f"{', '.join(meta['native']['backends']) or 'none'}); peers: "
             + ", ".join(f"{name} {version or 'not importable'}" for name, version in meta["peers"].items()) + ".",
             f"Measured in this run: device copy {meta['copy_bandwidth_Bps'] / 1e9:.1f} GB/s (read + write), "
             f"{meta['dtype']} matmul {meta['matmul_flops'] / 1e12:.3g} TFLOP/s. Commit {meta['commit']}. "
             f"1-minute load average {meta['load_average_start']:.1f} at the start, "
             f"{meta['load_average_end']:.1f} at the end ({meta['elapsed_s']:.0f} s).", "",
             f"Time: median of repeats after warm-up. Extra {unit}: peak allocated during one call above the "
             "inputs, gradients included. GB/s: the op's minimal bytes (logits read once, gradient written once) "
             "over the time. check: relative error against naive (peers: against the same loss in torch).", ""]
    ops = [name for name in OPS if any(row["op"] == name for row in rows)]
    points = list(dict.fromkeys((row["tokens"], row["vocab"], row["hidden"]) for row in rows))
    main_points = [(tokens, vocab, 0) for tokens, vocab in sizes.main] + \
        [(tokens, vocab, hidden) for tokens, hidden, vocab in sizes.linear]
    for op_name in ops:
        for point in main_points:
            if point in points:
                lines += main_table(rows, op_name, point, meta)
    for op_name in [name for name in ops if not OPS[name].main_only]:
        lines += sweep_table(rows, op_name, "vocab", sizes.vocab_sweep[0], sizes.vocab_sweep[1], meta)
        lines += sweep_table(rows, op_name, "tokens", sizes.token_sweep[0], sizes.token_sweep[1], meta)
    target_lines = targets(rows, meta)
    if target_lines:
        lines += ["### SPEC section 7 targets", ""] + target_lines + [""]
    lines += ["Variants:", ""] + [f"- `{variant.name}`: {variant.about}" for variant in cases.VARIANTS] + [""]
    return "\n".join(lines)


def plot(rows: list[dict], meta: dict, out: Path) -> list[Path]:
    """One PNG per op with sweeps: time and memory against V (fixed N) and against N (fixed V)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = SIZES[meta["sizes"]]
    unit, scale = _mem_unit(meta["device"])
    written = []
    for op_name in [name for name in OPS if not OPS[name].linear and not OPS[name].main_only]:
        sweeps = (("vocab", "tokens", sizes.vocab_sweep), ("tokens", "vocab", sizes.token_sweep))
        figure, axes = plt.subplots(2, 2, figsize=(11, 8))
        drawn = False
        for column, (axis_key, fixed_key, (fixed, values)) in enumerate(sweeps):
            for variant in cases.VARIANTS:
                points = sorted((row[axis_key], row["time_ms"], row["extra_bytes"] / scale) for row in rows
                                if row["op"] == op_name and row["variant"] == variant.name and row["status"] == "ok"
                                and row["hidden"] == 0 and row[fixed_key] == fixed and row[axis_key] in values)
                if len(points) < 2:
                    continue
                drawn = True
                xs = [p[0] for p in points]
                axes[0][column].plot(xs, [p[1] for p in points], marker="o", label=variant.name)
                axes[1][column].plot(xs, [max(p[2], 1e-3) for p in points], marker="o", label=variant.name)
            axis_label = "vocabulary size V" if axis_key == "vocab" else "tokens N"
            fixed_label = f"N={fixed}" if axis_key == "vocab" else f"V={fixed}"
            for row_index, quantity in enumerate(("time (ms)", f"peak extra memory ({unit})")):
                axis = axes[row_index][column]
                axis.set_xscale("log")
                axis.set_yscale("log")
                axis.set_xlabel(f"{axis_label} ({fixed_label})")
                axis.set_ylabel(quantity)
                axis.grid(True, which="both", alpha=0.3)
        if not drawn:
            plt.close(figure)
            continue
        axes[0][0].legend(fontsize=8)
        figure.suptitle(f"{OPS[op_name].title}\n{meta['device_name']}, {meta['dtype']}", fontsize=10)
        figure.tight_layout()
        path = out / f"{op_name}_{meta['device']}_{meta['sizes']}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", choices=tuple(SIZES), default=None,
                        help="size set (default: cpu on --device cpu, gpu on --device cuda)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default benchmarks/out/)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock budget in seconds (default: the size set's)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--ops", default=None, help="comma-separated subset of " + ",".join(OPS))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    sizes_name = args.sizes or ("gpu" if args.device == "cuda" else "cpu")
    ops = cases.available_ops()
    if args.ops:
        unknown = set(args.ops.split(",")) - set(OPS)
        if unknown:
            parser.error(f"unknown ops: {sorted(unknown)}")
        ops = [name for name in ops if name in args.ops.split(",")]
    device = torch.device(args.device)
    runner = Runner(device, sizes_name, args.out, args.budget_s or SIZES[sizes_name].budget_s, not args.no_compile)
    runner.run(ops)
    rows = list(runner.rows.values())
    enrich(rows, runner.meta)
    runner.meta["elapsed_s"] = runner.elapsed()
    runner.meta["load_average_end"] = os.getloadavg()[0]
    runner.save()
    text = report(rows, runner.meta)
    (args.out / f"results_{device.type}_{sizes_name}.md").write_text(text)
    written = plot(rows, runner.meta, args.out)
    print()
    print(text)
    print(f"wrote {runner.json_path}, {args.out / f'results_{device.type}_{sizes_name}.md'}"
          + "".join(f", {path}" for path in written) + f" in {runner.elapsed():.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
