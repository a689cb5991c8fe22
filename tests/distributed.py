"""Run a test function on P ranks of a gloo group (torch.multiprocessing, spawn), bounded in time.

``run_ranks(worker, P, *args)`` starts P processes, each joining a gloo group through a file store
in a fresh temporary directory (no port to collide with other runs) and calling
``worker(rank, P, *args)`` with the group's collective timeout set. Each rank reports its traceback
or success through a queue; the parent waits until a deadline, then kills whatever is still running
(no process outlives the call) and fails with every rank's report.

``worker`` must be importable by name in a fresh interpreter (e.g. ``tp_checks.every_check``): the
spawn start method starts each rank with the parent's environment and import path, which pytest's
``pythonpath`` option (pyproject.toml) extends with ``tests/`` and the repository root.
"""
from __future__ import annotations

import datetime
import os
import queue
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT_S = 60


def _rank_main(worker, rank: int, world_size: int, store: str, reports, args) -> None:
    torch.set_num_threads(1)  # P processes share the machine's cores
    report = None
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        worker(rank, world_size, *args)
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent
        report = traceback.format_exc()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        reports.put((rank, report))


def run_ranks(worker, world_size: int, *args, timeout_s: float = 240) -> None:
    """Call ``worker(rank, world_size, *args)`` on every rank of a gloo group; raise AssertionError
    with the failing ranks' tracebacks, or on a timeout or a rank that died without reporting."""
    context = mp.get_context("spawn")
    reports = context.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [context.Process(target=_rank_main, args=(worker, rank, world_size, store, reports, args), daemon=True)
                 for rank in range(world_size)]
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + timeout_s
        results = {}
        try:
            while len(results) < world_size and time.monotonic() < deadline:
                try:
                    rank, report = reports.get(timeout=min(1.0, max(deadline - time.monotonic(), 0.01)))
                    results[rank] = report
                except queue.Empty:
                    if any(p.exitcode not in (None, 0) for p in procs):
                        break
            for proc in procs:
                proc.join(max(deadline - time.monotonic(), 0.1))
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
                    proc.join()
    failures = {rank: report for rank, report in sorted(results.items()) if report is not None}
    missing = [f"rank {r} (exit code {procs[r].exitcode})" for r in range(world_size) if r not in results]
    if failures or missing:
        text = "".join(f"\n--- rank {rank} ---\n{report}" for rank, report in failures.items())
        raise AssertionError(f"distributed run failed; no report from {missing or 'none'} "
                             f"(timeout {timeout_s} s){text}")
