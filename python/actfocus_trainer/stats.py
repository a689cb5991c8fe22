"""Small statistics on numpy (no scipy): intervals over seeds, correlations, resampling.

- ``mean_ci(x)``: the mean and the two-sided 95% Student-t interval
  ``mean ± t_{0.975, n-1} s / sqrt(n)`` (``s`` the sample std); for a paired comparison pass the
  per-seed differences.
- ``pearson(x, y) = cov(x, y) / (std x std y)``; ``spearman`` is the Pearson correlation of the
  ranks (ties get their average rank). Both are NaN when either input is constant.
- ``bootstrap_ci(x, y, corr)``: the 2.5 and 97.5 percentiles of ``corr`` over ``resamples``
  resamples of the pairs with replacement (percentile bootstrap; NaN resamples dropped).
- ``permutation_p(x, y, corr)``: ``(1 + #{|corr(x, perm y)| >= |corr(x, y)|}) / (1 + permutations)``,
  the two-sided p-value of no association.
Resampling uses ``numpy.random.default_rng(seed)``, so every number is reproducible.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

# t_{0.975, df} for df = 1..30; beyond that the normal 1.96 is within 0.05
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)


@dataclass(frozen=True)
class Interval:
    """A mean (or estimate) with its 95% interval ``[low, high]`` and the sample size."""

    mean: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def t_critical(df: int) -> float:
    """``t_{0.975, df}`` (two-sided 95%)."""
    return T_975[df - 1] if df <= len(T_975) else 1.96


def mean_ci(values) -> Interval:
    """Mean and 95% t interval of ``values`` (a single value has a zero-width interval)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, mean, mean, len(x))
    half = t_critical(len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return Interval(mean, mean - half, mean + half, len(x))


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((dx * dx).sum() * (dy * dy).sum()))
    return float((dx * dy).sum() / denominator) if denominator > 0 else float("nan")


def ranks(x) -> np.ndarray:
    """Ranks ``0..n-1`` with ties given their average rank."""
    x = np.asarray(x, dtype=float)
    ordered = np.sort(x)
    return (np.searchsorted(ordered, x, "left") + np.searchsorted(ordered, x, "right") - 1) / 2.0


def spearman(x, y) -> float:
    return pearson(ranks(x), ranks(y))


def bootstrap_ci(x, y, corr: Callable, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of ``corr(x, y)`` over resampled pairs."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        index = rng.integers(0, len(x), len(x))
        value = corr(x[index], y[index])
        if math.isfinite(value):
            draws.append(value)
    if not draws:
        return float("nan"), float("nan")
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def permutation_p(x, y, corr: Callable, permutations: int = 1000, seed: int = 0) -> float:
    """Two-sided permutation p-value of ``corr(x, y)`` (``y`` shuffled)."""
    observed = corr(x, y)
    if not math.isfinite(observed):
        return float("nan")
    rng = np.random.default_rng(seed)
    y = np.asarray(y, dtype=float)
    extreme = sum(abs(corr(x, rng.permutation(y))) >= abs(observed) - 1e-12 for _ in range(permutations))
    return (1 + extreme) / (1 + permutations)
