"""Policies: a tiny causal transformer with a value head, or a local Hugging Face causal LM.

Both are called as ``policy(ids, valid, cache=None) -> PolicyOutput`` with ``ids [B, T]`` and
``valid [B, T]`` (False on padding, left or right). Position ``t`` predicts token ``t + 1``:
``logits[:, t]`` are the logits of the next token and ``values[:, t]`` the value of the state after
token ``t``. Position ids count the valid tokens before ``t``, so padding changes nothing.
``cache`` continues a previous call (incremental decoding): the new tokens attend to every cached
valid token.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PolicyOutput:
    """Next-token ``logits [B, T, V]``, ``values [B, T]`` and the cache for incremental decoding."""

    logits: torch.Tensor
    values: torch.Tensor
    cache: Optional[object] = None


@dataclass
class KVCache:
    """Per-layer keys/values ``[B, H, S, D]``, key validity ``[B, S]`` and the next position ``[B]``."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: torch.Tensor
    next_position: torch.Tensor


def positions_of(valid: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Position ids ``[B, T]``: ``start [B]`` plus the count of earlier valid tokens."""
    return start[:, None] + valid.long().cumsum(1) - 1


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln_attn = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln_mlp = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x, allowed, past_keys=None, past_values=None):
        batch, length, d_model = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).view(batch, length, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        if past_keys is not None:
            k, v = torch.cat([past_keys, k], 2), torch.cat([past_values, v], 2)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, d_model))
        return x + self.mlp(self.ln_mlp(x)), k, v


class TinyCausalLM(nn.Module):
    """A GPT-style decoder (learned positions, pre-norm blocks) with a linear value head.

    With the defaults (``d_model=64``, 3 layers, 4 heads, ``max_len=2048``, enough for a whole 8x8
    FrozenLake trajectory with ``--context full``) and the word vocabulary it has about 290k
    parameters.
    """

    def __init__(self, vocab_size: int, d_model: int = 64, n_layers: int = 3, n_heads: int = 4,
                 max_len: int = 2048):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers,
                           n_heads=n_heads, max_len=max_len)
        self.max_len = max_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_out = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.value_head = nn.Linear(d_model, 1)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor, valid: torch.Tensor, cache: Optional[KVCache] = None) -> PolicyOutput:
        batch, length = ids.shape
        past = 0 if cache is None else cache.valid.shape[1]
        start = torch.zeros(batch, dtype=torch.long, device=ids.device) if cache is None else cache.next_position
        positions = positions_of(valid, start)
        if int(positions.max()) >= self.max_len:
            raise ValueError(f"sequence position {int(positions.max())} exceeds max_len={self.max_len}")
        key_valid = valid if cache is None else torch.cat([cache.valid, valid], 1)
        query_index = torch.arange(length, device=ids.device)[:, None] + past
        key_index = torch.arange(past + length, device=ids.device)[None, :]
        allowed = (key_index <= query_index) & key_valid[:, None, :]
        allowed |= key_index == query_index  # a padded query attends to itself rather than to nothing
        x = self.embed(ids) + self.position(positions.clamp(min=0))
        keys, values = [], []
        for layer, block in enumerate(self.blocks):
            past_k = None if cache is None else cache.keys[layer]
            past_v = None if cache is None else cache.values[layer]
            x, k, v = block(x, allowed, past_k, past_v)
            keys.append(k)
            values.append(v)
        hidden = self.ln_out(x)
        next_position = positions[:, -1] + 1 if length else start
        new_cache = KVCache(keys, values, key_valid, torch.maximum(next_position, start))
        return PolicyOutput(self.lm_head(hidden), self.value_head(hidden).squeeze(-1), new_cache)


class HFPolicy(nn.Module):
    """A local Hugging Face causal LM with a linear value head on its last hidden state.

    Padding is expressed by the attention mask and explicit position ids, so left-padded prompts
    and incremental decoding with the model's key/value cache work.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.value_head = nn.Linear(model.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        # transformers 5 renamed the cache argument ``past_key_values`` to ``cache``
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def forward(self, ids, valid, cache=None) -> PolicyOutput:
        past, past_valid, start = (None, valid[:, :0], torch.zeros_like(ids[:, 0])) if cache is None else cache
        positions = positions_of(valid, start).clamp(min=0)
        attention_mask = torch.cat([past_valid, valid], 1).long()
        out = self.model(input_ids=ids, attention_mask=attention_mask, position_ids=positions,
                         use_cache=True, output_hidden_states=True, **{self.cache_arg: past})
        hidden = out.hidden_states[-1]
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        new_cache = (getattr(out, self.cache_arg), attention_mask.bool(), positions[:, -1] + 1)
        return PolicyOutput(out.logits, values, new_cache)


def load_hf_policy(path: str, device: torch.device):
    """``(HFPolicy, tokenizer)`` from a local directory holding a causal LM and its tokenizer."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as error:
        raise SystemExit("--model needs the `transformers` package (pip install transformers); "
                         "without it use the built-in policy (omit --model)") from error
    from .hf_tokenizer import HFTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))
    return HFPolicy(model).to(device), tokenizer


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def save_policy(policy: TinyCausalLM, path: str) -> None:
    """Save a built-in policy (config + weights) to ``path``."""
    torch.save({"config": policy.config, "state_dict": policy.state_dict()}, path)


def load_policy(path: str, device: torch.device) -> TinyCausalLM:
    """Load a built-in policy written by ``save_policy``."""
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    policy = TinyCausalLM(**checkpoint["config"]).to(device)
    policy.load_state_dict(checkpoint["state_dict"])
    return policy
