"""One benchmark run: the plan (which op, variant and point, in priority order), measuring each
job with the harness, and the rows and metadata it keeps in ``results_<device>_<sizes>.json``
(rewritten after every measurement, so a run cut short keeps what it measured).

Order: on CPU the SPEC section 7 targets beside their ceilings first (ceilings.py), then main points,
torch.compile at the first main point, linear ops, sweeps, the rest. Work left
when the budget runs out is recorded as skipped; a variant that fails is a row, not the end of
the run.
"""
from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

import actfocus_kernels as ak
from actfocus_kernels import native

from . import harness, peers, registry
from .case import Skip, Variant
from .inputs import SIZES, Inputs, Point, linear_points, main_points, make_inputs, sweep_points
from .registry import OPS
from .report import fmt_error


@dataclass(frozen=True)
class Job:
    op: str
    point: Point
    variant: Variant


class Runner:
    """Measures jobs point by point, keeps the rows and rewrites the JSON after each one."""

    def __init__(self, device: torch.device, sizes_name: str, out: Path, budget_s: float, compile_ok: bool):
        self.device = device
        self.sizes_name = sizes_name
        self.sizes = SIZES[sizes_name]
        self.out = out
        self.budget = harness.Budget(budget_s)
        self.compile_ok = compile_ok
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
            "device_name": harness.device_name(self.device),
            "sizes": self.sizes_name,
            "dtype": str(self.sizes.dtype).replace("torch.", ""),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "actfocus_kernels": ak.__version__,
            "commit": harness.git_commit(),
            "native": native.build_info(),
            "peers": {name: peers.version(name) for name in peers.MODULES},
            "copy_bandwidth_Bps": harness.copy_bandwidth(self.device, self.sizes.copy_bytes),
            "matmul_flops": harness.matmul_rate(self.device, self.sizes.dtype, self.sizes.matmul_n),
            "load_average_start": os.getloadavg()[0],
            "compile": self.compile_ok,
            "budget_s": self.budget.seconds,
            "ops": registry.available_ops(),
        }

    def elapsed(self) -> float:
        return self.budget.elapsed()

    def log(self, message: str) -> None:
        self.budget.log(message)

    def finish(self) -> None:
        """Record the run's duration and closing load, and write the JSON a last time."""
        self.meta["elapsed_s"] = self.elapsed()
        self.meta["load_average_end"] = os.getloadavg()[0]
        self.save()

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
        return self.budget.used_up(job.variant.reserve_s)

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
            inputs = make_inputs(point, self.sizes, self.device)
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

    def measure(self, job: Job, inputs: Inputs) -> None:
        if self.out_of_time(job):
            self._row(job, "skipped", "time budget of this run used up")
            return
        op = OPS[job.op]
        expected_key = (job.op, job.point)
        case = None
        try:
            case = registry.build_case(job.op, job.variant, inputs)
            times_ms, first_s = harness.time_case(case, self.device, self.sizes)
            extra = harness.memory_case(case, self.device)
            checks = case.check()
            if job.variant.family == "naive":
                self.expected[expected_key] = dict(checks)
            expected = dict(self.expected.get(expected_key, {}))
            expected.update(op.expectations(op, inputs))
            error = harness.check_error(checks, expected)
            time_ms = statistics.median(times_ms)
            row = self._row(job, "ok", case.note, time_ms=time_ms, times_ms=times_ms, first_call_s=first_s,
                            extra_bytes=extra, check_error=error,
                            check_ok=error is None or error <= harness.check_rtol(self.sizes.dtype, op.linear))
            self.log(f"{job.op:18s} {job.point.label():28s} {job.variant.name:18s} {time_ms:10.3f} ms "
                     f"{extra / 2**20:10.1f} MiB  check {fmt_error(error)}")
            if not row["check_ok"]:
                self.log(f"  check failed: relative error {error:.2e} against naive")
        except Skip as skip:
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
        logit_ops = [name for name in ops if not OPS[name].linear]
        linear_ops = [name for name in ops if OPS[name].linear]

        def jobs_at(point: Point, names: list[str], want) -> list[Job]:
            return [Job(name, point, variant) for name in names for variant in registry.variants_for(name)
                    if want(OPS[name], variant)]

        main = main_points(self.sizes)
        not_compiled = lambda op, variant: variant.family != "compile"  # noqa: E731
        compiled = lambda op, variant: variant.family == "compile"  # noqa: E731
        swept = lambda op, variant: not op.main_only and not variant.main_only  # noqa: E731
        plan = [(point, jobs_at(point, logit_ops, not_compiled)) for point in main]
        plan += [(point, jobs_at(point, logit_ops, compiled)) for point in main[:1]]
        plan += [(point, jobs_at(point, linear_ops, not_compiled)) for point in linear_points(self.sizes)]
        plan += [(point, jobs_at(point, logit_ops, swept)) for point in sweep_points(self.sizes)]
        plan += [(point, jobs_at(point, logit_ops, compiled)) for point in main[1:]]
        return plan

    def measure_targets(self) -> None:
        """CPU: SPEC section 7's targets beside their ceilings, side by side (benchmarks/ceilings.py)."""
        if self.device.type != "cpu":
            return
        from . import ceilings

        self.meta["cpu_targets"] = ceilings.measure_cpu_targets(self.log)
        self.save()

    def run(self, ops: list[str]) -> None:
        if self.sizes_name == "cpu":  # the targets' sizes (N=1024, V=32000; linear N=512, H=512)
            self.measure_targets()
        for point, jobs in self.plan(ops):
            self.run_point(point, sorted(jobs, key=lambda job: job.variant.family != "naive"))
