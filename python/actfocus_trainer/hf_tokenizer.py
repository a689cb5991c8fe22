"""Adapter giving a Hugging Face tokenizer the interface of ``WordTokenizer``."""
from __future__ import annotations


class HFTokenizer:
    """``encode``/``decode`` without special tokens; a turn ends at ``</answer>`` or EOS."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        if self.pad_id is None:
            raise ValueError("the Hugging Face tokenizer has neither a pad nor an EOS token")

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def ends_turn(self, ids: list[int]) -> bool:
        return bool(ids) and (ids[-1] == self.eos_id or self.decode(ids).rstrip().endswith("</answer>"))
