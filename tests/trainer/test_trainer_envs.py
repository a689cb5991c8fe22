"""Environment rules and the Sokoban generator's solvability."""
import random
from collections import Counter

import pytest

from actfocus_trainer.envs import FrozenLake, Sokoban, generate_level, make_env, solve
from actfocus_trainer.envs.frozenlake import STANDARD_MAPS, shortest_path_length
from actfocus_trainer.envs.sokoban import Level


def test_frozenlake_render_and_walls():
    env = FrozenLake()
    assert env.reset(0) == "P F F F | F H F H | F F F H | H F F G"
    assert env.step("Up").reward == 0.0 and env.pos == (0, 0)  # off the grid: stay
    assert env.step("Left").reward == 0.0 and env.pos == (0, 0)
    result = env.step("Right")
    assert (result.reward, result.done, env.pos) == (0.0, False, (0, 1))


def test_frozenlake_hole_ends_without_reward():
    env = FrozenLake()
    env.reset(0)
    env.step("Right")
    result = env.step("Down")  # (1, 1) is a hole
    assert (result.reward, result.done, result.success) == (0.0, True, False)
    with pytest.raises(RuntimeError):
        env.step("Down")


def test_frozenlake_goal_gives_reward_one():
    env = FrozenLake()
    env.reset(0)
    results = [env.step(a) for a in ("Down", "Down", "Right", "Right", "Down", "Right")]
    assert [r.reward for r in results] == [0, 0, 0, 0, 0, 1.0]
    assert results[-1].done and results[-1].success and env.success


def test_frozenlake_turn_limit_and_invalid_turn():
    env = FrozenLake(max_turns=3, invalid_penalty=0.1)
    env.reset(0)
    result = env.step(None)
    assert result.reward == pytest.approx(-0.1) and env.pos == (0, 0) and not result.done
    env.step("Up")
    assert env.step("Up").done and not env.success
    env.reset(0)
    with pytest.raises(ValueError, match="unknown action"):
        env.step("North")


def test_frozenlake_slippery_moves_intended_or_perpendicular_a_third_each():
    outcomes = Counter()
    env = FrozenLake(slippery=True)
    for k in range(3000):
        env.reset(0, dynamics_seed=k)
        env.pos = (2, 1)
        env.step("Right")
        outcomes[env.pos] += 1
    assert set(outcomes) == {(2, 2), (1, 1), (3, 1)}  # never backwards
    for count in outcomes.values():
        assert abs(count / 3000 - 1 / 3) < 0.04


def test_frozenlake_standard_maps_and_random_layouts():
    assert shortest_path_length(STANDARD_MAPS[4], (0, 0)) == 6
    assert shortest_path_length(STANDARD_MAPS[8], (0, 0)) == 14
    env = make_env("frozenlake8")
    assert env.size == 8 and env.max_turns == 18
    for seed in range(30):
        env = FrozenLake(layout="random", random_start=True)
        env.reset(seed)
        assert env.optimal_turns() is not None and env.tiles[env.pos[0]][env.pos[1]] in "SF"
        assert env.tiles[0][0] == "S" and env.tiles[3][3] == "G"
    assert FrozenLake(layout="random").reset(5) == FrozenLake(layout="random").reset(5)


def level(walls=(), target=(1, 3), box=(1, 2), player=(1, 1)) -> Level:
    border = {(r, c) for r in range(6) for c in range(6) if r in (0, 5) or c in (0, 5)}
    return Level(6, frozenset(border | set(walls)), target, box, player)


def sokoban_at(lvl: Level) -> Sokoban:
    env = Sokoban()
    env.reset(0)
    env.level, env.box, env.player = lvl, lvl.box, lvl.player
    return env


def test_sokoban_push_onto_target_solves():
    env = sokoban_at(level())
    assert env.render().split(" | ")[1] == "# @ $ . _ #"
    result = env.step("Right")
    assert result.reward == pytest.approx(-0.1 + 1 + 10) and result.done and result.success
    assert env.render().split(" | ")[1] == "# _ @ * _ #"


def test_sokoban_blocked_moves_and_box_off_target():
    env = sokoban_at(level(walls=[(1, 3)], target=(2, 2)))
    assert env.step("Right").reward == pytest.approx(-0.1) and env.player == (1, 1)  # box against wall
    assert env.step("Up").reward == pytest.approx(-0.1) and env.player == (1, 1)  # wall
    env = sokoban_at(level(target=(1, 2), box=(1, 2)))
    result = env.step("Right")  # pushes the box off the target
    assert result.reward == pytest.approx(-0.1 - 1) and not result.done and env.box == (1, 3)


def test_solver_finds_shortest_and_detects_dead_ends():
    assert solve(level()) == ["Right"]
    assert solve(level(target=(1, 4))) == ["Right", "Right"]
    assert solve(level(target=(3, 3), box=(2, 2), player=(2, 1))) == ["Right", "Up", "Right", "Down"]
    assert solve(level(target=(2, 3))) is None  # a box against a wall stays on it
    assert solve(level(target=(3, 3), box=(1, 1), player=(2, 2))) is None  # box stuck in a corner


@pytest.mark.parametrize("seed", range(40))
def test_generated_levels_are_solvable_within_the_turn_limit(seed):
    lvl = generate_level(seed)
    assert lvl.box != lvl.target and lvl.player not in (lvl.box,) and lvl.player not in lvl.walls
    assert generate_level(seed) == lvl
    solution = solve(lvl)
    assert solution is not None and 1 <= len(solution) <= 10
    env = Sokoban()
    env.reset(seed)
    for action in solution:
        result = env.step(action)
    assert result.success and result.done


def test_random_play_sometimes_wins_sokoban():
    rng, wins = random.Random(0), 0
    env = make_env("sokoban")
    for seed in range(200):
        env.reset(seed)
        while not env.done:
            env.step(rng.choice(env.actions))
        wins += env.success
    assert 0 < wins < 200


def test_unparseable_turn_costs_more_than_a_wasted_move():
    env = sokoban_at(level(walls=[(1, 2)], box=(2, 2)))
    wasted = env.step("Right")  # into a wall
    invalid = env.step(None)
    assert invalid.reward == pytest.approx(wasted.reward - env.invalid_penalty) and env.turn == 2
