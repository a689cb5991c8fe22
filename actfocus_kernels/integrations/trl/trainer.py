"""The TRL trainer: ``ActFocusGRPOTrainer``, a ``trl.GRPOTrainer`` whose ``_compute_loss`` runs
``actfocus_kernels.linear_policy_loss`` on the model's last hidden states and LM head.

Its hooks: ``_get_per_token_logps_and_entropies`` (the rollout pass of an ActFocus run, computed with
``linear_token_stats`` so that the rollout energies are kept), ``_generate_and_score_completions``
(the action mask from the span rule, and the rollout ActFocus weights when TRL computes old
log-probs), ``_compute_loss`` (the loss assembly: TRL's token weights, the ``LossPlan`` of
``options.trl_loss_plan``, the masked entropy bonus) and TRL's adaptive entropy controller.
Token weights scale the policy term only, as TRL's masks do: the off-policy sequence mask
(``off_policy_mask_threshold``), the high-entropy mask (``top_entropy_quantile``, from the current
entropies), the vLLM importance-sampling ratio (token or sequence modes), and the ActFocus weights.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Tuple

import torch
from torch import Tensor
from trl import GRPOTrainer

from ...api import actfocus_weights
from ...config import PolicyLossOutput, TokenStats
from ...linear import linear_policy_loss, linear_token_stats
from ..spans import action_token_mask, check_offsets_tokenizer
from .metrics import log_actfocus_metrics, log_trl_metrics
from .model import add_hidden_states_forward, head_call, head_options, hidden_states_mode
from .options import IGNORE_INDEX, check_trl_options, trl_loss_plan

#: the multimodal inputs of a TRL batch that TRL's ``_compute_loss`` hands to the model
MULTIMODAL_KEYS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
                   "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")


class ActFocusGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` with the loss of ``actfocus_kernels.linear_policy_loss`` (the mapping of
    ``options.trl_loss_plan``): equal to stock TRL's with ActFocus off, ActFocus-weighted with
    ``args.actfocus_enabled``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_trl_options(self.args)
        target = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self._actfocus_logits = head_options(target, self.args.cast_lm_head_to_fp32)
        self._actfocus_on = bool(getattr(self.args, "actfocus_enabled", False))
        if self._actfocus_on:
            check_offsets_tokenizer(self._tokenizer)
        add_hidden_states_forward(target)
        self._actfocus_head_owner = target
        self._actfocus_capture: bool = False
        self._actfocus_rollout_stats: Optional[TokenStats] = None

    # -- the model: hidden states, LM head, statistics ------------------------------------------------

    def _actfocus_head(self) -> Tuple[Tensor, Optional[Tensor]]:
        head = self._actfocus_head_owner.get_output_embeddings()
        return head.weight, head.bias

    def _actfocus_hidden(self, model, input_ids: Tensor, attention_mask: Tensor, n: int, batch_size=None,
                         compute_aux_loss: bool = False, **multimodal) -> Tuple[Tensor, Optional[Tensor]]:
        """Last hidden states ``[B, n, H]`` predicting the last ``n`` tokens, in the LM head's dtype and on
        its device, and TRL's MoE aux loss (with ``compute_aux_loss``): TRL's own pass
        (``GRPOTrainer._get_per_token_logps_and_entropies``, its multimodal inputs and autocast) with the
        model in ``model.hidden_states_mode``."""
        with hidden_states_mode(self._actfocus_head_owner):
            hidden, _, aux_loss = GRPOTrainer._get_per_token_logps_and_entropies(
                self, model, input_ids, attention_mask, n, batch_size=batch_size, compute_aux_loss=compute_aux_loss,
                **multimodal)
        return hidden.to(self._actfocus_head()[0].dtype), aux_loss

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, **kwargs):
        """TRL's per-token log-probs; for the old-policy pass of an ActFocus run (the first call while
        ``_generate_and_score_completions`` runs, when TRL computes old log-probs) computed here with
        ``linear_token_stats``, which also keeps the rollout energies for the ActFocus weights."""
        if not self._actfocus_capture:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, **kwargs)
        self._actfocus_capture = False
        weight, bias = self._actfocus_head()
        kwargs.pop("compute_aux_loss", None)
        hidden, _ = self._actfocus_hidden(model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                                          **kwargs)
        targets = input_ids[:, -logits_to_keep:].masked_fill(attention_mask[:, -logits_to_keep:] == 0, IGNORE_INDEX)
        targets = targets.to(hidden.device)
        batch_size = batch_size or input_ids.size(0)

        def stats_of(hidden: Tensor) -> Tuple[Tensor, ...]:
            parts = [linear_token_stats(hidden[start:start + batch_size], weight, targets[start:start + batch_size],
                                        self.temperature, bias=bias, **self._actfocus_logits)
                     for start in range(0, input_ids.size(0), batch_size)]
            return tuple(torch.cat(x, dim=0) for x in zip(*parts))

        stats = TokenStats(*head_call(self._actfocus_head_owner, stats_of, hidden))
        self._actfocus_rollout_stats = stats
        return stats.logp, (stats.entropy if compute_entropy else None), None

    def _generate_and_score_completions(self, inputs):
        """TRL's rollout batch, plus (ActFocus on) ``actfocus_action_mask`` from the span rule and,
        when TRL computed old log-probs, ``actfocus_weights`` from the rollout statistics."""
        if not self._actfocus_on:
            return super()._generate_and_score_completions(inputs)
        # TRL's condition for its old-policy pass, the first log-prob pass it runs; without it the first
        # pass is the reference model's (beta > 0), which must stay TRL's
        generate_every = self.args.steps_per_generation * self.num_iterations
        computes_old = (self.args.gradient_accumulation_steps % generate_every != 0
                        or (self.use_vllm and self.vllm_importance_sampling_correction))
        self._actfocus_capture, self._actfocus_rollout_stats = computes_old, None
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._actfocus_capture = False
        mask = output["completion_mask"] * output.get("tool_mask", 1)
        action = action_token_mask(self._tokenizer, output["completion_ids"], output["completion_mask"],
                                   self.args.action_span_rule())
        output["actfocus_action_mask"] = action
        stats = self._actfocus_rollout_stats
        if stats is not None and "old_per_token_logps" in output:
            output["actfocus_weights"] = actfocus_weights(stats, mask, action, self.args.actfocus_config("old"))
        self._actfocus_rollout_stats = None
        return output

    # -- the loss -------------------------------------------------------------------------------------

    def _actfocus_token_weights(self, inputs: dict, mask: Tensor, advantages: Tensor, current: Callable[[], TokenStats],
                                entropy_mask: Optional[Tensor]) -> Optional[Tensor]:
        """The product of TRL's token weights on the policy term (off-policy sequence mask, high-entropy
        mask ``entropy_mask``, vLLM importance-sampling ratio) and the rollout ActFocus weights; None when
        there are none. ``current()`` gives the current policy's statistics, computed once when a weight
        needs them."""
        factors = [] if entropy_mask is None else [entropy_mask]
        old = inputs.get("old_per_token_logps")
        if self.off_policy_mask_threshold is not None:
            sampling = inputs.get("sampling_per_token_logps", old)
            logp = current().logp if sampling is not None else torch.zeros_like(mask, dtype=torch.float32)
            factors.append(self.get_off_policy_mask(
                advantages=advantages, per_token_logps=logp,
                sampling_per_token_logps=logp if sampling is None else sampling, mask=mask,
                off_policy_threshold=self.off_policy_mask_threshold))
        if self.use_vllm and self.vllm_importance_sampling_correction:
            factors.append(inputs["importance_sampling_ratio"])
        if "actfocus_weights" in inputs:
            factors.append(inputs["actfocus_weights"])
        if not factors:
            return None
        weights = torch.ones(mask.shape, dtype=torch.float32, device=mask.device)
        for factor in factors:
            weights = weights * factor
        return weights

    def _actfocus_head_loss(self, hidden: Tensor, inputs: dict, mask: Tensor, targets: Tensor, advantages: Tensor,
                            plan) -> Tuple[Tensor, PolicyLossOutput, Tensor]:
        """The loss on the LM head (``head_call`` runs it): the fused linear policy loss with TRL's token
        weights and (ActFocus on) the ActFocus weights, times the plan's factor, less the masked entropy
        bonus. Returns ``(loss, the policy loss's output, the entropy-bonus tokens)``."""
        weight, bias = self._actfocus_head()

        @functools.lru_cache(maxsize=None)
        def current() -> TokenStats:
            with torch.no_grad():
                return linear_token_stats(hidden.detach(), weight.detach(), targets, self.temperature,
                                          bias=None if bias is None else bias.detach(), **self._actfocus_logits)

        entropy_mask = None
        if self.top_entropy_quantile < 1.0:
            entropy_mask = self.get_high_entropy_mask(current().entropy, mask, 1 - self.top_entropy_quantile)
        effective = (mask if entropy_mask is None else mask * entropy_mask).float()  # TRL's entropy-bonus tokens
        weights = self._actfocus_token_weights(inputs, mask, advantages, current, entropy_mask)
        actfocus = None
        action = inputs.get("actfocus_action_mask")
        if self._actfocus_on and "actfocus_weights" not in inputs:
            if weights is None:
                actfocus = self.args.actfocus_config("current")
            else:
                weights = weights * actfocus_weights(current(), mask, action, self.args.actfocus_config("current"))
        out = linear_policy_loss(
            hidden, weight, targets, inputs.get("old_per_token_logps"),
            advantages.squeeze(1) if advantages.shape[1] == 1 else advantages, mask, bias=bias, weights=weights,
            action_mask=action, ref_logp=inputs["ref_per_token_logps"] if self.beta != 0.0 else None, cfg=plan.cfg,
            actfocus=actfocus, **self._actfocus_logits)
        loss = out.loss * plan.loss_factor
        if plan.masked_bonus:
            entropy = linear_token_stats(hidden, weight, targets, self.temperature, bias=bias,
                                         **self._actfocus_logits).entropy
            loss = loss - plan.masked_bonus * (entropy * effective).sum() / effective.sum().clamp(min=1.0)
        return loss, out, effective

    def _compute_loss(self, model, inputs):
        """TRL's loss (``options.trl_loss_plan``) from the fused linear policy loss, plus TRL's metrics and
        (ActFocus on) the action / reasoning energies, the weight statistics and the action-token share."""
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        hidden, aux_loss = self._actfocus_hidden(model, input_ids, attention_mask, completion_ids.size(1),
                                                 compute_aux_loss=self.aux_loss_enabled,
                                                 **{key: inputs.get(key) for key in MULTIMODAL_KEYS})
        inputs = on_device(inputs, hidden.device)  # device_map: the loss runs where the LM head is, as TRL's
        completion_mask = inputs["completion_mask"]
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        targets = inputs["completion_ids"].masked_fill(completion_mask == 0, IGNORE_INDEX)
        mode = "train" if self.model.training else "eval"
        plan = trl_loss_plan(self, inputs, mode)
        advantages = inputs["advantages"]  # [B] (TRL), or [B, T] / [B, 1] from a subclass
        advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
        parts = {}

        def on_head(hidden: Tensor) -> Tensor:
            loss, parts["out"], parts["effective"] = self._actfocus_head_loss(hidden, inputs, mask, targets,
                                                                              advantages, plan)
            return loss

        loss = head_call(self._actfocus_head_owner, on_head, hidden)
        out, effective = parts["out"], parts["effective"]
        if self.use_adaptive_entropy and mode == "train":
            self._adapt_entropy_coef(out.entropy, effective)
        if self.aux_loss_enabled:  # TRL's: scaled for gradient accumulation as the policy loss
            loss = loss + self.router_aux_loss_coef * aux_loss / (self.current_gradient_accumulation_steps
                                                                   if mode == "train" else 1.0)
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())
        log_trl_metrics(self, mode, out, mask, advantages, inputs, plan)
        if self._actfocus_on:
            log_actfocus_metrics(self, mode, out, mask, inputs.get("actfocus_action_mask"))
        return loss

    def _adapt_entropy_coef(self, entropy: Tensor, mask: Tensor) -> None:
        """TRL's adaptive entropy controller (Skywork-OR1): the window's masked entropy sum and token
        count accumulate over the micro-batches; at the optimizer-step boundary the world mean moves
        ``entropy_coef`` by ``entropy_coef_delta`` (up when at or below ``entropy_target``, else down,
        within ``[entropy_coef_min, entropy_coef_max]``) for the next step."""
        stats = torch.stack([(entropy * mask).sum(), mask.sum()]).detach().float()
        self._entropy_window_stats = stats if self._entropy_window_stats is None else self._entropy_window_stats + stats
        if not self.accelerator.sync_gradients:
            return
        window = self.accelerator.reduce(self._entropy_window_stats, reduction="sum")
        world_entropy = (window[0] / window[1].clamp(min=1.0)).item()
        args = self.args
        if world_entropy <= args.entropy_target:
            self.entropy_coef = min(self.entropy_coef + args.entropy_coef_delta, args.entropy_coef_max)
        else:
            self.entropy_coef = max(self.entropy_coef - args.entropy_coef_delta, args.entropy_coef_min)
        self._last_world_entropy = world_entropy
        self._entropy_window_stats = None


def on_device(inputs: dict, device: torch.device) -> dict:
    """The batch's tensors on ``device`` (the LM head's, which differs from the first layer's under
    ``device_map``); a no-op copy of the dict otherwise."""
    return {key: value.to(device) if isinstance(value, Tensor) else value for key, value in inputs.items()}
