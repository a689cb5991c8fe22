"""Warm-start reasoning: the templated text is a function of the state; random words are the control."""
import random

import pytest

from actfocus_trainer.envs import FrozenLake, Sokoban, make_env
from actfocus_trainer.envs.sokoban import Level
from actfocus_trainer.reasoning import random_reasoning, reasoning_for, templated_reasoning
from actfocus_trainer.tokenizer import WordTokenizer
from actfocus_trainer.turn_format import format_turn, parse_turn
from actfocus_trainer.warmstart import random_format_episode


def test_frozenlake_template_names_position_and_what_each_move_meets():
    env = FrozenLake()  # SFFF / FHFH / FFFH / HFFG
    env.reset(0)
    assert templated_reasoning(env) == "at 0 0 up wall down safe left wall right safe"
    env.step("Right")  # (0, 1): the hole is below
    assert templated_reasoning(env) == "at 0 1 up wall down hole left safe right safe"
    env.pos = (3, 2)
    assert templated_reasoning(env) == "at 3 2 up safe down wall left safe right goal"


def test_sokoban_template_tells_a_push_from_a_blocked_box():
    env = Sokoban()
    walls = frozenset((r, c) for r in range(6) for c in range(6) if r in (0, 5) or c in (0, 5))
    env.level = Level(6, walls, target=(1, 3), box=(2, 2), player=(2, 3))
    env.box, env.player = env.level.box, env.level.player
    assert templated_reasoning(env) == "at 2 3 up target down safe left push right safe"
    env.box = (2, 1)  # against the wall: the player at (2, 2) cannot push it left
    env.player = (2, 2)
    assert templated_reasoning(env) == "at 2 2 up safe down safe left blocked right safe"


@pytest.mark.parametrize("name", ["frozenlake", "sokoban"])
def test_templated_reasoning_is_a_function_of_the_observation(name):
    """Over many states reached by random play, equal observations always get equal reasoning,
    different reasoning never comes from one observation, and no randomness is consumed."""
    seen = {}
    rng = random.Random(0)
    for seed in range(40):
        env = make_env(name, **({"random_start": True} if name == "frozenlake" else {}))
        observation = env.reset(seed)
        while not env.done:
            state = rng.getstate()
            text = reasoning_for("templated", env, rng)
            assert rng.getstate() == state
            assert seen.setdefault(observation, text) == text
            env.step(rng.choice(env.actions))
            observation = env.render()
    assert len(set(seen.values())) > 10
    tokenizer = WordTokenizer()
    assert all(tokenizer.unk_id not in tokenizer.encode(text) for text in seen.values())


def test_warm_start_turns_carry_the_template_of_their_state_and_a_random_action():
    tokenizer = WordTokenizer()
    make = lambda: make_env("frozenlake", random_start=True)  # noqa: E731
    actions = []
    for seed in range(20):
        episode = random_format_episode(make, tokenizer, seed, random.Random(seed), reasoning="templated")
        env = make()
        env.reset(seed)
        for turn in episode.turns:
            text = tokenizer.decode(turn.response)
            assert text == format_turn(templated_reasoning(env), turn.action)
            assert parse_turn(text, env.actions) == turn.action
            actions.append(turn.action)
            env.step(turn.action)
    assert len(set(actions)) == 4  # the action stays a choice


def test_random_reasoning_is_the_control():
    rng = random.Random(0)
    texts = {random_reasoning(rng) for _ in range(50)}
    assert len(texts) > 40 and all(2 <= len(t.split()) <= 6 for t in texts)
    with pytest.raises(ValueError, match="reasoning"):
        reasoning_for("mystery", FrozenLake(), rng)
