"""Cost of the logit transforms and the extra statistics, as ratios to the plain pass, measured in one
run (issue 23: transforms <= 1.15x, extras <= 1.2x), on the CPU or a GPU.

Calls the public functions on ``[N, V]`` logits: ``token_stats`` (one read) and the in-place fused loss
(``policy_loss(..., inplace_grad=True)`` and its backward: one read, one write). On the CPU they run
the native kernels, on a GPU the backend ``--backend`` picks (auto: the CUDA kernels where built, else
Triton). The options are timed interleaved, one call each per round, and each option's median over
the rounds is reported, so that a machine shared with other work slows every option alike.

Prediction: on a GPU each pass is bound by the bytes it reads and writes, so the transform (a tanh per
element) and the extras (three more accumulators) should be free (~1.0x). On the CPU the passes are
bound by arithmetic: the plain pass costs one exp per element, softcap adds a second exp and a
reciprocal (its tanh as a sigmoid, avx512_math.h), so ~1.5-2x; logit_scale folds into the temperature (1.0x).

    python -m benchmarks.bench_transforms [--device cpu] [--rows 256] [--vocab 151936] [--rounds 15]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from actfocus_kernels import PolicyLossConfig, native, policy_loss, token_stats

# name: (logit_scale, softcap, extra_stats)
OPTIONS = {
    "plain": (1.0, None, False),
    "logit_scale": (0.5, None, False),
    "softcap": (1.0, 30.0, False),
    "scale+softcap": (0.5, 30.0, False),
    "extras": (1.0, None, True),
    "softcap+extras": (1.0, 30.0, True),
}
LOSS_CONFIG = PolicyLossConfig(entropy_coef=0.01)
Case = tuple[Callable[[], None], Callable[[], object]]  # (untimed preparation, timed call)


def token_stats_case(logits: torch.Tensor, targets: torch.Tensor, option, backend: str) -> Case:
    logit_scale, softcap, extra_stats = option
    return (lambda: None, lambda: token_stats(logits, targets, backend=backend, logit_scale=logit_scale,
                                              softcap=softcap, extra_stats=extra_stats))


def inplace_loss_case(source: torch.Tensor, buffer: torch.Tensor, targets: torch.Tensor, option, backend: str) -> Case:
    """The in-place loss and its backward on ``buffer``, refilled from ``source`` before each call (the copy
    is not timed)."""
    logit_scale, softcap, _ = option
    n = source.shape[0]
    g = torch.Generator(device="cpu").manual_seed(1)
    advantages = torch.randn(n, generator=g).to(source.device)
    mask = torch.ones(n, device=source.device)

    def prepare():
        buffer.requires_grad_(False)
        buffer.grad = None
        buffer.copy_(source)
        buffer.requires_grad_(True)

    def call():
        out = policy_loss(buffer, targets, None, advantages, mask, cfg=LOSS_CONFIG, inplace_grad=True,
                          backend=backend, logit_scale=logit_scale, softcap=softcap)
        out.loss.backward()

    return prepare, call


def median_times(cases: dict[str, Case], rounds: int, synchronize: Callable[[], None]) -> dict[str, float]:
    """Each case's median seconds over ``rounds`` interleaved rounds (one untimed warm-up round)."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_index in range(rounds + 1):
        for name, (prepare, call) in cases.items():
            prepare()
            synchronize()
            start = time.perf_counter()
            call()
            synchronize()
            elapsed = time.perf_counter() - start
            if round_index > 0:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def header(device: str, backend: str) -> str:
    if device == "cpu":
        return f"CPU kernels ({native.build_info()['cpu_capability']}), {torch.get_num_threads()} threads"
    return f"{torch.cuda.get_device_name()}, backend {backend}"


def run(device: str, backend: str, rows: int, vocab: int, rounds: int) -> None:
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    print(f"{header(device, backend)}, N={rows} V={vocab}, median of {rounds} interleaved rounds")
    for dtype in (torch.bfloat16, torch.float32):
        g = torch.Generator(device="cpu").manual_seed(0)
        logits = (torch.randn(rows, vocab, generator=g) * 3).to(device=device, dtype=dtype)
        targets = torch.randint(0, vocab, (rows,), generator=g).to(device)
        buffer = torch.empty_like(logits)
        cases = {f"token_stats {name}": token_stats_case(logits, targets, option, backend)
                 for name, option in OPTIONS.items()}
        cases |= {f"inplace loss {name}": inplace_loss_case(logits, buffer, targets, option, backend)
                  for name, option in OPTIONS.items() if not option[2]}
        times = median_times(cases, rounds, synchronize)
        print(f"\n{dtype} logits ({logits.numel() * logits.element_size() / 2**20:.0f} MiB)")
        for name, seconds in times.items():
            plain = times[name.rsplit(" ", 1)[0] + " plain"]
            print(f"  {name:34s} {seconds * 1e3:8.2f} ms  {seconds / plain:5.2f}x plain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    run(args.device, args.backend, args.rows, args.vocab, args.rounds)


if __name__ == "__main__":
    main()
