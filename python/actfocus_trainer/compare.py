"""``compare``: each algorithm with and without ActFocus, over several seeds.

Per seed the policy is warm-started once and every arm starts from a copy of it, so arms differ
only in the update rule (and the sampling it leads to). The table reports the success rate on the
shared evaluation states before RL and after it: mean ± sample std over seeds, and each seed.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import torch

from .plots import plot_runs
from .train import TrainConfig, prepare_policy, resolve_device, train


def run_compare(base: TrainConfig, algos: list[str], seeds: list[int], out_dir: Path,
                progress: bool = True) -> dict:
    """Train every (algo, ActFocus off/on) arm for every seed; write logs, ``compare.json`` and
    ``compare.png`` under ``out_dir``; return the summary."""
    started = time.time()
    arms = [(algo, actfocus) for algo in algos for actfocus in (False, True)]
    results = {dataclasses.replace(base, algo=a, actfocus=f).label: [] for a, f in arms}
    records = {label: [] for label in results}
    for seed in seeds:
        seed_cfg = dataclasses.replace(base, seed=seed)
        policy, tokenizer = prepare_policy(seed_cfg, progress)
        for algo, actfocus in arms:
            cfg = dataclasses.replace(seed_cfg, algo=algo, actfocus=actfocus)
            run = train(cfg, copy.deepcopy(policy), tokenizer, out_dir / f"{cfg.label}-seed{seed}", progress)
            results[cfg.label].append({"seed": seed, "initial": run.initial_success, "final": run.final_success})
            records[cfg.label].append(run.records)
    plot_path = out_dir / "compare.png"
    plot_runs(records, plot_path, title=f"{base.env}: training success, {len(seeds)} seeds")
    summary = {"env": base.env, "env_kwargs": base.env_kwargs, "steps": base.steps,
               "episodes_per_step": base.prompts * base.group_size, "seeds": seeds,
               "device": describe_device(base.device), "minutes": (time.time() - started) / 60,
               "results": results, "plot": str(plot_path)}
    (out_dir / "compare.json").write_text(json.dumps(summary, indent=2))
    return summary


def describe_device(name: str) -> str:
    """``"<GPU name>"`` or ``"<n>-core CPU"`` for the table's header."""
    device = resolve_device(name)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{os.cpu_count()}-core CPU"


def spread(values: list[float]) -> str:
    """``mean ± sample std`` in percent (no ± for a single value)."""
    mean = 100 * statistics.mean(values)
    if len(values) < 2:
        return f"{mean:.1f}%"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}%"


def format_table(summary: dict) -> str:
    """A Markdown table of the summary (one row per arm)."""
    lines = [f"{summary['env']} {summary['env_kwargs'] or ''}: {summary['steps']} RL steps x "
             f"{summary['episodes_per_step']} episodes, seeds {summary['seeds']}, {summary['device']}, "
             f"{summary['minutes']:.1f} min",
             "",
             "| arm | success before RL | final success (mean ± std) | per seed |",
             "|---|---|---|---|"]
    for label, runs in summary["results"].items():
        per_seed = " / ".join(f"{100 * run['final']:.0f}" for run in runs)
        lines.append(f"| {label} | {spread([r['initial'] for r in runs])} | "
                     f"{spread([r['final'] for r in runs])} | {per_seed} |")
    return "\n".join(lines)
