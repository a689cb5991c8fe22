"""Where the benchmarks measure and on what: the size sets, problem points and the GRPO-like batch.

Inputs mimic a GRPO batch: ``B`` sequences of ``L`` tokens (``N = B * L``), logits ``[B, L, V]``
(``randn * 2``), uniform targets, ``old_logp`` = current log-prob + U(-0.3, 0.3) (ratios on both
sides of the clip range), one advantage per sequence, trailing padding (loss mask), action spans
(a quarter of the tokens) and ActFocus weights from the energies (``source="old"``). Linear ops get
hidden states ``[B, L, H]`` and an LM-head weight ``[V, H]`` instead of the logits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from actfocus_kernels import ActFocusConfig

from . import naive

# --- sizes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeSet:
    """Where to measure. ``main`` points get every variant; sweeps (vocab at fixed N, tokens at
    fixed V) get the variants that are not ``main_only``. Repeats: at least ``min_repeats``, then
    more until ``target_s`` seconds or ``max_repeats``."""

    dtype: torch.dtype
    seq_len: int  # L; N = B * L
    main: tuple[tuple[int, int], ...]  # (N, V)
    vocab_sweep: tuple[int, tuple[int, ...]]  # (N, Vs)
    token_sweep: tuple[int, tuple[int, ...]]  # (V, Ns)
    linear: tuple[tuple[int, int, int], ...]  # (N, H, V)
    warmup: int
    min_repeats: int
    max_repeats: int
    target_s: float
    budget_s: float  # default wall-clock budget of one compare run
    copy_bytes: int  # size of the device-copy bandwidth measurement
    matmul_n: int  # n of the n^3 matmul-rate measurement


SIZES = {
    "smoke": SizeSet(torch.float32, 16, ((64, 1000),), (64, (500, 1000)), (1000, (32, 64)), ((64, 32, 1000),),
                     warmup=1, min_repeats=2, max_repeats=2, target_s=0.0, budget_s=120,
                     copy_bytes=32 << 20, matmul_n=256),
    "cpu": SizeSet(torch.float32, 128, ((1024, 32000),), (1024, (8000, 32000, 64000)), (32000, (256, 1024, 2048)),
                   ((512, 512, 32000),), warmup=1, min_repeats=3, max_repeats=10, target_s=2.0, budget_s=540,
                   copy_bytes=256 << 20, matmul_n=2048),
    "gpu": SizeSet(torch.bfloat16, 1024, ((16384, 151936), (16384, 262144)),
                   (16384, (32768, 65536, 131072, 151936, 262144)), (151936, (2048, 4096, 8192, 16384)),
                   ((16384, 3584, 151936),), warmup=2, min_repeats=5, max_repeats=20, target_s=0.3, budget_s=600,
                   copy_bytes=2 << 30, matmul_n=8192),
}


@dataclass(frozen=True)
class Point:
    """One problem size: ``tokens`` N, ``vocab`` V, ``hidden`` H (0: logits-level ops)."""

    tokens: int
    vocab: int
    hidden: int = 0

    def batch(self, seq_len: int) -> tuple[int, int]:
        """``(B, L)`` with ``B * L = N``."""
        length = min(seq_len, self.tokens)
        if self.tokens % length:
            raise ValueError(f"N={self.tokens} is not a multiple of the sequence length {length}")
        return self.tokens // length, length

    def label(self) -> str:
        hidden = f", H={self.hidden}" if self.hidden else ""
        return f"N={self.tokens}{hidden}, V={self.vocab}"


def main_points(sizes: SizeSet) -> list[Point]:
    """The logits-level main points of ``sizes``."""
    return [Point(tokens, vocab) for tokens, vocab in sizes.main]


def linear_points(sizes: SizeSet) -> list[Point]:
    """The hidden-state points of ``sizes`` (the linear ops' main points)."""
    return [Point(tokens, vocab, hidden) for tokens, hidden, vocab in sizes.linear]


def sweep_points(sizes: SizeSet) -> list[Point]:
    """The vocabulary sweep, then the token sweep, each point once."""
    sweep_tokens, vocabs = sizes.vocab_sweep
    sweep_vocab, token_counts = sizes.token_sweep
    points = [Point(sweep_tokens, vocab) for vocab in vocabs] + [Point(n, sweep_vocab) for n in token_counts]
    return list(dict.fromkeys(points))


# --- inputs ------------------------------------------------------------------------------------

ACTFOCUS_CFG = ActFocusConfig()


@dataclass
class Inputs:
    """One batch on the benchmark device. ``logits`` (or ``hidden`` and ``weight``) are leaves
    that require grad; ``logp_true`` is the fp32 log-prob the peers' losses are checked against."""

    point: Point
    device: torch.device
    dtype: torch.dtype
    targets: Tensor  # [B, L] int64
    old_logp: Tensor  # [B, L] fp32
    ref_logp: Tensor  # [B, L] fp32
    advantages: Tensor  # [B] fp32
    loss_mask: Tensor  # [B, L] bool
    action_mask: Tensor  # [B, L] bool
    weights: Tensor  # [B, L] fp32
    logp_true: Tensor  # [B, L] fp32
    logits: Optional[Tensor] = None  # [B, L, V]
    hidden: Optional[Tensor] = None  # [B, L, H]
    weight: Optional[Tensor] = None  # [V, H]

    def zero_grads(self) -> None:
        for leaf in (self.logits, self.hidden, self.weight):
            if leaf is not None:
                leaf.grad = None


def _row_stats(rows: Callable[[int, int], Tensor], count: int, vocab: int, targets: Tensor,
               device: torch.device) -> tuple[Tensor, Tensor]:
    """fp32 ``(logp, lse)`` of ``count`` rows, computed in chunks of at most 256 MiB of fp32."""
    chunk = max(1, min(count, (256 << 20) // (4 * vocab)))
    logp = torch.empty(count, dtype=torch.float32, device=device)
    lse = torch.empty(count, dtype=torch.float32, device=device)
    with torch.no_grad():
        for start in range(0, count, chunk):
            stop = min(count, start + chunk)
            block = rows(start, stop).float()
            lse[start:stop] = torch.logsumexp(block, dim=-1)
            logp[start:stop] = block.gather(-1, targets[start:stop, None]).squeeze(-1) - lse[start:stop]
    return logp, lse


def make_inputs(point: Point, sizes: SizeSet, device: torch.device, seed: int = 0) -> Inputs:
    """A reproducible batch of the given size (see the module docstring)."""
    batch, length = point.batch(sizes.seq_len)
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = sizes.dtype
    targets = torch.randint(0, point.vocab, (batch, length), generator=gen, device=device)
    logits = hidden = weight = None
    if point.hidden:
        hidden = torch.randn(batch, length, point.hidden, generator=gen, device=device, dtype=dtype)
        weight = torch.randn(point.vocab, point.hidden, generator=gen, device=device, dtype=dtype)
        weight.mul_(2.0 / math.sqrt(point.hidden))
        flat_hidden = hidden.view(-1, point.hidden)
        logp, lse = _row_stats(lambda a, b: flat_hidden[a:b] @ weight.t(), batch * length, point.vocab,
                               targets.view(-1), device)
        hidden.requires_grad_(True)
        weight.requires_grad_(True)
    else:
        logits = torch.randn(batch, length, point.vocab, generator=gen, device=device, dtype=dtype).mul_(2.0)
        flat = logits.view(-1, point.vocab)
        logp, lse = _row_stats(lambda a, b: flat[a:b], batch * length, point.vocab, targets.view(-1), device)
        logits.requires_grad_(True)
    logp, energy = logp.view(batch, length), -lse.view(batch, length)

    def uniform(low: float, high: float) -> Tensor:
        return torch.rand(batch, length, generator=gen, device=device) * (high - low) + low

    positions = torch.arange(length, device=device)
    lengths = torch.randint(max(1, length // 2), length + 1, (batch, 1), generator=gen, device=device)
    loss_mask = positions < lengths
    span = max(2, length // 32)
    action_mask = ((positions // span) % 4 == 3).expand(batch, length).contiguous()
    return Inputs(
        point=point, device=device, dtype=dtype, targets=targets, old_logp=logp + uniform(-0.3, 0.3),
        ref_logp=logp + uniform(-0.2, 0.2), advantages=torch.randn(batch, generator=gen, device=device),
        loss_mask=loss_mask, action_mask=action_mask,
        weights=naive.actfocus_weights(energy, loss_mask, action_mask, ACTFOCUS_CFG), logp_true=logp,
        logits=logits, hidden=hidden, weight=weight,
    )
