"""End to end: a short seeded run learns, and the CLI commands run and write their outputs."""
import io
import json
import sys

import pytest
import torch

from actfocus_trainer.cli import main
from actfocus_trainer.train import TrainConfig, train


def test_short_grpo_run_beats_the_untrained_policy():
    cfg = TrainConfig(env_kwargs={"random_start": True}, steps=20, seed=0)
    result = train(cfg, progress=False)
    assert len(result.records) == 20
    # 128 fixed evaluation states: the standard error of the difference is about 0.05
    assert result.final_success >= result.initial_success + 0.10, (result.initial_success, result.final_success)
    late = sum(r["success"] for r in result.records[-5:]) / 5
    early = sum(r["success"] for r in result.records[:5]) / 5
    assert late > early


TINY_RUN = ["--steps", "2", "--prompts", "2", "--group-size", "2", "--warmstart-steps", "2", "--eval-episodes", "4"]
TINY = [*TINY_RUN, "--no-progress"]


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_bars_only_on_a_terminal(tmp_path, capsys, monkeypatch):
    main(["train", *TINY_RUN, "--out", str(tmp_path / "logged")])
    assert "\r" not in capsys.readouterr().err  # captured: not a terminal, so no bar frames
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    main(["train", *TINY_RUN, "--out", str(tmp_path / "terminal")])
    assert "\r" in terminal.getvalue() and "warm start" in terminal.getvalue()


def test_cli_train_compare_diagnose(tmp_path, capsys):
    main(["train", "--algo", "ppo", "--actfocus", "--preserve-total", "--out", str(tmp_path / "train"), *TINY])
    config = json.loads((tmp_path / "train" / "config.json").read_text())["config"]
    assert (config["algo"], config["actfocus"], config["preserve_total"]) == ("ppo", True, True)
    records = [json.loads(line) for line in (tmp_path / "train" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert {"success", "return", "clip_frac", "entropy", "energy_action", "energy_reasoning"} <= set(records[0])
    assert (tmp_path / "train" / "curve.png").stat().st_size > 0

    main(["compare", "--env", "sokoban", "--algos", "grpo,ppo", "--seeds", "1", "--out", str(tmp_path / "compare"),
          *TINY])
    out = capsys.readouterr().out
    for label in ("| GRPO |", "| GRPO+ActFocus |", "| PPO |", "| PPO+ActFocus |"):
        assert label in out
    assert f"plot: {tmp_path / 'compare' / 'compare.png'}" in out
    summary = json.loads((tmp_path / "compare" / "compare.json").read_text())
    assert summary["seeds"] == [0] and len(summary["results"]["GRPO+ActFocus"]) == 1

    main(["diagnose", "--checkpoint", str(tmp_path / "train" / "policy.pt"),
          "--reference", str(tmp_path / "train" / "policy.pt"), "--out", str(tmp_path / "diagnose.json"), *TINY])
    report = json.loads((tmp_path / "diagnose.json").read_text())
    assert set(report["correlations"]) == {"action", "reasoning"}
    assert report["spread_prompts"] + report["zero_variance_prompts"] == 2  # TINY's --prompts
    assert "| action | grad_unit |" in capsys.readouterr().out


def test_two_short_runs_are_identical():
    cfg = TrainConfig(env_kwargs={"random_start": True}, steps=3, prompts=2, group_size=4, warmstart_steps=5,
                      eval_episodes=8, reasoning="templated", actfocus=True, seed=3)
    first, second = train(cfg, progress=False), train(cfg, progress=False)
    strip = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]  # noqa: E731
    assert strip(first.records) == strip(second.records)
    assert (first.initial_success, first.final_success) == (second.initial_success, second.final_success)
    for a, b in zip(first.policy.parameters(), second.policy.parameters()):
        assert torch.equal(a, b)


def test_study_command_on_a_tiny_grid(tmp_path, capsys):
    out = tmp_path / "study"
    main(["study", "--envs", "frozenlake", "--seeds", "2", "--steps", "1", "--warmstart-steps", "2",
          "--eval-episodes", "4", "--prompts", "2", "--group-size", "2", "--c1-prompts", "4", "--c1-group-size", "2",
          "--c1-resamples", "20", "--out", str(out)])
    summary = json.loads((out / "study.json").read_text())
    assert summary["machine"]["cpu"] and summary["seeds"] == [0, 1]
    assert set(summary["cells"]) == {"frozenlake/random", "frozenlake/templated"}
    arms = summary["cells"]["frozenlake/templated"]["arms"]
    assert {"GRPO", "GRPO+ActFocus", "PPO", "PPO+ActFocus"} <= set(arms)
    assert len(arms) == 4 + 7  # the ablation's 9 pairs, less GRPO (λ=1, γ=0) and the main arm
    assert all(len(arm["final"]) == 2 and len(arm["curves"][0]["success"]) == 1 for arm in arms.values())
    assert set(summary["cells"]["frozenlake/random"]["c1"]) == {"warm start", "after GRPO"}
    tables = (out / "tables.md").read_text()
    for text in ("| GRPO+ActFocus |", "| PPO+ActFocus |", "## Ablation", "| λ=0.1 |", "## C1 on frozenlake/templated"):
        assert text in tables
    assert (out / "curves.png").stat().st_size > 0 and (out / "ablation.png").stat().st_size > 0
    assert "tables, plots and study.json" in capsys.readouterr().out


def test_model_flag_without_transformers_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(SystemExit, match="transformers"):
        main(["train", "--model", str(tmp_path), *TINY])
