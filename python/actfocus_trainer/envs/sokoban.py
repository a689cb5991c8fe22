"""Sokoban with one box in a 6x6 room, as in gym-sokoban (the environment RAGEN trains on).

Rules: the player moves one tile per turn; walking into the box pushes it one tile if the tile
behind it is free (not a wall), otherwise nothing moves. Reward per turn (gym-sokoban): -0.1,
+1 when the box is pushed onto the target, -1 when pushed off it, +10 when the puzzle is solved
(the box on the target), which ends the episode with success.

Levels come from reverse play: put the box on the target, then walk the player randomly, sometimes
pulling the box (the reverse of a push). Every state reached that way can be pushed back, so the
level is solvable; ``generate_level`` also checks it with the breadth-first ``solve`` and keeps only
levels whose shortest solution fits in the turn limit.

Observation words (XSB notation): ``#`` wall, ``_`` floor, ``.`` target, ``$`` box, ``*`` box on
target, ``@`` player, ``+`` player on target, ``|`` row end.
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from .base import MOVES, TextEnv, grid_text

Cell = tuple[int, int]


@dataclass(frozen=True)
class Level:
    """A one-box level: ``walls`` is the set of wall tiles; the rest is floor."""

    size: int
    walls: frozenset[Cell]
    target: Cell
    box: Cell
    player: Cell


def _add(cell: Cell, move: tuple[int, int]) -> Cell:
    return cell[0] + move[0], cell[1] + move[1]


def solve(level: Level, max_moves: int = 200) -> list[str] | None:
    """Shortest action sequence that puts the box on the target (BFS over (player, box)), or None."""
    start = (level.player, level.box)
    parents: dict = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        player, box = state
        if box == level.target:
            path = []
            while parents[state] is not None:
                state, action = parents[state]
                path.append(action)
            return path[::-1]
        for action, move in MOVES.items():
            nxt_player, nxt_box = _add(player, move), box
            if nxt_player in level.walls:
                continue
            if nxt_player == box:
                nxt_box = _add(box, move)
                if nxt_box in level.walls:
                    continue
            nxt = (nxt_player, nxt_box)
            if nxt not in parents:
                parents[nxt] = (state, action)
                queue.append(nxt)
        if len(parents) > max_moves * 10_000:
            break
    return None


def _room(size: int, rng: random.Random, max_inner_walls: int) -> tuple[frozenset[Cell], list[Cell]]:
    """Border walls plus up to ``max_inner_walls`` inner walls, keeping the floor connected."""
    border = {(r, c) for r in range(size) for c in range(size) if r in (0, size - 1) or c in (0, size - 1)}
    inner = [(r, c) for r in range(1, size - 1) for c in range(1, size - 1)]
    while True:
        walls = border | set(rng.sample(inner, rng.randint(0, max_inner_walls)))
        floor = [cell for cell in inner if cell not in walls]
        reached, queue = {floor[0]}, deque([floor[0]])
        while queue:
            cell = queue.popleft()
            for move in MOVES.values():
                nxt = _add(cell, move)
                if nxt not in walls and nxt not in reached:
                    reached.add(nxt)
                    queue.append(nxt)
        if len(reached) == len(floor):
            return frozenset(walls), floor


def generate_level(seed: int, size: int = 6, reverse_steps: int = 12, max_inner_walls: int = 2,
                   max_solution: int = 10) -> Level:
    """A solvable level from ``seed`` by reverse play (see the module docstring).

    Reverse play: with the box on the target, repeat ``reverse_steps`` times: pick a direction; if
    the player can step that way it does, and when the box sits right behind it the box follows
    with probability 1/2 (a pull). Levels with the box still on the target, or whose shortest
    solution is longer than ``max_solution`` moves, are redrawn.
    """
    rng = random.Random(seed)
    while True:
        walls, floor = _room(size, rng, max_inner_walls)
        target = rng.choice(floor)
        box = target
        player = rng.choice([cell for cell in floor if cell != target])
        for _ in range(reverse_steps):
            move = rng.choice(list(MOVES.values()))
            nxt = _add(player, move)
            if nxt in walls or nxt == box:
                continue
            behind = (player[0] - move[0], player[1] - move[1])
            if behind == box and rng.random() < 0.5:
                box = player
            player = nxt
        if box == target:
            continue
        level = Level(size, walls, target, box, player)
        solution = solve(level)
        if solution is not None and len(solution) <= max_solution:
            return level


class Sokoban(TextEnv):
    """One-box Sokoban on generated levels; see the module docstring for rules and rewards."""

    name = "sokoban"
    idle_reward = -0.1
    symbols = ("#", "_", ".", "$", "*", "@", "+", "|")
    instructions = ("You are playing Sokoban (@: you, $: box, .: target, *: box on target, #: wall). "
                    "Push the box onto the target. Reply <think> ... </think> <answer> Action "
                    "</answer> with Action one of Up, Down, Left, Right.")

    def __init__(self, size: int = 6, reverse_steps: int = 12, max_inner_walls: int = 2,
                 max_turns: int = 10, invalid_penalty: float = 0.1):
        super().__init__(max_turns, invalid_penalty)
        self.size, self.reverse_steps, self.max_inner_walls = size, reverse_steps, max_inner_walls
        self.level: Level | None = None
        self.box = self.player = (0, 0)

    def _reset(self, seed: int, dynamics_seed: int) -> None:
        self.level = generate_level(seed, self.size, self.reverse_steps, self.max_inner_walls,
                                    max_solution=self.max_turns)
        self.box, self.player = self.level.box, self.level.player

    def _move(self, action: str) -> tuple[float, bool, bool]:
        move, target = MOVES[action], self.level.target
        nxt = _add(self.player, move)
        reward = self.idle_reward
        if nxt in self.level.walls:
            return reward, False, False
        if nxt == self.box:
            pushed = _add(self.box, move)
            if pushed in self.level.walls:
                return reward, False, False
            reward += (pushed == target) - (self.box == target)
            self.box = pushed
        self.player = nxt
        if self.box == target:
            return reward + 10.0, True, True
        return reward, False, False

    def render(self) -> str:
        level = self.level
        rows = [["#" if (r, c) in level.walls else "_" for c in range(level.size)] for r in range(level.size)]
        rows[level.target[0]][level.target[1]] = "."
        on_target = self.box == level.target
        rows[self.box[0]][self.box[1]] = "*" if on_target else "$"
        rows[self.player[0]][self.player[1]] = "+" if self.player == level.target else "@"
        return grid_text(rows)

    def position(self) -> tuple[int, int]:
        return self.player

    def outcome(self, action: str) -> str:
        """``wall`` (no move), ``push`` (the box moves), ``blocked`` (the box cannot move),
        ``target`` (an empty target tile) or ``safe`` floor."""
        move = MOVES[action]
        nxt = _add(self.player, move)
        if nxt in self.level.walls:
            return "wall"
        if nxt == self.box:
            return "blocked" if _add(self.box, move) in self.level.walls else "push"
        return "target" if nxt == self.level.target else "safe"

    def current_level(self) -> Level:
        """The level as it stands now (for the solver)."""
        return Level(self.size, self.level.walls, self.level.target, self.box, self.player)
