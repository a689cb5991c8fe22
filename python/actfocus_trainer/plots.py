"""Learning curves as PNG (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points."""
    return [sum(values[max(0, i - window + 1):i + 1]) / (i - max(0, i - window + 1) + 1)
            for i in range(len(values))]


def plot_runs(runs: dict[str, list[list[dict]]], path: Path, title: str, window: int = 5) -> None:
    """Training success rate per step for each label (mean over its runs, band = min..max), next to
    the mean energy of action vs reasoning tokens."""
    fig, (ax_success, ax_energy) = plt.subplots(1, 2, figsize=(11, 4))
    for label, records_per_run in runs.items():
        steps = [r["step"] for r in records_per_run[0]]
        curves = [smooth([r["success"] for r in records], window) for records in records_per_run]
        mean = [sum(column) / len(column) for column in zip(*curves)]
        line, = ax_success.plot(steps, mean, label=label)
        if len(curves) > 1:
            ax_success.fill_between(steps, [min(c) for c in zip(*curves)], [max(c) for c in zip(*curves)],
                                    color=line.get_color(), alpha=0.2)
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
