"""Text environments and ``make_env``, which builds one from a short name.

Names: ``frozenlake`` (4x4), ``frozenlake8`` (8x8), each with ``-slippery`` appended for slippery
ice; ``sokoban`` (6x6, one box). Keyword arguments go to the environment's constructor.
"""
from __future__ import annotations

from .base import ACTIONS, StepResult, TextEnv
from .frozenlake import FrozenLake
from .sokoban import Sokoban, generate_level, solve

ENV_NAMES = ("frozenlake", "frozenlake-slippery", "frozenlake8", "frozenlake8-slippery", "sokoban")


def make_env(name: str, **kwargs) -> TextEnv:
    """Build the environment ``name`` (one of ``ENV_NAMES``)."""
    if name not in ENV_NAMES:
        raise ValueError(f"unknown environment {name!r}; choose one of {ENV_NAMES}")
    if name == "sokoban":
        return Sokoban(**kwargs)
    size = 8 if name.startswith("frozenlake8") else 4
    return FrozenLake(size=size, slippery=name.endswith("-slippery"), **kwargs)


__all__ = ["ACTIONS", "ENV_NAMES", "FrozenLake", "Sokoban", "StepResult", "TextEnv",
           "generate_level", "make_env", "solve"]
