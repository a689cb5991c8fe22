"""Vocab-parallel statistics on CPU gloo (SPEC section 8): time and bytes communicated per token of
``token_stats(shard, targets, tp_group=group)`` on P ranks (default 2, one thread each) against the
unsharded op (one process with 1 and with P threads: the same cores) and Megatron's three-all-reduce
vocab-parallel cross entropy (``megatron_vocab_parallel``, plain torch), with and without backward,
plus the collectives alone (ours: one all-gather of ``[1 + N, 3]`` fp32; Megatron: three all-reduces
of ``[N]`` fp32).

Bytes per token are counted from the tensors handed to the collectives during one call
(``payload``: what each rank puts in), and the ring traffic each rank sends follows from it:
an all-gather sends ``(P - 1)`` times its payload, a ring all-reduce ``2 (P - 1) / P`` times.

Run: ``python -m benchmarks.bench_tensor_parallel [--tokens N] [--vocab V] [--ranks P] [--target-s S]``; prints a
Markdown table (pasted into benchmarks/RESULTS.md).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import actfocus_kernels as ak
from actfocus_kernels import compat

from .megatron_vocab_parallel import VocabParallelCrossEntropy

WARMUP, MIN_REPEATS, MAX_REPEATS = 2, 9, 200
JOIN_TIMEOUT_S = 900


@dataclass
class Measured:
    """One row of the table: what ran, how many collectives, bytes per token, median ms."""

    case: str
    collectives: int
    payload_bytes: float  # per token, what each rank puts into the collectives
    ring_bytes: float  # per token, what each rank sends on a ring
    time_ms: float


@contextlib.contextmanager
def counted_bytes(world_size: int):
    """Counts the collectives called inside and the bytes of their inputs (``[calls, payload, ring]``)."""
    totals = [0, 0.0, 0.0]
    originals = {"all_gather_single": compat.all_gather_single, "all_reduce": dist.all_reduce}

    def all_gather_single(output, value, *args, **kwargs):
        size = value.numel() * value.element_size()
        totals[0], totals[1], totals[2] = totals[0] + 1, totals[1] + size, totals[2] + (world_size - 1) * size
        return originals["all_gather_single"](output, value, *args, **kwargs)

    def all_reduce(value, *args, **kwargs):
        size = value.numel() * value.element_size()
        ring = 2 * (world_size - 1) / world_size * size
        totals[0], totals[1], totals[2] = totals[0] + 1, totals[1] + size, totals[2] + ring
        return originals["all_reduce"](value, *args, **kwargs)

    compat.all_gather_single, dist.all_reduce = all_gather_single, all_reduce
    try:
        yield totals
    finally:
        compat.all_gather_single, dist.all_reduce = originals["all_gather_single"], originals["all_reduce"]


def median_ms(fn: Callable[[], object], setup: Callable[[], None], group_wide: bool, target_s: float) -> float:
    """Median over repeats (after ``WARMUP``; at least ``MIN_REPEATS`` and ``target_s`` of timed
    calls, at most ``MAX_REPEATS``) of the slowest rank's time (``group_wide``, every rank stops
    together), or this process's alone."""
    times: list[float] = []
    for repeat in range(WARMUP + MAX_REPEATS):
        if repeat >= WARMUP + MIN_REPEATS and sum(times) >= 1e3 * target_s:
            break
        setup()
        if group_wide:
            dist.barrier()
        begin = time.perf_counter()
        fn()
        elapsed = torch.tensor(time.perf_counter() - begin, dtype=torch.float64)
        if group_wide:
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        if repeat >= WARMUP:
            times.append(1e3 * float(elapsed))
    return statistics.median(times)


def _measure(name: str, fn: Callable[[], object], setup: Callable[[], None], tokens: int, world_size: int,
             target_s: float, group_wide: bool = True) -> Measured:
    with counted_bytes(world_size) as totals:
        setup()
        fn()
    time_ms = median_ms(fn, setup, group_wide, target_s)
    return Measured(name, totals[0], totals[1] / tokens, totals[2] / tokens, time_ms)


def batch(tokens: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same fp32 logits ``[N, V]`` and targets on every process."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(tokens, vocab, generator=g) * 2, torch.randint(0, vocab, (tokens,), generator=g)


def unsharded_cases(tokens: int, vocab: int, threads: int, target_s: float) -> list[Measured]:
    """The unsharded op in this process with ``threads`` threads (no other process running)."""
    torch.set_num_threads(threads)
    logits, targets = batch(tokens, vocab)
    full = logits.clone().requires_grad_(True)

    def backward() -> None:
        (-ak.token_stats(full, targets).logp).sum().backward()

    def clear() -> None:
        full.grad = None

    where = f"1 process, {threads} thread{'s' if threads > 1 else ''}"
    return [_measure(f"stats, unsharded ({where})", torch.no_grad()(lambda: ak.token_stats(logits, targets)),
                     lambda: None, tokens, threads, target_s, group_wide=False),
            _measure(f"stats fwd+bwd, unsharded ({where})", backward, clear, tokens, threads, target_s,
                     group_wide=False)]


def rank_cases(rank: int, world_size: int, tokens: int, vocab: int, target_s: float) -> list[Measured]:
    """Every vocab-parallel case on this rank (the times are the slowest rank's)."""
    logits, targets = batch(tokens, vocab)
    local = vocab // world_size
    start = rank * local
    shard = logits[:, start:start + local].contiguous()
    group = dist.group.WORLD
    grad_shard = shard.clone().requires_grad_(True)

    def clear_grad() -> None:
        grad_shard.grad = None

    def nothing() -> None:
        return None

    def ours_backward() -> None:
        (-ak.token_stats(grad_shard, targets, tp_group=group).logp).sum().backward()

    def megatron_backward() -> None:
        VocabParallelCrossEntropy.apply(grad_shard, targets, start, group).sum().backward()

    states = torch.zeros(tokens + 1, 3)
    gathered = states.new_empty((world_size * (tokens + 1), 3))
    per_token = torch.zeros(tokens)

    def ours_collective() -> None:
        compat.all_gather_single(gathered, states, group=group)

    def megatron_collectives() -> None:
        dist.all_reduce(per_token, op=dist.ReduceOp.MAX, group=group)
        dist.all_reduce(per_token, group=group)
        dist.all_reduce(per_token, group=group)

    return [
        _measure("stats, vocab-parallel (ours)", torch.no_grad()(lambda: ak.token_stats(shard, targets,
                                                                                       tp_group=group)),
                 nothing, tokens, world_size, target_s),
        _measure("logp + lse, Megatron CE scheme (torch)",
                 torch.no_grad()(lambda: VocabParallelCrossEntropy.apply(shard, targets, start, group)),
                 nothing, tokens, world_size, target_s),
        _measure("stats fwd+bwd, vocab-parallel (ours)", ours_backward, clear_grad, tokens, world_size, target_s),
        _measure("CE fwd+bwd, Megatron CE scheme (torch)", megatron_backward, clear_grad, tokens, world_size, target_s),
        _measure("collective only: ours (1 all-gather)", ours_collective, nothing, tokens, world_size, target_s),
        _measure("collectives only: Megatron (3 all-reduces)", megatron_collectives, nothing, tokens, world_size,
                 target_s),
    ]


def table(rows: list[Measured], tokens: int, vocab: int, world_size: int, load: str) -> str:
    lines = [f"N={tokens} tokens, V={vocab} (V/P={vocab // world_size} per rank), float32 logits, P={world_size} "
             f"gloo ranks with 1 thread each; 1-minute load average {load}", "",
             "| case | collectives | payload B/token/rank | ring B/token sent/rank | time ms |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row.case} | {row.collectives} | {row.payload_bytes:.2f} | {row.ring_bytes:.2f} | "
                     f"{row.time_ms:.2f} |")
    return "\n".join(lines)


def _rank_main(rank: int, world_size: int, tmp: str, tokens: int, vocab: int, target_s: float) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp, 'store')}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=300))
    try:
        rows = rank_cases(rank, world_size, tokens, vocab, target_s)
        if rank == 0:
            with open(os.path.join(tmp, "rows.json"), "w") as out:
                json.dump([dataclasses.asdict(row) for row in rows], out)
    finally:
        dist.destroy_process_group()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--target-s", type=float, default=1.0, help="timed seconds per case at least")
    args = parser.parse_args(argv)
    if args.vocab % args.ranks:
        parser.error(f"--vocab {args.vocab} is not divisible by --ranks {args.ranks}")
    load_before = os.getloadavg()[0]
    rows = [row for threads in sorted({1, args.ranks})
            for row in unsharded_cases(args.tokens, args.vocab, threads, args.target_s)]
    with tempfile.TemporaryDirectory() as tmp:
        context = mp.start_processes(_rank_main, args=(args.ranks, tmp, args.tokens, args.vocab, args.target_s),
                                     nprocs=args.ranks, join=False, start_method="spawn")
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
            if time.monotonic() >= deadline:
                for proc in context.processes:
                    proc.kill()
                print(f"bench_tensor_parallel: timed out after {JOIN_TIMEOUT_S} s", file=sys.stderr)
                return 1
        with open(os.path.join(tmp, "rows.json")) as saved:
            rows += [Measured(**row) for row in json.load(saved)]
    print(table(rows, args.tokens, args.vocab, args.ranks, f"{load_before:.1f} at the start, "
                f"{os.getloadavg()[0]:.1f} at the end"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
