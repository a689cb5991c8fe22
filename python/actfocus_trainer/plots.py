"""Learning curves and the study's figures as PNG (matplotlib, Agg backend: no display needed).

Curves are trailing moving averages over ``window`` steps; a band is the 95% Student-t interval
of the mean over runs (seeds) at each step (``stats.mean_ci``).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .arms import ablation_finals  # noqa: E402
from .stats import mean_ci  # noqa: E402


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points."""
    return [sum(values[max(0, i - window + 1):i + 1]) / (i - max(0, i - window + 1) + 1)
            for i in range(len(values))]


def band(ax, curves: list[list[float]], label: str, window: int):
    """Plot the mean of ``curves`` (smoothed) with its 95% band; returns the line."""
    smoothed = [smooth(c, window) for c in curves]
    steps = list(range(1, len(smoothed[0]) + 1))
    intervals = [mean_ci(column) for column in zip(*smoothed)]
    line, = ax.plot(steps, [ci.mean for ci in intervals], label=label)
    if len(curves) > 1:
        ax.fill_between(steps, [ci.low for ci in intervals], [ci.high for ci in intervals],
                        color=line.get_color(), alpha=0.2)
    return line


def plot_runs(runs: dict[str, list[list[dict]]], path: Path, title: str, window: int = 5) -> None:
    """Training success rate per step for each label (mean over its runs, 95% band), next to the
    mean energy of action vs reasoning tokens."""
    fig, (ax_success, ax_energy) = plt.subplots(1, 2, figsize=(11, 4))
    for label, records_per_run in runs.items():
        line = band(ax_success, [[r["success"] for r in records] for records in records_per_run], label, window)
        steps = [r["step"] for r in records_per_run[0]]
        for key, style in (("energy_action", "-"), ("energy_reasoning", ":")):
            energy = [sum(r[key] for r in column) / len(column) for column in zip(*records_per_run)]
            ax_energy.plot(steps, energy, style, color=line.get_color(), label=f"{label} {key.split('_')[1]}")
    ax_success.set(xlabel="RL step", ylabel=f"training success rate ({window}-step avg)", ylim=(0, 1), title=title)
    ax_energy.set(xlabel="RL step", ylabel="mean token energy", title="energy: action (-) vs reasoning (:)")
    ax_success.legend()
    ax_energy.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_study(summary: dict, path: Path, window: int = 5) -> None:
    """One panel per environment x reasoning mode: training success of the four main arms."""
    cells = summary["cells"]
    envs = list(dict.fromkeys(name.split("/")[0] for name in cells))
    modes = list(dict.fromkeys(name.split("/")[1] for name in cells))
    fig, axes = plt.subplots(len(envs), len(modes), figsize=(5 * len(modes), 3.6 * len(envs)), squeeze=False)
    for i, env in enumerate(envs):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            for label, arm in cells[f"{env}/{mode}"]["arms"].items():
                if "λ" not in label:
                    band(ax, [c["success"] for c in arm["curves"]], label, window)
            ax.set(title=f"{env}, {mode} reasoning", xlabel="RL step",
                   ylabel=f"training success ({window}-step avg)", ylim=(0, 1))
            ax.legend(fontsize=7)
    fig.suptitle(f"mean and 95% band over {len(summary['seeds'])} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_ablation(summary: dict, path: Path) -> None:
    """Final success (mean, 95% interval) of GRPO+ActFocus per (reasoning_weight, redistribution)."""
    cell = summary["cells"][summary["ablation_cell"]]
    lams, gammas = summary["ablation_grid"]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(gammas)
    for j, gamma in enumerate(gammas):
        intervals = [mean_ci(ablation_finals(cell, lam, gamma, summary["main_actfocus"])) for lam in lams]
        xs = [i + (j - (len(gammas) - 1) / 2) * width for i in range(len(lams))]
        ax.bar(xs, [100 * ci.mean for ci in intervals], width,
               yerr=[[100 * (ci.mean - ci.low) for ci in intervals], [100 * (ci.high - ci.mean) for ci in intervals]],
               capsize=3, label=f"redistribution γ={gamma:g}")
    ax.set_xticks(range(len(lams)), [f"λ={lam:g}" for lam in lams])
    ax.set(ylabel="final success % (95% CI)", title=f"ablation on {summary['ablation_cell']} (λ=1, γ=0 is GRPO)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
