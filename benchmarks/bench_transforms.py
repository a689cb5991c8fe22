"""Cost of the logit transforms and the extra statistics in the native CPU kernels, as ratios to the
plain pass, measured in one run (issue 23: transforms <= 1.15x, extras <= 1.2x).

Calls ``torch.ops.actfocus_native.*`` directly on ``[N, V]`` logits: ``token_stats`` (one read) and the
in-place fused loss (``policy_loss`` with ``dlogits = logits``: one read, one write). The options are
timed interleaved, one call each per round, and each option's median over the rounds is reported, so
that a machine shared with other work slows every option alike.

    python -m benchmarks.bench_transforms [--rows 256] [--vocab 151936] [--rounds 15]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from actfocus_kernels import native

IGNORE = -100
# name: (logit_scale, softcap, extra_stats)
OPTIONS = {
    "plain": (1.0, 0.0, False),
    "logit_scale": (0.5, 0.0, False),
    "softcap": (1.0, 30.0, False),
    "scale+softcap": (0.5, 30.0, False),
    "extras": (1.0, 0.0, True),
    "softcap+extras": (1.0, 30.0, True),
}


def token_stats_call(logits: torch.Tensor, targets: torch.Tensor, option) -> Callable[[], object]:
    logit_scale, softcap, extra_stats = option
    return lambda: torch.ops.actfocus_native.token_stats(logits, targets, 1.0, IGNORE, logit_scale, softcap,
                                                         extra_stats)


def inplace_loss_call(source: torch.Tensor, buffer: torch.Tensor, targets: torch.Tensor, option):
    """The in-place loss on buffer, refilled from source before each call (the copy is not timed)."""
    logit_scale, softcap, _ = option
    n = source.shape[0]
    inputs = dict(targets=targets, old_logp=None, advantages=torch.randn(n), ref_logp=None, weights=torch.ones(n),
                  scale=torch.full((n,), 1.0 / n), temperature=1.0, logit_scale=logit_scale, softcap=softcap,
                  clip_low=0.2, clip_high=0.2, dual_clip=0.0, kl_coef=0.0, kl_type=3, entropy_coef=0.01,
                  ignore_index=IGNORE)

    def prepare():
        buffer.copy_(source)

    def call():
        torch.ops.actfocus_native.policy_loss(buffer, **inputs, dlogits=buffer)

    return prepare, call


def median_times(cases: dict[str, tuple[Callable[[], None], Callable[[], object]]], rounds: int) -> dict[str, float]:
    """Each case's median seconds over ``rounds`` interleaved rounds (one untimed warm-up round)."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_index in range(rounds + 1):
        for name, (prepare, call) in cases.items():
            prepare()
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            if round_index > 0:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def run(rows: int, vocab: int, rounds: int) -> None:
    print(f"actfocus_native CPU kernels ({native.build_info()['cpu_capability']}), {torch.get_num_threads()} threads, "
          f"N={rows} V={vocab}, median of {rounds} interleaved rounds")
    nothing = lambda: None  # noqa: E731
    for dtype in (torch.bfloat16, torch.float32):
        g = torch.Generator().manual_seed(0)
        logits = (torch.randn(rows, vocab, generator=g) * 3).to(dtype)
        targets = torch.randint(0, vocab, (rows,), generator=g)
        buffer = torch.empty_like(logits)
        cases = {f"token_stats {name}": (nothing, token_stats_call(logits, targets, option))
                 for name, option in OPTIONS.items()}
        cases |= {f"inplace loss {name}": inplace_loss_call(logits, buffer, targets, option)
                  for name, option in OPTIONS.items() if not option[2]}
        times = median_times(cases, rounds)
        print(f"\n{dtype} logits ({logits.numel() * logits.element_size() / 2**20:.0f} MiB)")
        for name, seconds in times.items():
            plain = times[name.rsplit(" ", 1)[0] + " plain"]
            print(f"  {name:34s} {seconds * 1e3:8.2f} ms  {seconds / plain:5.2f}x plain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    run(args.rows, args.vocab, args.rounds)


if __name__ == "__main__":
    main()
