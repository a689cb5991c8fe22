"""FrozenLake as in Gymnasium: walk on a frozen lake from the start to the goal without falling
into a hole.

Rules (Gymnasium ``FrozenLake-v1``): a move off the grid leaves the player in place; stepping on a
hole ends the episode with reward 0, reaching the goal ends it with reward 1, every other step
gives 0. On slippery ice the intended move happens with probability 1/3 and each of the two
perpendicular moves with probability 1/3.

Layouts: ``"standard"`` is Gymnasium's fixed 4x4 / 8x8 map; ``"random"`` draws a map from the seed
(each tile a hole with probability ``hole_prob``, start top-left, goal bottom-right, redrawn until a
hole-free path exists). ``random_start=True`` puts the player on a random frozen tile from which the
goal is reachable, which gives a spread of difficulties per layout.

Observation words: ``P`` player, ``F`` frozen, ``S`` start tile, ``H`` hole, ``G`` goal, ``|`` row end.
"""
from __future__ import annotations

import random
from collections import deque

from .base import MOVES, TextEnv, grid_text

STANDARD_MAPS = {
    4: ["SFFF", "FHFH", "FFFH", "HFFG"],
    8: ["SFFFFFFF", "FFFFFFFF", "FFFHFFFF", "FFFFFHFF",
        "FFFHFFFF", "FHHFFFHF", "FHFFHFHF", "FFFHFFFG"],
}
PERPENDICULAR = {"Up": ("Left", "Right"), "Down": ("Left", "Right"),
                 "Left": ("Up", "Down"), "Right": ("Up", "Down")}


def shortest_path_length(tiles: list[str], start: tuple[int, int]) -> int | None:
    """Breadth-first search over non-hole tiles: moves from ``start`` to ``G``, or None."""
    size = len(tiles)
    seen = {start}
    queue = deque([(start, 0)])
    while queue:
        (row, col), dist = queue.popleft()
        if tiles[row][col] == "G":
            return dist
        for d_row, d_col in MOVES.values():
            nxt = (row + d_row, col + d_col)
            if (0 <= nxt[0] < size and 0 <= nxt[1] < size and nxt not in seen
                    and tiles[nxt[0]][nxt[1]] != "H"):
                seen.add(nxt)
                queue.append((nxt, dist + 1))
    return None


def random_map(size: int, hole_prob: float, rng: random.Random) -> list[str]:
    """A ``size x size`` map with ``S`` top-left, ``G`` bottom-right and a hole-free path between."""
    while True:
        rows = [["H" if rng.random() < hole_prob else "F" for _ in range(size)] for _ in range(size)]
        rows[0][0], rows[-1][-1] = "S", "G"
        tiles = ["".join(row) for row in rows]
        if shortest_path_length(tiles, (0, 0)) is not None:
            return tiles


class FrozenLake(TextEnv):
    """FrozenLake with word observations; see the module docstring for rules and layouts."""

    name = "frozenlake"
    symbols = ("P", "F", "S", "H", "G", "|")
    instructions = ("You are on a frozen lake (P: you, F/S: ice, H: hole, G: goal). Reach the goal "
                    "without falling into a hole. Reply <think> ... </think> <answer> Action "
                    "</answer> with Action one of Up, Down, Left, Right.")

    def __init__(self, size: int = 4, slippery: bool = False, layout: str = "standard",
                 random_start: bool = False, hole_prob: float = 0.2, max_turns: int | None = None,
                 invalid_penalty: float = 0.1):
        if layout == "standard" and size not in STANDARD_MAPS:
            raise ValueError(f"standard FrozenLake maps are 4x4 or 8x8, got size {size}")
        if layout not in ("standard", "random"):
            raise ValueError(f"layout must be 'standard' or 'random', got {layout!r}")
        super().__init__(max_turns or 2 * size + 2, invalid_penalty)
        self.size, self.slippery, self.layout = size, slippery, layout
        self.random_start, self.hole_prob = random_start, hole_prob
        self.tiles: list[str] = []
        self.pos = (0, 0)
        self.rng = random.Random(0)

    def _reset(self, seed: int, dynamics_seed: int) -> None:
        layout_rng = random.Random(seed)
        if self.layout == "standard":
            self.tiles = STANDARD_MAPS[self.size]
        else:
            self.tiles = random_map(self.size, self.hole_prob, layout_rng)
        self.pos = (0, 0)
        if self.random_start:
            starts = [(r, c) for r in range(self.size) for c in range(self.size)
                      if self.tiles[r][c] in "SF" and shortest_path_length(self.tiles, (r, c))]
            self.pos = layout_rng.choice(starts)
        self.rng = random.Random(dynamics_seed)

    def _move(self, action: str) -> tuple[float, bool, bool]:
        if self.slippery:
            action = self.rng.choice((action, *PERPENDICULAR[action]))
        d_row, d_col = MOVES[action]
        row = min(max(self.pos[0] + d_row, 0), self.size - 1)
        col = min(max(self.pos[1] + d_col, 0), self.size - 1)
        self.pos = (row, col)
        tile = self.tiles[row][col]
        if tile == "G":
            return 1.0, True, True
        return 0.0, tile == "H", False

    def render(self) -> str:
        rows = [list(line) for line in self.tiles]
        rows[self.pos[0]][self.pos[1]] = "P"
        return grid_text(rows)

    def position(self) -> tuple[int, int]:
        return self.pos

    def outcome(self, action: str) -> str:
        """``wall`` (off the grid: no move), ``hole``, ``goal`` or ``safe`` ice for the intended move."""
        row, col = self.pos[0] + MOVES[action][0], self.pos[1] + MOVES[action][1]
        if not (0 <= row < self.size and 0 <= col < self.size):
            return "wall"
        return {"H": "hole", "G": "goal"}.get(self.tiles[row][col], "safe")

    def optimal_turns(self) -> int | None:
        """Moves on the shortest hole-free path from the current tile (deterministic ice)."""
        return shortest_path_length(self.tiles, self.pos)
