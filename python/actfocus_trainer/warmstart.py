"""Supervised warm start: teach the turn format before RL.

Trajectories are played with uniformly random actions; each response is
``<think> reasoning </think> <answer> a </answer>`` with ``a`` the random action and the reasoning
random words or the state's template (``reasoning.reasoning_for``). Minimising the cross-entropy
``-mean_{t: loss_mask} log p(y_t)`` makes the policy write well-formed turns with near-uniform actions
(and, templated, near-certain reasoning), so RL starts from valid output and an untrained
success rate close to random play.
"""
from __future__ import annotations

import random
from typing import Callable

import torch
import torch.nn.functional as F

from .envs import TextEnv
from .masks import IGNORE_INDEX, build_batch, policy_forward
from .reasoning import reasoning_for
from .rollout import Episode, Turn, action_token_span
from .turn_format import format_turn, observation_prompt


def random_format_episode(make_env: Callable[[], TextEnv], tokenizer, seed: int, rng: random.Random,
                          reasoning: str = "random", instructions: bool = False) -> Episode:
    """One episode of well-formed turns with random actions (the warm-start data)."""
    env = make_env()
    observation = env.reset(seed)
    episode = Episode(seed, 0)
    while not env.done:
        first = instructions and not episode.turns
        prompt = tokenizer.encode(observation_prompt(observation, env.instructions if first else ""))
        thought = reasoning_for(reasoning, env, rng)
        action = rng.choice(env.actions)
        response = tokenizer.encode(format_turn(thought, action))
        result = env.step(action)
        observation = env.render()
        episode.turns.append(Turn(prompt, response, [0.0] * len(response),
                                  action_token_span(tokenizer, response), action, result.reward))
        episode.success = result.success
    return episode


def warm_start(policy, tokenizer, make_env: Callable[[], TextEnv], *, steps: int = 150,
               batch_size: int = 32, lr: float = 3e-3, context: str = "turn", seed: int = 0,
               reasoning: str = "random", instructions: bool = False, progress=None) -> list[float]:
    """Fit the policy to well-formed turns with random actions; returns the loss per step."""
    rng = random.Random(seed)
    device = next(policy.parameters()).device
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        episodes = [random_format_episode(make_env, tokenizer, rng.randrange(2**31), rng,
                                          reasoning=reasoning, instructions=instructions) for _ in range(batch_size)]
        batch = build_batch(episodes, tokenizer.pad_id).to(device)
        logits, _ = policy_forward(policy, batch, context)
        targets = batch.targets.masked_fill(batch.loss_mask == 0, IGNORE_INDEX)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if progress is not None:
            progress.update(1)
    return losses
