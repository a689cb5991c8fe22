"""Text environments driven one assistant turn at a time.

An environment shows its state as whitespace-separated words (so a word-level tokenizer can read
it), takes one action word per turn, and returns ``(reward, done)``. A turn whose text does not
parse is passed in as ``None``: the state does not change and the reward is ``idle_reward -
invalid_penalty``, where ``idle_reward`` is what a valid move that changes nothing earns, so a
malformed turn is always worse than a wasted valid one.
"""
from __future__ import annotations

from dataclasses import dataclass

ACTIONS = ("Up", "Down", "Left", "Right")
MOVES = {"Up": (-1, 0), "Down": (1, 0), "Left": (0, -1), "Right": (0, 1)}


@dataclass
class StepResult:
    """The outcome of one turn: the reward, whether the episode ended and whether it was won."""

    reward: float
    done: bool
    success: bool


class TextEnv:
    """Common bookkeeping: turn limit, invalid-turn penalty and the success flag.

    Subclasses implement ``_reset(seed, dynamics_seed)``, ``_move(action) -> (reward, done,
    success)`` and ``render()``, and set ``name``, ``symbols`` (the words ``render`` may emit) and
    ``idle_reward``.
    """

    name = "env"
    actions: tuple[str, ...] = ACTIONS
    symbols: tuple[str, ...] = ()
    instructions = ""
    idle_reward = 0.0

    def __init__(self, max_turns: int, invalid_penalty: float = 0.1):
        self.max_turns = max_turns
        self.invalid_penalty = invalid_penalty
        self.turn = 0
        self.done = False
        self.success = False

    def reset(self, seed: int, dynamics_seed: int | None = None) -> str:
        """Start the episode whose layout ``seed`` determines; ``dynamics_seed`` (default ``seed``)
        seeds any randomness of the moves, so rollouts of one start state can differ. Returns the
        first observation."""
        self.turn = 0
        self.done = False
        self.success = False
        self._reset(seed, seed if dynamics_seed is None else dynamics_seed)
        return self.render()

    def step(self, action: str | None) -> StepResult:
        """Play one turn: ``action`` is an action word, or ``None`` for an unparseable turn."""
        if self.done:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        if action is None:
            reward, done, success = self.idle_reward - self.invalid_penalty, False, False
        elif action in self.actions:
            reward, done, success = self._move(action)
        else:
            raise ValueError(f"unknown action {action!r}; expected one of {self.actions}")
        self.turn += 1
        self.success = success
        self.done = done or self.turn >= self.max_turns
        return StepResult(reward, self.done, success)

    def _reset(self, seed: int, dynamics_seed: int) -> None:
        raise NotImplementedError

    def _move(self, action: str) -> tuple[float, bool, bool]:
        raise NotImplementedError

    def render(self) -> str:
        raise NotImplementedError

    def position(self) -> tuple[int, int]:
        """The player's ``(row, column)``."""
        raise NotImplementedError

    def outcome(self, action: str) -> str:
        """What ``action`` would meet from the current state, as one reasoning word (see
        ``reasoning.templated_reasoning``); a function of the state only."""
        raise NotImplementedError


def grid_text(rows: list[list[str]]) -> str:
    """Rows of cell words joined as ``a b c | d e f | ...`` (``|`` ends a row)."""
    return " | ".join(" ".join(row) for row in rows)
