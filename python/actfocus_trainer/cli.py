"""Command line: ``python -m actfocus_trainer train|compare|diagnose`` (``--help`` on each)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import torch

from .compare import format_table, run_compare
from .envs import ENV_NAMES
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


def check_paths(parser: argparse.ArgumentParser, args) -> None:
    """Paths are checked before any work: an output directory that is a file, a missing checkpoint or model."""
    if args.out is not None and args.command != "diagnose" and Path(args.out).is_file():
        parser.error(f"--out {args.out} is an existing file, not a directory")
    if args.out is not None and args.command == "diagnose" and Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a directory; diagnose writes a JSON file")
    if getattr(args, "checkpoint", None) and not Path(args.checkpoint).is_file():
        parser.error(f"--checkpoint {args.checkpoint} does not exist")
    if args.model is not None and not Path(args.model).is_dir():
        parser.error(f"--model {args.model} is not a directory")


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
    run.add_argument("--eval-episodes", type=POSITIVE_INT, default=d.eval_episodes)
    run.add_argument("--reasoning-weight", type=NON_NEGATIVE, default=d.reasoning_weight, help="ActFocus lambda")
    run.add_argument("--redistribution", type=FINITE, default=d.redistribution, help="ActFocus gamma")
    run.add_argument("--preserve-total", action="store_true",
                     help="ActFocus: rescale each trajectory's weights to sum to its token count")
    run.add_argument("--model", default=None, help="local Hugging Face causal LM directory")
    run.add_argument("--device", default=d.device)
    run.add_argument("--backend", default=d.backend, choices=("auto", "reference", "cpu", "cuda", "triton"))
    run.add_argument("--threads", type=POSITIVE_INT, default=1,
                     help="CPU threads for torch (the built-in model is too small to gain from more)")
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
    result = train(cfg, out_dir=out, progress=not args.no_progress)
    print(f"{cfg.label} on {cfg.env}: success {100 * result.initial_success:.1f}% before RL -> "
          f"{100 * result.final_success:.1f}% after {cfg.steps} steps ({result.seconds:.0f} s)")
    print(f"log: {out / 'log.jsonl'}   curve: {out / 'curve.png'}")


def cmd_compare(args) -> None:
    base = config_from(args)
    out = Path(args.out or f"runs/compare-{args.env}")
    algos = args.algos.split(",")
    if not set(algos) <= {"grpo", "ppo"}:
        raise SystemExit(f"--algos takes grpo and/or ppo, got {args.algos!r}")
    summary = run_compare(base, algos, list(range(args.seeds)), out, progress=not args.no_progress)
    print(format_table(summary))
    print(f"\nplot: {summary['plot']}   summary: {out / 'compare.json'}")


def cmd_diagnose(args) -> None:
    from .diagnostics import diagnose
    from .policy import load_policy
    from .tokenizer import WordTokenizer

    cfg = config_from(args)
    if args.checkpoint:
        policy, tokenizer = load_policy(args.checkpoint, resolve_device(cfg.device)), WordTokenizer()
    else:
        policy, tokenizer = prepare_policy(cfg, not args.no_progress)
    generator = torch.Generator().manual_seed(cfg.seed)
    seeds = [EVAL_SEED_OFFSET + i for i in range(args.prompts)]
    report = diagnose(policy, tokenizer, lambda s, g: rollouts(policy, tokenizer, cfg, s, g, generator),
                      seeds, args.group_size, cfg.context, cfg.actfocus_config(), cfg.backend)
    print(f"{report['episodes']} rollouts ({args.prompts} prompts x {args.group_size}), success "
          f"{100 * report['success']:.1f}%, prompts with reward spread: {report['prompts_with_reward_spread']}")
    print("| weights | tokens | token share | share of ‖dz‖ | mean ‖dz‖ | corr(‖dz‖, reward var) "
          "| corr(‖dz‖ at A=1, reward var) |")
    print("|---|---|---|---|---|---|---|")
    for weights in ("vanilla", "actfocus"):
        for name, row in report[weights].items():
            print(f"| {weights} | {name} | {100 * row['token_share']:.1f}% | {100 * row['signal_share']:.1f}% | "
                  f"{row['mean_norm']:.2e} | {row['corr_reward_var']:+.2f} | {row['corr_unit_reward_var']:+.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


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
    p_diagnose = commands.add_parser("diagnose", help="measure the Action Bottleneck on a batch of rollouts")
    add_common(p_diagnose)
    p_diagnose.add_argument("--checkpoint", default=None, help="policy.pt written by train (default: warm start)")
    p_diagnose.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    p_diagnose.set_defaults(prompts=32)
    args = parser.parse_args(argv)
    check_paths(parser, args)
    torch.set_num_threads(args.threads)
    {"train": cmd_train, "compare": cmd_compare, "diagnose": cmd_diagnose}[args.command](args)
