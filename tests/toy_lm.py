"""A tiny causal LM and tokenizer built offline, for the integration tests (no download).

``toy_tokenizer()``: a ``tokenizers`` WordLevel tokenizer over ``WORDS`` (whitespace split, decoded
with spaces) wrapped in ``PreTrainedTokenizerFast``, so it has character offsets.
``toy_model_dir(path)``: a randomly initialised one-layer Qwen2 saved with ``save_pretrained``
(TRL loads a reference model from the policy's path); ``initializer_range=0.5`` spreads the token
entropies so that entropy quantiles are not decided by float rounding.
``toy_family(name)``: the same shape in a family whose forward transforms its logits (``FAMILIES``).
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


# model family -> (transformers class prefix, the config fields TRL's fused head reads)
FAMILIES = {"gemma2": ("Gemma2", dict(head_dim=16, final_logit_softcapping=30.0)),
            "cohere": ("Cohere", dict(logit_scale=0.5)),
            "granite": ("Granite", dict(logits_scaling=4.0))}


def toy_family(name: str, seed: int = 0):
    """A one-layer model of a family whose logits TRL's fused head transforms: Gemma 2's final-logit
    softcapping (30, reached by the large initial weights), Cohere's ``logit_scale`` and Granite's
    ``logits_scaling`` (its logits divided by it)."""
    import transformers

    prefix, fields = FAMILIES[name]
    config = getattr(transformers, f"{prefix}Config")(
        vocab_size=len(SPECIALS) + len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False,
        initializer_range=0.5, pad_token_id=0, eos_token_id=1, bos_token_id=1, **fields)
    torch.manual_seed(seed)
    return getattr(transformers, f"{prefix}ForCausalLM")(config)


def toy_model_dir(path) -> str:
    toy_model().save_pretrained(path)
    return str(path)


def toy_reward(completions, **kwargs):
    """Rewards moving left and answering, a little against length."""
    return [float(c.count("left")) + float("<answer>" in c) - 0.1 * len(c.split()) for c in completions]
