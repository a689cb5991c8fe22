"""A tiny causal LM and tokenizer built offline, for the integration tests (no download).

``toy_tokenizer()``: a ``tokenizers`` WordLevel tokenizer over ``WORDS`` (whitespace split, decoded
with spaces) wrapped in ``PreTrainedTokenizerFast``, so it has character offsets.
``toy_model_dir(path)``: a randomly initialised one-layer Qwen2 saved with ``save_pretrained``
(TRL loads a reference model from the policy's path); ``initializer_range=0.5`` spreads the token
entropies so that entropy quantiles are not decided by float rounding.
"""
from __future__ import annotations

import torch

WORDS = "think move left right up down <answer> </answer> a b c d e f".split()
SPECIALS = ["<pad>", "<eos>", "<unk>"]
PROMPTS = ["think a", "move b", "think c", "move d"]


def toy_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def toy_config(vocab_size: int = len(SPECIALS) + len(WORDS)):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                       tie_word_embeddings=False, initializer_range=0.5, pad_token_id=0, eos_token_id=1,
                       bos_token_id=1)


def toy_model(seed: int = 0, **config):
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(toy_config(**config))


def toy_model_dir(path) -> str:
    toy_model().save_pretrained(path)
    return str(path)


def toy_reward(completions, **kwargs):
    """Rewards moving left and answering, a little against length."""
    return [float(c.count("left")) + float("<answer>" in c) - 0.1 * len(c.split()) for c in completions]
