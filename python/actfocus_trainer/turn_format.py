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


def observation_prompt(observation: str, instructions: str = "") -> str:
    """The prompt of a turn: ``<obs> observation </obs>``, after ``instructions`` when given."""
    return f"{instructions} <obs> {observation} </obs>" if instructions else f"<obs> {observation} </obs>"


def format_turn(reasoning: str, action: str) -> str:
    """The canonical text of a turn (used by the warm start)."""
    return f"<think> {reasoning} </think> <answer> {action} </answer>"


def action_char_span(text: str) -> tuple[int, int] | None:
    """Character span ``[start, end)`` of the action text inside the last ``<answer> ... </answer>``
    of ``text`` (surrounding whitespace excluded), or None when there is no closed, non-empty one."""
    opening = text.rfind("<answer>")
    closing = text.find("</answer>", opening)
    if opening < 0 or closing < 0:
        return None
    inner = text[opening + len("<answer>"):closing]
    if not inner.strip():
        return None
    start = opening + len("<answer>") + len(inner) - len(inner.lstrip())
    return start, start + len(inner.strip())
