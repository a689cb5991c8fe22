"""GRPO and PPO updates on the fused policy loss, optionally with ActFocus token weights.

Per batch, once: a no-grad forward of the rollout policy gives ``old_logp`` (and, with ActFocus,
the energies) through ``token_stats``, and the advantages:

- GRPO: the return ``R_i`` of rollout ``i`` normalised within its group (rollouts of one start
  state): ``A_i = (R_i - mean_g R) / (std_g R + 1e-6)``, broadcast over the rollout's tokens.
- PPO: token-level GAE over the generated tokens in order, with the turn reward on each turn's
  last token: ``delta_t = r_t + gamma V_{t'} - V_t``, ``A_t = delta_t + gamma lambda A_{t'}``
  (``t'`` the next generated token, ``V = 0`` after the last), returns ``A_t + V_t``, advantages
  whitened over the batch; the value head is fit with ``value_coef * mean 0.5 (V - return)^2``.

ActFocus (``source="old"``): ``w = actfocus_weights(token_stats(old logits), loss_mask,
action_mask)`` is passed to ``policy_loss`` as ``weights`` for every epoch. Then ``epochs`` passes
over ``minibatches`` shuffled row minibatches minimise ``policy_loss`` (+ the value loss).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from actfocus_kernels import ActFocusConfig, PolicyLossConfig, actfocus_weights, policy_loss, token_stats

from .masks import Batch, policy_forward


@dataclass
class AlgoConfig:
    """Update hyper-parameters; ``loss`` and ``actfocus_cfg`` are the library's configs."""

    algo: str = "grpo"
    actfocus: bool = False
    actfocus_cfg: ActFocusConfig = field(default_factory=ActFocusConfig)
    loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    epochs: int = 2
    minibatches: int = 2
    lr: float = 1e-3
    max_grad_norm: float = 1.0
    gamma: float = 1.0
    lam: float = 0.95
    value_coef: float = 0.5
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.algo not in ("grpo", "ppo"):
            raise ValueError(f"algo must be 'grpo' or 'ppo', got {self.algo!r}")


def grpo_advantages(returns: torch.Tensor, groups: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(R_i - mean_g R) / (std_g R + eps)`` within each group (population std); ``[B] -> [B]``."""
    advantages = torch.zeros_like(returns)
    for group in groups.unique():
        members = groups == group
        group_returns = returns[members]
        advantages[members] = (group_returns - group_returns.mean()) / (group_returns.std(unbiased=False) + eps)
    return advantages


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the masked positions of each row, right to left.

    ``rewards``, ``values``, ``mask`` are ``[B, L]``; positions off the mask are skipped (their
    advantage and return are 0). Returns ``(advantages, returns)``.
    """
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        on = mask[:, t] > 0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(on, advantage, 0.0)
        next_value = torch.where(on, values[:, t], next_value)
        next_advantage = torch.where(on, advantage, next_advantage)
    return advantages, (advantages + values) * mask


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


class Learner:
    """Owns the optimizer and applies one GRPO/PPO update per batch of rollouts."""

    def __init__(self, policy, cfg: AlgoConfig, context: str = "turn"):
        self.policy, self.cfg, self.context = policy, cfg, context
        self.optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)

    def update(self, batch: Batch, returns: torch.Tensor, groups: torch.Tensor,
               generator: torch.Generator | None = None) -> dict[str, float]:
        """One update on ``batch`` (rollout returns ``[B]`` and group ids ``[B]``); returns metrics."""
        cfg, mask = self.cfg, batch.loss_mask
        with torch.no_grad():
            logits, old_values = policy_forward(self.policy, batch, self.context)
            stats = token_stats(logits, batch.targets, temperature=cfg.loss.temperature, backend=cfg.backend)
            del logits
            if cfg.algo == "grpo":
                advantages = grpo_advantages(returns.to(mask.device), groups.to(mask.device))
                value_targets = None
            else:
                advantages, value_targets = gae(batch.rewards, old_values, mask, cfg.gamma, cfg.lam)
                mean = masked_mean(advantages, mask)
                std = masked_mean((advantages - mean) ** 2, mask).sqrt()
                advantages = (advantages - mean) / (std + 1e-6) * mask
            weights = (actfocus_weights(stats, mask, batch.action_mask, cfg.actfocus_cfg, turn_ids=batch.turn_ids)
                       if cfg.actfocus else None)
        totals: dict[str, float] = {}
        updates = 0
        for _ in range(cfg.epochs):
            order = torch.randperm(len(mask), generator=generator).to(mask.device)
            for index in order.chunk(cfg.minibatches):
                part = batch.rows(index)
                logits, values = policy_forward(self.policy, part, self.context)
                out = policy_loss(logits, part.targets, stats.logp[index], advantages[index], part.loss_mask,
                                  weights=None if weights is None else weights[index],
                                  action_mask=part.action_mask, turn_ids=part.turn_ids, cfg=cfg.loss,
                                  backend=cfg.backend)
                loss = out.loss
                metrics = {"loss": out.loss.item(), "clip_frac": out.clip_frac.item(),
                           "approx_kl": out.approx_kl.item(), "entropy": out.entropy_mean.item(),
                           "energy_action": out.energy_mean_action.item(),
                           "energy_reasoning": out.energy_mean_reasoning.item()}
                if value_targets is not None:
                    value_loss = masked_mean(0.5 * (values - value_targets[index]) ** 2, part.loss_mask)
                    loss = loss + cfg.value_coef * value_loss
                    metrics["value_loss"] = value_loss.item()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                for key, value in metrics.items():
                    totals[key] = totals.get(key, 0.0) + value
                updates += 1
        result = {key: value / updates for key, value in totals.items()}
        if weights is not None:
            result["weight_action"] = masked_mean(weights, batch.action_mask * mask).item()
            result["weight_reasoning"] = masked_mean(weights, (1 - batch.action_mask) * mask).item()
        return result
