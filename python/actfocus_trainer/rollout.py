"""Multi-turn rollouts: the policy writes one turn per environment step.

Each turn the policy is shown a prompt ``<obs> observation </obs>`` (preceded, with
``context="full"``, by the whole trajectory so far) and samples a response token by token at
``temperature`` until the turn ends (``</answer>``) or ``max_response_tokens`` is reached. The
response is parsed strictly (``turn_format.parse_turn``) and its action, or None, is played.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .envs import TextEnv
from .turn_format import action_char_span, observation_prompt, parse_turn


@dataclass
class Turn:
    """One turn: prompt and response token ids, the sampling log-probs of the response tokens,
    the action span ``[start, end)`` in response tokens (the text between ``<answer>`` and
    ``</answer>``; None without one), the action played (None when unparseable) and its reward."""

    prompt: list[int]
    response: list[int]
    sample_logp: list[float]
    action_span: tuple[int, int] | None
    action: str | None
    reward: float


@dataclass
class Episode:
    """A finished trajectory; ``group`` indexes the start state it shares with other rollouts."""

    seed: int
    group: int
    turns: list[Turn] = field(default_factory=list)
    success: bool = False

    @property
    def total_return(self) -> float:
        return sum(turn.reward for turn in self.turns)


def action_token_span(tokenizer, response: list[int]) -> tuple[int, int] | None:
    """Tokens ``[start, end)`` of ``response`` whose decoded text overlaps the action text of its
    last ``<answer> ... </answer>`` (``turn_format.action_char_span``), or None.

    Token i covers the characters between ``len(decode(response[:i]))`` and
    ``len(decode(response[:i + 1]))``, which works for word-level and subword tokenizers alike.
    """
    span = action_char_span(tokenizer.decode(response))
    if span is None:
        return None
    ends = [len(tokenizer.decode(response[:i + 1])) for i in range(len(response))]
    starts = [0] + ends[:-1]
    tokens = [i for i in range(len(response)) if starts[i] < span[1] and ends[i] > span[0]]
    return tokens[0], tokens[-1] + 1


@torch.no_grad()
def generate(policy, tokenizer, contexts: list[list[int]], max_new_tokens: int, temperature: float,
             generator: torch.Generator | None = None) -> tuple[list[list[int]], list[list[float]]]:
    """Sample one turn for each context (left-padded into a batch, decoded with the cache).

    Returns the response ids and the log-probability of each sampled token under the sampling
    distribution ``softmax(z / temperature)``.
    """
    device = next(policy.parameters()).device
    width = max(len(c) for c in contexts)
    ids = torch.full((len(contexts), width), tokenizer.pad_id, dtype=torch.long)
    valid = torch.zeros(len(contexts), width, dtype=torch.bool)
    for row, context in enumerate(contexts):
        ids[row, width - len(context):] = torch.tensor(context)
        valid[row, width - len(context):] = True
    out = policy(ids.to(device), valid.to(device))
    responses = [[] for _ in contexts]
    logps = [[] for _ in contexts]
    active = torch.ones(len(contexts), dtype=torch.bool)
    for _ in range(max_new_tokens):
        logprobs = torch.log_softmax(out.logits[:, -1].float() / temperature, dim=-1).cpu()
        tokens = torch.multinomial(logprobs.exp(), 1, generator=generator).squeeze(1)
        for row in torch.nonzero(active).flatten().tolist():
            responses[row].append(int(tokens[row]))
            logps[row].append(float(logprobs[row, tokens[row]]))
            if tokenizer.ends_turn(responses[row]):
                active[row] = False
        if not active.any():
            break
        out = policy(tokens[:, None].to(device), active[:, None].to(device), cache=out.cache)
    return responses, logps


def collect(policy, tokenizer, make_env: Callable[[], TextEnv], seeds: list[int], *,
            group_size: int = 1, context: str = "turn", max_response_tokens: int = 16,
            temperature: float = 1.0, instructions: bool = False,
            generator: torch.Generator | None = None) -> list[Episode]:
    """Play ``group_size`` episodes from each start state ``seeds[g]`` (group ``g``), all in one batch.

    Rollouts of one group share the layout and differ in their sampling and move noise.
    ``instructions`` prepends the environment's instructions to the first prompt (for pretrained
    models). Returns the finished episodes in group order.
    """
    if context not in ("turn", "full"):
        raise ValueError(f"context must be 'turn' or 'full', got {context!r}")
    envs, episodes, observations = [], [], []
    for group, seed in enumerate(seeds):
        for k in range(group_size):
            env = make_env()
            observations.append(env.reset(seed, dynamics_seed=seed * 1000 + k))
            envs.append(env)
            episodes.append(Episode(seed, group))
    while True:
        live = [i for i, env in enumerate(envs) if not env.done]
        if not live:
            return episodes
        prompts, contexts = {}, []
        for i in live:
            first = instructions and not episodes[i].turns
            prompts[i] = tokenizer.encode(observation_prompt(observations[i], envs[i].instructions if first else ""))
            history = [t for turn in episodes[i].turns for t in turn.prompt + turn.response]
            contexts.append((history if context == "full" else []) + prompts[i])
        responses, logps = generate(policy, tokenizer, contexts, max_response_tokens, temperature, generator)
        for i, response, logp in zip(live, responses, logps):
            action = parse_turn(tokenizer.decode(response), envs[i].actions)
            result = envs[i].step(action)
            observations[i] = envs[i].render()
            span = action_token_span(tokenizer, response)
            episodes[i].turns.append(Turn(prompts[i], response, logp, span, action, result.reward))
            episodes[i].success = result.success
