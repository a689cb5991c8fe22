"""Strict parsing of ``<think> ... </think> <answer> Action </answer>`` and the word tokenizer."""
import pytest

from actfocus_trainer.envs import ACTIONS
from actfocus_trainer.tokenizer import WordTokenizer
from actfocus_trainer.turn_format import action_char_span, format_turn, observation_prompt, parse_turn


@pytest.mark.parametrize("text, action", [
    ("<think> the goal is down </think> <answer> Down </answer>", "Down"),
    ("  <think>go</think><answer>Left</answer>\n", "Left"),
    ("<think> </think> <answer> Up </answer>", "Up"),
    ("<think>a\nb</think>\n<answer>\nRight\n</answer>", "Right"),
])
def test_well_formed_turns(text, action):
    assert parse_turn(text, ACTIONS) == action


@pytest.mark.parametrize("text", [
    "",
    "<answer> Down </answer>",  # no think
    "<think> down </think>",  # no answer
    "<think> down </think> <answer> </answer>",  # empty answer
    "<think> x </think> <answer> Down Left </answer>",  # two words
    "<think> x </think> <answer> down </answer>",  # case-sensitive
    "<think> x </think> <answer> North </answer>",  # not an action
    "I think <think> x </think> <answer> Down </answer>",  # text before
    "<think> x </think> <answer> Down </answer> ok",  # text after
    "<think> x </think> <answer> Down </answer> <answer> Up </answer>",  # two answers
    "<think> x <think> y </think> <answer> Down </answer>",  # tag inside the reasoning
    "<think> x <answer> Up </answer> </think> <answer> Down </answer>",
    "<think> x </think> <answer> Down",  # unclosed
    "<answer> Down </answer> <think> x </think>",  # wrong order
])
def test_malformed_turns(text):
    assert parse_turn(text, ACTIONS) is None


def test_format_and_action_span():
    text = format_turn("go right", "Right")
    assert parse_turn(text, ACTIONS) == "Right"
    start, end = action_char_span(text)
    assert text[start:end] == "Right"
    text = "<think> x </think> <answer> Up </answer><answer>\n Go  left </answer>"
    assert text[slice(*action_char_span(text))] == "Go  left"  # the last answer, even if unparseable
    assert action_char_span("<think> x </think>") is None
    assert action_char_span("<think> x </think> <answer> Left") is None
    assert action_char_span("<think> x </think> <answer> </answer>") is None


def test_observation_prompt():
    assert observation_prompt("P F | F G") == "<obs> P F | F G </obs>"
    assert observation_prompt("P F", "Reach G.") == "Reach G. <obs> P F </obs>"


def test_word_tokenizer():
    tok = WordTokenizer()
    text = format_turn("the goal is near", "Up")
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) == 9
    assert tok.encode("zebra") == [tok.unk_id]
    assert tok.ends_turn(ids) and not tok.ends_turn(ids[:-1]) and not tok.ends_turn([])
    assert len(set(tok.words)) == tok.vocab_size
    assert all(tok.encode(a) != [tok.unk_id] for a in ACTIONS + ("P", "H", "$", "*", "@", "|", "#"))
