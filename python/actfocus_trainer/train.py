"""The training loop: warm start, then rollouts and GRPO/PPO updates, with logs and a final eval.

``prepare_policy`` builds the policy (built-in or ``--model``) and warm-starts it; ``train`` runs RL
from it. Success rates are measured on sampled rollouts (temperature 1): per step on the training
rollouts, and before/after training on ``eval_episodes`` fixed evaluation start states shared by
every run with the same config, so arms of a comparison are scored on the same states.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from actfocus_kernels import ActFocusConfig, PolicyLossConfig

from .algos import AlgoConfig, Learner
from .envs import make_env
from .masks import build_batch
from .policy import TinyCausalLM, load_hf_policy
from .rollout import collect
from .tokenizer import WordTokenizer
from .warmstart import warm_start

EVAL_SEED_OFFSET = 1_000_000


@dataclass
class TrainConfig:
    """Everything a run needs; the CLI flags map one to one onto these fields."""

    env: str = "frozenlake"
    env_kwargs: dict = field(default_factory=dict)
    algo: str = "grpo"
    actfocus: bool = False
    steps: int = 30
    prompts: int = 8
    group_size: int = 8
    epochs: int = 2
    minibatches: int = 2
    lr: float = 1e-3
    agg: str = "seq-mean-token-mean"
    temperature: float = 1.0
    context: str = "turn"
    max_response_tokens: int = 20
    warmstart_steps: int = 100
    reasoning: str = "random"
    eval_episodes: int = 128
    seed: int = 0
    device: str = "auto"
    model: str | None = None
    backend: str = "auto"
    reasoning_weight: float = 0.5
    redistribution: float = 1.0
    preserve_total: bool = False

    @property
    def label(self) -> str:
        return f"{self.algo.upper()}{'+ActFocus' if self.actfocus else ''}"

    def algo_config(self) -> AlgoConfig:
        return AlgoConfig(algo=self.algo, actfocus=self.actfocus, epochs=self.epochs,
                          minibatches=self.minibatches, lr=self.lr, backend=self.backend,
                          loss=PolicyLossConfig(agg=self.agg, temperature=self.temperature),
                          actfocus_cfg=self.actfocus_config())

    def actfocus_config(self) -> ActFocusConfig:
        return ActFocusConfig(reasoning_weight=self.reasoning_weight, redistribution=self.redistribution,
                              preserve_total=self.preserve_total)


@dataclass
class TrainResult:
    """Per-step log records, the success rates before and after RL, and the trained policy."""

    records: list[dict]
    initial_success: float
    final_success: float
    policy: torch.nn.Module
    seconds: float


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare_policy(cfg: TrainConfig, progress: bool = True):
    """``(policy, tokenizer)``: the built-in model (seeded by ``cfg.seed``) or ``cfg.model``,
    warm-started for ``cfg.warmstart_steps`` steps on well-formed turns with random actions and
    ``cfg.reasoning`` reasoning."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if cfg.model:
        policy, tokenizer = load_hf_policy(cfg.model, device)
    else:
        tokenizer = WordTokenizer()
        policy = TinyCausalLM(tokenizer.vocab_size).to(device)
    if cfg.warmstart_steps:
        with tqdm(total=cfg.warmstart_steps, desc="warm start", disable=not progress, leave=False) as bar:
            warm_start(policy, tokenizer, lambda: make_env(cfg.env, **cfg.env_kwargs),
                       steps=cfg.warmstart_steps, context=cfg.context, seed=cfg.seed,
                       reasoning=cfg.reasoning, instructions=cfg.model is not None, progress=bar)
    return policy, tokenizer


def rollouts(policy, tokenizer, cfg: TrainConfig, seeds: list[int], group_size: int, generator):
    return collect(policy, tokenizer, lambda: make_env(cfg.env, **cfg.env_kwargs), seeds,
                   group_size=group_size, context=cfg.context, max_response_tokens=cfg.max_response_tokens,
                   temperature=cfg.temperature, instructions=cfg.model is not None, generator=generator)


def evaluate(policy, tokenizer, cfg: TrainConfig) -> float:
    """Success rate over ``cfg.eval_episodes`` fixed start states (sampled at ``cfg.temperature``)."""
    seeds = [EVAL_SEED_OFFSET + i for i in range(cfg.eval_episodes)]
    generator = torch.Generator().manual_seed(EVAL_SEED_OFFSET + cfg.seed)
    episodes = rollouts(policy, tokenizer, cfg, seeds, 1, generator)
    return sum(ep.success for ep in episodes) / len(episodes)


def episode_metrics(episodes) -> dict[str, float]:
    """Success rate, mean return, share of unparseable turns, turns and response tokens per episode,
    and the share of response tokens that are action tokens."""
    turns = [turn for ep in episodes for turn in ep.turns]
    tokens = sum(len(turn.response) for turn in turns)
    action_tokens = sum(turn.action_span[1] - turn.action_span[0] for turn in turns if turn.action_span)
    return {"success": sum(ep.success for ep in episodes) / len(episodes),
            "return": sum(ep.total_return for ep in episodes) / len(episodes),
            "format_error": sum(turn.action is None for turn in turns) / len(turns),
            "turns": len(turns) / len(episodes),
            "response_tokens": tokens / len(episodes),
            "action_token_share": action_tokens / max(tokens, 1)}


def train(cfg: TrainConfig, policy=None, tokenizer=None, progress: bool = True,
          initial_success: float | None = None) -> TrainResult:
    """Run ``cfg.steps`` RL steps (warm-starting a fresh policy unless one is given).

    Each step plays ``prompts`` start states: GRPO ``group_size`` rollouts each, PPO one rollout
    from each of ``prompts * group_size`` start states, so both see the same number of episodes.
    ``initial_success`` (the given policy's ``evaluate``) skips measuring it again. ``report.write_run``
    writes the result's files.
    """
    started = time.time()
    if policy is None:
        policy, tokenizer = prepare_policy(cfg, progress)
    rng = random.Random(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    learner = Learner(policy, cfg.algo_config(), cfg.context)
    device = next(policy.parameters()).device
    initial = evaluate(policy, tokenizer, cfg) if initial_success is None else initial_success
    records = []
    bar = tqdm(range(1, cfg.steps + 1), desc=f"{cfg.label} seed {cfg.seed}", disable=not progress, leave=False)
    for step in bar:
        group_size = cfg.group_size if cfg.algo == "grpo" else 1
        count = cfg.prompts if cfg.algo == "grpo" else cfg.prompts * cfg.group_size
        seeds = [rng.randrange(EVAL_SEED_OFFSET) for _ in range(count)]
        episodes = rollouts(policy, tokenizer, cfg, seeds, group_size, generator)
        batch = build_batch(episodes, tokenizer.pad_id).to(device)
        returns = torch.tensor([ep.total_return for ep in episodes])
        groups = torch.tensor([ep.group for ep in episodes])
        record = {"step": step, **episode_metrics(episodes),
                  **learner.update(batch, returns, groups, generator), "seconds": time.time() - started}
        records.append(record)
        bar.set_postfix(success=f"{record['success']:.2f}")
    final = evaluate(policy, tokenizer, cfg)
    return TrainResult(records, initial, final, policy, time.time() - started)
