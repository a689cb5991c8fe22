"""What one training run leaves on disk: ``log.jsonl`` (one record per step), ``config.json`` (the
config and the success before and after RL), ``curve.png`` and, for the built-in model, ``policy.pt``.

Reporting sits above training: it reads a ``train.TrainResult``; ``train`` itself writes nothing.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from .plots import plot_runs
from .policy import TinyCausalLM, save_policy
from .train import TrainConfig, TrainResult


def write_run(out_dir: Path, cfg: TrainConfig, result: TrainResult) -> None:
    """Write the log, config, learning curve and (built-in model) weights of a run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "log.jsonl", "w") as log:
        for record in result.records:
            log.write(json.dumps(record) + "\n")
    summary = {"config": asdict(cfg), "initial_success": result.initial_success,
               "final_success": result.final_success, "seconds": result.seconds}
    (out_dir / "config.json").write_text(json.dumps(summary, indent=2))
    plot_runs({cfg.label: [result.records]}, out_dir / "curve.png", title=f"{cfg.env}: {cfg.label}")
    if isinstance(result.policy, TinyCausalLM):
        save_policy(result.policy, str(out_dir / "policy.pt"))
