"""What the warm start writes between ``<think>`` and ``</think>``: random words or a template.

- ``random`` (the control): ``k`` words drawn uniformly from ``REASONING_WORDS``, ``k`` uniform in
  ``[2, 6]``. The words carry no information, so a warm-started policy is as uncertain about them
  as about the action, and there is no Action Bottleneck to relieve.
- ``templated``: ``at r c up o_up down o_down left o_left right o_right``, where ``(r, c)`` is the
  player's cell and ``o_a = env.outcome(a)`` what move ``a`` would meet (FrozenLake: ``wall``,
  ``hole``, ``goal``, ``safe``; Sokoban: ``wall``, ``push``, ``blocked``, ``target``, ``safe``).
  The text is a function of the state alone (the observation shows the whole state), so a policy
  can learn to write it with near certainty, while the action, uniform in the warm-start data,
  stays a real choice: low-entropy reasoning tokens around one high-entropy action token.
"""
from __future__ import annotations

import random

from .envs import TextEnv
from .tokenizer import REASONING_WORDS

REASONING_MODES = ("random", "templated")


def templated_reasoning(env: TextEnv) -> str:
    """The template above for ``env``'s current state."""
    row, col = env.position()
    return " ".join([f"at {row} {col}"] + [f"{action.lower()} {env.outcome(action)}" for action in env.actions])


def random_reasoning(rng: random.Random, min_words: int = 2, max_words: int = 6) -> str:
    """``k ~ U[min_words, max_words]`` words drawn uniformly from ``REASONING_WORDS``."""
    return " ".join(rng.choices(REASONING_WORDS, k=rng.randint(min_words, max_words)))


def reasoning_for(mode: str, env: TextEnv, rng: random.Random) -> str:
    """The reasoning ``mode`` (one of ``REASONING_MODES``) writes for ``env``'s state."""
    if mode == "templated":
        return templated_reasoning(env)
    if mode == "random":
        return random_reasoning(rng)
    raise ValueError(f"reasoning must be one of {REASONING_MODES}, got {mode!r}")
