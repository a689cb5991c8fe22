"""Command line: ``python -m actfocus_trainer train|compare|diagnose|study`` (``--help`` on each)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import torch

from actfocus_kernels import token_stats

from .compare import format_table, run_compare
from .envs import ENV_NAMES
from .machine import set_threads
from .reasoning import REASONING_MODES
from .report import write_run
from .train import EVAL_SEED_OFFSET, TrainConfig, prepare_policy, resolve_device, rollouts, train


def _number(kind, minimum: float, strict: bool):
    """An argparse type: a finite ``kind`` ``>= minimum`` (``> minimum`` when ``strict``); argparse turns
    the ValueError into a usage error naming the argument (exit status 2)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum} and finite, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


POSITIVE_INT = _number(int, 0, strict=True)
NON_NEGATIVE_INT = _number(int, 0, strict=False)
POSITIVE = _number(float, 0.0, strict=True)
NON_NEGATIVE = _number(float, 0.0, strict=False)
FINITE = _number(float, -math.inf, strict=True)


def usage_error(parser: argparse.ArgumentParser, message: str) -> None:
    """Exit as argparse does on a bad argument (status 2), with one line on stderr."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def check_paths(parser: argparse.ArgumentParser, args) -> None:
    """Paths are checked before any work: an output directory that is a file, a missing checkpoint or model."""
    if getattr(args, "reference", None) and not Path(args.reference).is_file():
        usage_error(parser, f"--reference {args.reference} does not exist")
    if args.out is not None and args.command != "diagnose" and Path(args.out).is_file():
        usage_error(parser, f"--out {args.out} is an existing file, not a directory")
    if args.out is not None and args.command == "diagnose" and Path(args.out).is_dir():
        usage_error(parser, f"--out {args.out} is a directory; diagnose writes a JSON file")
    if getattr(args, "checkpoint", None) and not Path(args.checkpoint).is_file():
        usage_error(parser, f"--checkpoint {args.checkpoint} does not exist")
    if args.model is not None and not Path(args.model).is_dir():
        usage_error(parser, f"--model {args.model} is not a directory")


def check_machine(parser: argparse.ArgumentParser, args) -> None:
    """``--device`` and ``--backend`` are checked on this machine before any work: a CUDA device
    needs CUDA, and the backend must run on the device (the library's own check, on a one-token
    ``token_stats`` call)."""
    if not hasattr(args, "backend"):  # study: every run on the defaults
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        usage_error(parser, f"--device {args.device}: this machine has no CUDA device")
    try:
        device = resolve_device(args.device)
        logits, targets = torch.zeros(1, 2, device=device), torch.zeros(1, dtype=torch.long, device=device)
    except RuntimeError as error:  # not a device name, or no such device here
        usage_error(parser, f"--device {args.device}: {error}")
    try:
        token_stats(logits, targets, backend=args.backend)
    except (ValueError, RuntimeError) as error:  # the backend can't run there, or nothing can
        usage_error(parser, f"--backend {args.backend} on --device {args.device} ({device}): {error}")


def show_progress(args) -> bool:
    """Progress bars (tqdm, on stderr) only for a terminal: in a log their frames are noise."""
    return not args.no_progress and sys.stderr.isatty()


def env_kwargs(args) -> dict:
    """Environment options the flags select (FrozenLake layout and start, Sokoban difficulty)."""
    if args.env.startswith("frozenlake"):
        return {"layout": args.layout, "random_start": args.start == "random"}
    return {"reverse_steps": args.reverse_steps}


def add_common(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    env = parser.add_argument_group("environment")
    env.add_argument("--env", default=d.env, choices=ENV_NAMES)
    env.add_argument("--layout", default="standard", choices=("standard", "random"),
                     help="FrozenLake map: Gymnasium's fixed map or one drawn per start state")
    env.add_argument("--start", default="random", choices=("fixed", "random"),
                     help="FrozenLake start tile: S, or a random tile that can reach the goal")
    env.add_argument("--reverse-steps", type=POSITIVE_INT, default=12, help="Sokoban generator difficulty")
    run = parser.add_argument_group("run")
    run.add_argument("--steps", type=POSITIVE_INT, default=d.steps, help="RL steps")
    run.add_argument("--prompts", type=POSITIVE_INT, default=d.prompts, help="start states per step")
    run.add_argument("--group-size", type=POSITIVE_INT, default=d.group_size, help="GRPO rollouts per start state")
    run.add_argument("--epochs", type=POSITIVE_INT, default=d.epochs, help="PPO epochs per batch")
    run.add_argument("--minibatches", type=POSITIVE_INT, default=d.minibatches)
    run.add_argument("--lr", type=POSITIVE, default=d.lr)
    run.add_argument("--agg", default=d.agg, help="policy_loss aggregation (PolicyLossConfig.agg)",
                     choices=("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"))
    run.add_argument("--temperature", type=POSITIVE, default=d.temperature)
    run.add_argument("--context", default=d.context, choices=("turn", "full"),
                     help="what a turn sees: its own observation, or the whole trajectory so far")
    run.add_argument("--max-response-tokens", type=POSITIVE_INT, default=d.max_response_tokens)
    run.add_argument("--warmstart-steps", type=NON_NEGATIVE_INT, default=d.warmstart_steps)
    run.add_argument("--reasoning", default=d.reasoning, choices=REASONING_MODES,
                     help="warm-start reasoning: random words (control) or templated from the state")
    run.add_argument("--eval-episodes", type=POSITIVE_INT, default=d.eval_episodes)
    run.add_argument("--reasoning-weight", type=NON_NEGATIVE, default=d.reasoning_weight, help="ActFocus lambda")
    run.add_argument("--redistribution", type=FINITE, default=d.redistribution, help="ActFocus gamma")
    run.add_argument("--preserve-total", action="store_true",
                     help="ActFocus: rescale each trajectory's weights to sum to its token count")
    run.add_argument("--model", default=None, help="local Hugging Face causal LM directory")
    run.add_argument("--device", default=d.device)
    run.add_argument("--backend", default=d.backend, choices=("auto", "reference", "cpu", "cuda", "triton"))
    run.add_argument("--threads", type=POSITIVE_INT, default=1,
                     help="CPU threads for torch (fixed, so runs repeat; the built-in model gains nothing from more)")
    run.add_argument("--out", default=None,
                     help="output directory (default under runs/); for diagnose, a JSON file for the report")
    run.add_argument("--no-progress", action="store_true")


def config_from(args) -> TrainConfig:
    """The ``TrainConfig`` whose fields the parsed flags name (defaults for the rest)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    return TrainConfig(**values, env_kwargs=env_kwargs(args))


def cmd_train(args) -> None:
    cfg = config_from(args)
    out = Path(args.out or f"runs/train-{args.env}-{cfg.label}-seed{cfg.seed}")
    result = train(cfg, progress=show_progress(args))
    write_run(out, cfg, result)
    print(f"{cfg.label} on {cfg.env}: success {100 * result.initial_success:.1f}% before RL -> "
          f"{100 * result.final_success:.1f}% after {cfg.steps} steps ({result.seconds:.0f} s)")
    print(f"log: {out / 'log.jsonl'}   curve: {out / 'curve.png'}")


def cmd_compare(args) -> None:
    base = config_from(args)
    out = Path(args.out or f"runs/compare-{args.env}")
    algos = args.algos.split(",")
    if not set(algos) <= {"grpo", "ppo"}:
        raise SystemExit(f"--algos takes grpo and/or ppo, got {args.algos!r}")
    summary = run_compare(base, algos, list(range(args.seeds)), out, progress=show_progress(args))
    print(format_table(summary))
    print(f"\nplot: {summary['plot']}   summary: {out / 'compare.json'}")


def cmd_diagnose(args) -> None:
    from .c1 import C1Config, format_c1, measure_c1
    from .policy import load_policy
    from .tokenizer import WordTokenizer

    cfg = config_from(args)
    device = resolve_device(cfg.device)
    if args.checkpoint:
        policy, tokenizer = load_policy(args.checkpoint, device), WordTokenizer()
    else:
        policy, tokenizer = prepare_policy(cfg, show_progress(args))
    reference = load_policy(args.reference, device) if args.reference else policy
    c1 = C1Config(prompts=args.prompts, group_size=args.group_size, seed=cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    seeds = [EVAL_SEED_OFFSET + i for i in range(args.prompts)]
    episodes = rollouts(policy, tokenizer, cfg, seeds, args.group_size, generator)
    report = measure_c1(policy, reference, tokenizer, episodes, cfg.context, cfg.actfocus_config(), c1,
                        cfg.backend).to_dict()
    print(format_c1(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


def cmd_study(args) -> None:
    from .c1 import C1Config
    from .study import StudyConfig, run_study

    envs = tuple(args.envs.split(","))
    if not set(envs) <= set(ENV_NAMES):
        raise SystemExit(f"--envs takes names from {ENV_NAMES}, got {args.envs!r}")
    study = StudyConfig(seeds=args.seeds, workers=args.workers, envs=envs)
    if study.ablation_env not in envs:
        study = dataclasses.replace(study, ablation_env=envs[0])
    given = {k: v for k, v in (("steps", args.steps), ("warmstart_steps", args.warmstart_steps),
                               ("eval_episodes", args.eval_episodes), ("prompts", args.prompts),
                               ("group_size", args.group_size)) if v is not None}
    if given:  # a smaller grid (tests, quick looks): the values apply to every environment
        overrides = {env: {k: v for k, v in o.items() if k not in given} for env, o in study.env_overrides.items()}
        study = dataclasses.replace(study, base=dataclasses.replace(study.base, **given), env_overrides=overrides)
    study = dataclasses.replace(study, c1=C1Config(prompts=args.c1_prompts, group_size=args.c1_group_size,
                                                   resamples=args.c1_resamples, permutations=args.c1_resamples))
    summary = run_study(study, Path(args.out))
    print((Path(args.out) / "tables.md").read_text())
    print(f"\n{summary['minutes']:.1f} min; tables, plots and study.json in {args.out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m actfocus_trainer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p_train = commands.add_parser("train", help="train one policy and log its learning curve")
    add_common(p_train)
    p_train.add_argument("--algo", default="grpo", choices=("grpo", "ppo"))
    p_train.add_argument("--actfocus", action=argparse.BooleanOptionalAction, default=False)
    p_train.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    p_compare = commands.add_parser("compare", help="each algorithm with and without ActFocus over seeds")
    add_common(p_compare)
    p_compare.add_argument("--algos", default="grpo", help="comma-separated: grpo, ppo")
    p_compare.add_argument("--seeds", type=POSITIVE_INT, default=3, help="number of seeds (0, 1, ...)")
    p_diagnose = commands.add_parser("diagnose", help="measure C1 (the Action Bottleneck) on a batch of rollouts")
    add_common(p_diagnose)
    p_diagnose.add_argument("--checkpoint", default=None, help="policy.pt written by train (default: warm start)")
    p_diagnose.add_argument("--reference", default=None,
                            help="policy.pt of the frozen reference model (default: the policy itself)")
    p_diagnose.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    p_diagnose.set_defaults(prompts=64)
    p_study = commands.add_parser("study", help="the Action Bottleneck study: every arm, seeds, ablation, C1")
    p_study.add_argument("--out", default="docs/study", help="directory for tables.md, study.json and plots")
    p_study.add_argument("--seeds", type=POSITIVE_INT, default=5)
    p_study.add_argument("--envs", default="frozenlake,sokoban", help="comma-separated environments")
    p_study.add_argument("--workers", type=POSITIVE_INT, default=2, help="processes (one torch thread each)")
    p_study.add_argument("--steps", type=POSITIVE_INT, default=None, help="RL steps, every environment")
    p_study.add_argument("--warmstart-steps", type=NON_NEGATIVE_INT, default=None)
    p_study.add_argument("--eval-episodes", type=POSITIVE_INT, default=None)
    p_study.add_argument("--prompts", type=POSITIVE_INT, default=None, help="start states per RL step")
    p_study.add_argument("--group-size", type=POSITIVE_INT, default=None, help="GRPO rollouts per start state")
    p_study.add_argument("--c1-prompts", type=POSITIVE_INT, default=64, help="C1 prompts")
    p_study.add_argument("--c1-group-size", type=POSITIVE_INT, default=8)
    p_study.add_argument("--c1-resamples", type=POSITIVE_INT, default=1000, help="bootstrap resamples and permutations")
    p_study.set_defaults(model=None, threads=1)
    args = parser.parse_args(argv)
    check_paths(parser, args)
    check_machine(parser, args)
    set_threads(args.threads)
    {"train": cmd_train, "compare": cmd_compare, "diagnose": cmd_diagnose, "study": cmd_study}[args.command](args)
