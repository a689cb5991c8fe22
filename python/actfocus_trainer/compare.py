"""``compare``: each algorithm with and without ActFocus, over several seeds.

Per seed the policy is warm-started once and every arm starts from a copy of it, so arms differ
only in the update rule (and the sampling it leads to). The table reports the success rate on the
shared evaluation states before RL and after it: the mean with its 95% t interval over seeds
(``stats.mean_ci``), and each seed; the header names the CPU (or GPU) and torch's thread count.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

import torch

from .machine import machine_record
from .plots import plot_runs
from .report import write_run
from .stats import mean_ci
from .train import TrainConfig, evaluate, prepare_policy, resolve_device, train


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
        initial = evaluate(policy, tokenizer, seed_cfg)
        for algo, actfocus in arms:
            cfg = dataclasses.replace(seed_cfg, algo=algo, actfocus=actfocus)
            run = train(cfg, copy.deepcopy(policy), tokenizer, progress, initial_success=initial)
            write_run(out_dir / f"{cfg.label}-seed{seed}", cfg, run)
            results[cfg.label].append({"seed": seed, "initial": run.initial_success, "final": run.final_success})
            records[cfg.label].append(run.records)
    plot_path = out_dir / "compare.png"
    plot_runs(records, plot_path, title=f"{base.env}: training success, {len(seeds)} seeds")
    summary = {"env": base.env, "env_kwargs": base.env_kwargs, "steps": base.steps,
               "episodes_per_step": base.prompts * base.group_size, "seeds": seeds,
               "device": describe_device(base.device),
               "machine": machine_record(), "minutes": (time.time() - started) / 60,
               "results": results, "plot": str(plot_path)}
    (out_dir / "compare.json").write_text(json.dumps(summary, indent=2))
    return summary


def describe_device(name: str) -> str:
    """``"<GPU name>"`` or ``"<CPU model>, <n> cores, <t> torch thread(s)"`` for the table's header."""
    device = resolve_device(name)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    machine = machine_record()
    return f"{machine['cpu']}, {machine['cores']} cores, {machine['threads']} torch thread(s)"


def interval(values: list[float]) -> str:
    """``mean [low, high]`` in percent: the 95% t interval over seeds (just the mean for one value)."""
    ci = mean_ci(values)
    if len(values) < 2:
        return f"{100 * ci.mean:.1f}%"
    return f"{100 * ci.mean:.1f}% [{100 * ci.low:.1f}, {100 * ci.high:.1f}]"


def format_table(summary: dict) -> str:
    """A Markdown table of the summary (one row per arm)."""
    lines = [f"{summary['env']} {summary['env_kwargs'] or ''}: {summary['steps']} RL steps x "
             f"{summary['episodes_per_step']} episodes, seeds {summary['seeds']}, {summary['device']}, "
             f"{summary['minutes']:.1f} min",
             "",
             "| arm | success before RL | final success, mean [95% CI] | per seed |",
             "|---|---|---|---|"]
    for label, runs in summary["results"].items():
        per_seed = " / ".join(f"{100 * run['final']:.0f}" for run in runs)
        lines.append(f"| {label} | {interval([r['initial'] for r in runs])} | "
                     f"{interval([r['final'] for r in runs])} | {per_seed} |")
    return "\n".join(lines)
