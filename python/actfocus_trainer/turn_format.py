"""The assistant turn format ``<think> reasoning </think> <answer> Action </answer>``.

Parsing is strict: after trimming surrounding whitespace the turn must be exactly one think span
followed by one answer span; the reasoning may be empty but must not contain a tag; the answer must
be exactly one of the environment's action words (case-sensitive). Anything else is unparseable.
"""
from __future__ import annotations

import re

TURN_PATTERN = re.compile(r"<think>(?P<think>.*?)</think>\s*<answer>\s*(?P<action>\S+)\s*</answer>", re.S)
TAG_PATTERN = re.compile(r"</?(think|answer)>")


def parse_turn(text: str, actions: tuple[str, ...]) -> str | None:
    """The action word of a well-formed turn, else None."""
    match = TURN_PATTERN.fullmatch(text.strip())
    if match is None or TAG_PATTERN.search(match["think"]) or match["action"] not in actions:
        return None
    return match["action"]


def format_turn(reasoning: str, action: str) -> str:
    """The canonical text of a turn (used by the warm start)."""
    return f"<think> {reasoning} </think> <answer> {action} </answer>"


def answer_char_span(text: str) -> tuple[int, int] | None:
    """Character span ``[start, end)`` of the last ``<answer> ... </answer>`` in ``text``, or None."""
    start = text.rfind("<answer>")
    end = text.find("</answer>", start)
    if start < 0 or end < 0:
        return None
    return start, end + len("</answer>")
