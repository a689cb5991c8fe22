"""``study``: the Action Bottleneck study at toy scale, from one command.

Grid: each environment x reasoning mode (``random`` control, ``templated``) x seed. Per cell the
policy is warm-started once, its success on the evaluation states is measured once, and every arm
trains a copy: GRPO, GRPO+ActFocus, PPO, PPO+ActFocus (ActFocus at ``reasoning_weight`` 0.5,
``redistribution`` 1). On the ablation cell (one environment and mode) GRPO+ActFocus also runs
every ``reasoning_weight`` x ``redistribution`` pair; ``(1, 0)`` is GRPO itself (SPEC 3: weights all
1, bit for bit) and ``(0.5, 1)`` the main arm, so neither is trained twice. On seed 0 of each
cell C1 (``c1.measure_c1``) is measured on the warm-started policy and on the GRPO-trained one,
with the warm start as the frozen reference.

Reported (``tables.md``, ``study.json``, PNGs): per arm the mean final success with its 95%
t interval over seeds, and the paired difference ActFocus - vanilla (same seeds, same warm start)
with its 95% t interval; learning curves with 95% bands; the ablation grid; the C1 tables.
Jobs (one per cell) run in ``workers`` processes of one torch thread each; a job's numbers do
not depend on which process runs it or when.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import torch

from .arms import ARMS, ablation_finals, arm_label
from .c1 import C1Config, format_c1, measure_c1
from .machine import machine_record, set_threads
from .stats import mean_ci
from .train import EVAL_SEED_OFFSET, TrainConfig, evaluate, prepare_policy, rollouts, train


@dataclass(frozen=True)
class StudyConfig:
    """The grid. ``base`` holds the run settings; ``env_overrides`` per-environment changes to it."""

    base: TrainConfig = field(default_factory=lambda: TrainConfig(prompts=4, group_size=8, steps=15,
                                                                  warmstart_steps=150))
    envs: tuple[str, ...] = ("frozenlake", "sokoban")
    env_overrides: dict = field(default_factory=lambda: {
        "frozenlake": {"env_kwargs": {"random_start": True}},
        "sokoban": {"steps": 8, "warmstart_steps": 120, "eval_episodes": 64}})
    reasoning: tuple[str, ...] = ("random", "templated")
    seeds: int = 5
    ablation_env: str = "frozenlake"
    ablation_reasoning: str = "templated"
    reasoning_weights: tuple[float, ...] = (1.0, 0.5, 0.1)
    redistributions: tuple[float, ...] = (0.0, 0.5, 1.0)
    c1: C1Config = field(default_factory=C1Config)
    workers: int = 2

    def cell_config(self, env: str, reasoning: str, seed: int) -> TrainConfig:
        return dataclasses.replace(self.base, env=env, reasoning=reasoning, seed=seed,
                                   **self.env_overrides.get(env, {}))

    def ablation_pairs(self) -> list[tuple[float, float]]:
        """The (reasoning_weight, redistribution) pairs trained beyond the main arms."""
        main = (self.base.reasoning_weight, self.base.redistribution)
        return [(lam, gamma) for lam in self.reasoning_weights for gamma in self.redistributions
                if (lam, gamma) not in (main, (1.0, 0.0))]


@dataclass(frozen=True)
class Job:
    env: str
    reasoning: str
    seed: int


def curve(records: list[dict]) -> dict[str, list[float]]:
    keys = ("success", "format_error", "energy_action", "energy_reasoning", "entropy")
    return {key: [r[key] for r in records] for key in keys}


def c1_report(policy, reference, tokenizer, cfg: TrainConfig, study: StudyConfig) -> dict:
    seeds = [EVAL_SEED_OFFSET + i for i in range(study.c1.prompts)]
    generator = torch.Generator().manual_seed(study.c1.seed)
    episodes = rollouts(policy, tokenizer, cfg, seeds, study.c1.group_size, generator)
    return measure_c1(policy, reference, tokenizer, episodes, cfg.context, cfg.actfocus_config(),
                      study.c1, cfg.backend).to_dict()


def run_job(study: StudyConfig, job: Job) -> dict:
    """One cell: warm start, initial evaluation, every arm (and the ablation, C1 where due)."""
    set_threads(1)
    started = time.time()
    cfg = study.cell_config(job.env, job.reasoning, job.seed)
    policy, tokenizer = prepare_policy(cfg, progress=False)
    initial = evaluate(policy, tokenizer, cfg)
    arms = [(arm_label(a, f), dataclasses.replace(cfg, algo=a, actfocus=f)) for a, f in ARMS]
    if (job.env, job.reasoning) == (study.ablation_env, study.ablation_reasoning):
        arms += [(arm_label("grpo", True, lam, gamma),
                  dataclasses.replace(cfg, algo="grpo", actfocus=True, reasoning_weight=lam, redistribution=gamma))
                 for lam, gamma in study.ablation_pairs()]
    out = {"initial": initial, "arms": {}, "c1": {}}
    for label, arm_cfg in arms:
        run = train(arm_cfg, copy.deepcopy(policy), tokenizer, progress=False, initial_success=initial)
        out["arms"][label] = {"final": run.final_success, "curve": curve(run.records)}
        if job.seed == 0 and label == "GRPO":
            out["c1"]["after GRPO"] = c1_report(run.policy, policy, tokenizer, cfg, study)
    if job.seed == 0:
        out["c1"]["warm start"] = c1_report(policy, policy, tokenizer, cfg, study)
    out["seconds"] = time.time() - started
    return out


def run_study(study: StudyConfig, out_dir: Path) -> dict:
    """Run every job, then write ``study.json``, ``tables.md`` and the plots under ``out_dir``."""
    started = time.time()
    jobs = [Job(env, mode, seed) for env in study.envs for mode in study.reasoning for seed in range(study.seeds)]
    # the longest cells first, so the processes finish together; results are keyed by job
    order = sorted(jobs, key=lambda j: (j.env != "sokoban", (j.env, j.reasoning) != (study.ablation_env,
                                                                                       study.ablation_reasoning)))
    if study.workers > 1:
        with ProcessPoolExecutor(study.workers, mp_context=get_context("spawn")) as pool:
            futures = {job: pool.submit(run_job, study, job) for job in order}
            done = {job: future.result() for job, future in futures.items()}
    else:
        done = {job: run_job(study, job) for job in order}
    cells = {}
    for env in study.envs:
        for mode in study.reasoning:
            runs = [done[Job(env, mode, seed)] for seed in range(study.seeds)]
            cells[f"{env}/{mode}"] = {
                "config": dataclasses.asdict(study.cell_config(env, mode, 0)),
                "initial": [r["initial"] for r in runs],
                "arms": {label: {"final": [r["arms"][label]["final"] for r in runs],
                                 "curves": [r["arms"][label]["curve"] for r in runs]}
                         for label in runs[0]["arms"]},
                "c1": runs[0]["c1"], "job_seconds": [r["seconds"] for r in runs]}
    summary = {"machine": {**machine_record(), "threads": 1, "workers": study.workers},
               "minutes": (time.time() - started) / 60, "seeds": list(range(study.seeds)),
               "ablation_cell": f"{study.ablation_env}/{study.ablation_reasoning}",
               "ablation_grid": [list(study.reasoning_weights), list(study.redistributions)],
               "main_actfocus": [study.base.reasoning_weight, study.base.redistribution], "cells": cells}
    write_outputs(summary, out_dir)
    return summary


def interval_text(values: list[float], scale: float = 100.0) -> str:
    ci = mean_ci(values)
    return f"{scale * ci.mean:.1f} [{scale * ci.low:.1f}, {scale * ci.high:.1f}]"


def paired(final: list[float], baseline: list[float]) -> list[float]:
    return [a - b for a, b in zip(final, baseline)]


def main_table(cell: dict) -> list[str]:
    lines = ["| arm | success before RL | final success, mean [95% CI] | per seed "
             "| ActFocus − vanilla, paired [95% CI] |",
             "|---|---|---|---|---|"]
    arms = cell["arms"]
    for algo, actfocus in ARMS:
        label = arm_label(algo, actfocus)
        final = arms[label]["final"]
        delta = interval_text(paired(final, arms[arm_label(algo, False)]["final"])) if actfocus else ""
        lines.append(f"| {label} | {interval_text(cell['initial'])} | {interval_text(final)} | "
                     f"{' / '.join(f'{100 * x:.0f}' for x in final)} | {delta} |")
    return lines


def ablation_table(summary: dict) -> list[str]:
    cell = summary["cells"][summary["ablation_cell"]]
    lams, gammas = summary["ablation_grid"]
    grpo = cell["arms"]["GRPO"]["final"]
    lines = ["| reasoning_weight λ \\ redistribution γ | " + " | ".join(f"γ={g:g}" for g in gammas) + " |",
             "|---|" + "---|" * len(gammas)]
    for lam in lams:
        row = []
        for gamma in gammas:
            final = ablation_finals(cell, lam, gamma, summary["main_actfocus"])
            row.append(f"{interval_text(final)}; Δ {interval_text(paired(final, grpo))}")
        lines.append(f"| λ={lam:g} | " + " | ".join(row) + " |")
    return lines


def write_outputs(summary: dict, out_dir: Path) -> None:
    from .plots import plot_ablation, plot_study

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "study.json").write_text(json.dumps(summary, indent=1))
    m = summary["machine"]
    lines = ["# Study results (`make study`)", "",
             f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} thread per process, "
             f"{m['workers']} process(es); {summary['minutes']:.1f} min; seeds {summary['seeds']}. "
             "Success in %, on the fixed evaluation states, sampled at temperature 1. Intervals: 95% "
             "Student-t over seeds; the paired column is the per-seed difference from the same warm start.", ""]
    for name, cell in summary["cells"].items():
        c = cell["config"]
        lines += [f"## {name}", "",
                  f"{c['steps']} RL steps x {c['prompts'] * c['group_size']} episodes, warm start "
                  f"{c['warmstart_steps']} steps, {c['eval_episodes']} evaluation episodes; "
                  f"{sum(cell['job_seconds']) / 60:.1f} min of job time.", "", *main_table(cell), ""]
    lines += [f"## Ablation: GRPO+ActFocus on {summary['ablation_cell']}", "",
              "Final success [95% CI]; Δ = paired difference from GRPO (λ=1, γ=0 is GRPO itself).", "",
              *ablation_table(summary), ""]
    for name, cell in summary["cells"].items():
        for stage, report in cell["c1"].items():
            lines += [f"## C1 on {name}, {stage} (seed 0)", "", format_c1(report), ""]
    (out_dir / "tables.md").write_text("\n".join(lines))
    plot_study(summary, out_dir / "curves.png")
    plot_ablation(summary, out_dir / "ablation.png")
