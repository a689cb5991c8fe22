"""The action-span rule: which completion tokens are *actions* (SPEC sections 1, 9).

A rule maps the decoded completion text to character spans ``[start, end)``: a regex (every match
is a span, default ``<answer>.*?</answer>``, matched with ``re.DOTALL``) or a callable
``text -> [(start, end), ...]``. A token is an action token iff its character range
``[s, e)`` overlaps a span (``s < end`` and ``e > start``).

Token character ranges come from the fast tokenizer's offset mapping of the decoded text
(``return_offsets_mapping=True``) when re-tokenising that text gives back the same ids; otherwise
(a non-canonical tokenisation, e.g. sampled by the policy) from the lengths of the decoded prefixes,
``decode(ids[:j])``. A tokenizer without offsets (a slow tokenizer) is a clear error.
"""
from __future__ import annotations

import re
from typing import Callable, List, Sequence, Tuple, Union

import torch

Span = Tuple[int, int]
SpanRule = Union[str, Callable[[str], Sequence[Span]]]
DEFAULT_ACTION_PATTERN = r"<answer>.*?</answer>"


def check_span_rule(rule: SpanRule) -> None:
    """A rule is a compilable regex string or a callable; anything else is a ``TypeError``."""
    if isinstance(rule, str):
        try:
            re.compile(rule)
        except re.error as err:
            raise ValueError(f"action pattern {rule!r} is not a valid regex: {err}") from err
    elif not callable(rule):
        raise TypeError(f"the action-span rule must be a regex string or a callable text -> [(start, end)], "
                        f"got {type(rule).__name__}")


def check_offsets_tokenizer(tokenizer) -> None:
    """The span rule needs character offsets: a fast (``tokenizers``-backed) tokenizer."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"the ActFocus action-span rule needs the tokenizer's character offsets "
            f"(return_offsets_mapping), which {type(tokenizer).__name__} does not provide: use a fast tokenizer "
            "(PreTrainedTokenizerFast / AutoTokenizer.from_pretrained(..., use_fast=True)), or pass the action mask "
            "yourself")


def action_spans(text: str, rule: SpanRule) -> List[Span]:
    """The character spans of ``text`` the rule marks as actions."""
    if isinstance(rule, str):
        return [m.span() for m in re.finditer(rule, text, flags=re.DOTALL)]
    spans = [(int(a), int(b)) for a, b in rule(text)]
    for a, b in spans:
        if not 0 <= a <= b <= len(text):
            raise ValueError(f"the action-span callable returned span ({a}, {b}) outside the text of length "
                             f"{len(text)}")
    return spans


def token_char_ranges(tokenizer, ids: Sequence[int]) -> List[Span]:
    """The character range of each token of ``ids`` in ``tokenizer.decode(ids)``."""
    text = tokenizer.decode(ids)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(encoded["input_ids"]) == list(ids):
        return [tuple(o) for o in encoded["offset_mapping"]]
    ends = [len(tokenizer.decode(ids[: j + 1])) for j in range(len(ids))]
    return list(zip([0] + ends[:-1], ends))


def action_token_mask(tokenizer, completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                      rule: SpanRule) -> torch.Tensor:
    """``[B, C]`` float mask, 1 on the tokens of each completion (its ``completion_mask`` tokens,
    decoded with their special tokens) that overlap an action span of the rule."""
    out = torch.zeros(completion_ids.shape, dtype=torch.float32)
    for row, (ids, keep) in enumerate(zip(completion_ids.tolist(), completion_mask.bool().tolist())):
        positions = [j for j, k in enumerate(keep) if k]
        kept = [ids[j] for j in positions]
        if not kept:
            continue
        spans = action_spans(tokenizer.decode(kept), rule)
        for j, (s, e) in zip(positions, token_char_ranges(tokenizer, kept)):
            out[row, j] = float(any(s < b and e > a for a, b in spans))
    return out.to(completion_ids.device)
