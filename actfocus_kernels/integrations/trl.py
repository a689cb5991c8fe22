"""TRL drop-in (SPEC section 9): ``ActFocusGRPOConfig`` and ``ActFocusGRPOTrainer``.

``ActFocusGRPOTrainer`` is a ``trl.GRPOTrainer`` whose ``_compute_loss`` runs
``actfocus_kernels.linear_policy_loss`` on the model's last hidden states and LM head (the logits are
never materialised, as in TRL 1.16's own fused LM head). Every TRL loss option it covers maps to a
``PolicyLossConfig`` plus token weights (``trl_loss_plan``), so that with ActFocus off its loss and
gradients equal stock TRL's; an option it does not cover is a ``ValueError`` at construction
(``check_trl_options``). docs/integrations.md has the full table.

The mapping, with ``m`` the completion mask (times TRL's tool mask), ``l`` the token loss and ``GA``
the current gradient-accumulation steps (1 in eval):

- ``grpo``, ``sapo``: ``mean_i sum_t m l / max(sum_t m, 1)`` over all rows = ``seq-mean-token-mean``
  with ``empty_seqs="count"``, ``/ GA``; ``bnpo``: ``token-mean`` (local), ``/ GA``; ``dr_grpo``:
  ``seq-mean-token-sum-norm`` with ``norm_len = max_completion_length``, ``/ GA``; ``luspo``:
  ``seq-mean-token-sum``, ``/ GA``; ``dapo``, ``cispo``, ``vespo``: ``token-mean`` with ``norm_tokens =
  num_items_in_batch / num_processes * GA / steps_per_generation`` (train; eval: ``num_items_in_batch
  / num_processes``);
- the policy term: ``policy="ppo"`` (``"gspo"`` at ``importance_sampling_level="sequence"``) with
  ``epsilon`` / ``epsilon_high`` -> ``clip_low`` / ``clip_high`` and ``delta`` -> ``delta``;
  ``cispo`` -> ``policy="cispo"`` with ``clip_high = epsilon_high - 1`` (TRL's ``min(r,
  epsilon_high)``); ``sapo`` -> ``policy="sapo"`` with ``sapo_temperature_pos/neg`` ->
  ``sapo_tau_pos/neg``; ``vespo`` -> ``policy="vespo"`` with ``vespo_k_pos/neg``, ``vespo_lambda_pos/neg``;
- ``beta`` -> ``kl_coef`` with ``kl_type="k3"`` against ``ref_per_token_logps``,
  ``use_bias_correction_kl`` -> ``kl_bias_correction``; ``entropy_coef`` -> ``entropy_coef`` with
  ``entropy_agg="token-mean"`` (TRL's bonus is a token mean whatever the loss type, divided by
  ``GA``: for dapo/cispo/vespo the coefficient carries that ``1 / GA``), gated and updated by TRL's
  adaptive controller with ``use_adaptive_entropy``; with ``top_entropy_quantile < 1`` TRL's bonus
  averages over the high-entropy tokens only, so it is added apart (``LossPlan.masked_bonus``);
  ``temperature`` -> ``temperature``;
- token weights (they scale the policy term only, as TRL's masks do): the off-policy sequence mask
  (``off_policy_mask_threshold``), the high-entropy mask (``top_entropy_quantile``, from the
  current entropies), the vLLM importance-sampling ratio (token or sequence modes), and the ActFocus
  weights.

With ``actfocus_enabled=True`` the action mask comes from the span rule over each decoded completion
(``integrations.spans``) and the ActFocus weights from the rollout policy's statistics when TRL
computes old log-probs (the trainer then computes that pass itself, returning the same log-probs plus
energies), else from the current ones (``ActFocusConfig(source="current")``).
"""
from __future__ import annotations

import functools
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import nanmax, nanmin

from ..api import actfocus_weights
from ..config import ActFocusConfig, PolicyLossConfig, PolicyLossOutput, TokenStats
from ..linear import linear_policy_loss, linear_token_stats
from .spans import (DEFAULT_ACTION_PATTERN, action_token_mask, check_offsets_tokenizer, check_span_rule)

IGNORE_INDEX = -100
#: loss types whose policy term is the PPO clip (TRL's ``coef_1`` / ``coef_2`` branch)
PPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
#: every loss type the trainer reproduces
LOSS_TYPES = PPO_LOSS_TYPES + ("cispo", "sapo", "vespo")


@dataclass
class ActFocusGRPOConfig(GRPOConfig):
    """``trl.GRPOConfig`` plus ActFocus: the ``actfocus_*`` fields mirror ``ActFocusConfig`` (its
    ``source`` is chosen by the trainer: the rollout statistics when TRL has old log-probs, else
    the current ones), and the action-span rule over the decoded completion: the regex
    ``actfocus_action_pattern`` (every match is an action span), or the callable
    ``actfocus_action_spans(text) -> [(start, end), ...]`` of character spans when given."""

    actfocus_enabled: bool = field(default=False, metadata={"help": "Weight the policy gradient with ActFocus."})
    actfocus_reasoning_weight: float = field(default=0.5, metadata={"help": "ActFocusConfig.reasoning_weight."})
    actfocus_action_weight: float = field(default=1.0, metadata={"help": "ActFocusConfig.action_weight."})
    actfocus_redistribution: float = field(default=1.0, metadata={"help": "ActFocusConfig.redistribution."})
    actfocus_energy_temperature: float = field(default=1.0,
                                               metadata={"help": "ActFocusConfig.energy_temperature."})
    actfocus_max_weight: float = field(default=5.0, metadata={"help": "ActFocusConfig.max_weight."})
    actfocus_uncertainty: str = field(default="energy", metadata={"help": "ActFocusConfig.uncertainty."})
    actfocus_scope: str = field(default="sequence", metadata={"help": "ActFocusConfig.scope."})
    actfocus_preserve_total: bool = field(default=False, metadata={"help": "ActFocusConfig.preserve_total."})
    actfocus_action_pattern: str = field(default=DEFAULT_ACTION_PATTERN,
                                         metadata={"help": "Regex of the action spans in a completion."})
    actfocus_action_spans: Optional[Callable[[str], Sequence[Tuple[int, int]]]] = field(
        default=None, metadata={"help": "Callable text -> character spans; overrides the pattern."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.actfocus_config("current")
        check_span_rule(self.action_span_rule())
        check_trl_options(self)

    def actfocus_config(self, source: str) -> ActFocusConfig:
        """The ``ActFocusConfig`` of the ``actfocus_*`` fields, weights from ``source``."""
        return ActFocusConfig(
            reasoning_weight=self.actfocus_reasoning_weight, action_weight=self.actfocus_action_weight,
            redistribution=self.actfocus_redistribution, energy_temperature=self.actfocus_energy_temperature,
            max_weight=self.actfocus_max_weight, uncertainty=self.actfocus_uncertainty, scope=self.actfocus_scope,
            preserve_total=self.actfocus_preserve_total, source=source)

    def action_span_rule(self):
        return self.actfocus_action_spans if self.actfocus_action_spans is not None else self.actfocus_action_pattern


def _entropy_bonus(args) -> bool:
    return args.entropy_coef != 0.0 or args.use_adaptive_entropy


def check_trl_options(args) -> None:
    """A ``ValueError`` naming the first TRL option (of ``GRPOConfig`` ``args``) this trainer does
    not reproduce exactly."""
    epsilon_high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
    uncovered = [
        (args.loss_type not in LOSS_TYPES, f"loss_type={args.loss_type!r} (covered: {', '.join(LOSS_TYPES)})"),
        (args.importance_sampling_level == "sequence" and args.loss_type in ("cispo", "sapo", "vespo"),
         f"importance_sampling_level='sequence' with loss_type={args.loss_type!r} (covered: 'token')"),
        (args.loss_type == "vespo" and args.use_vllm and args.vllm_importance_sampling_correction,
         "loss_type='vespo' with the vLLM importance-sampling correction (vespo folds the ratio into its gamma "
         "weight)"),
        (args.loss_type == "vespo" and args.beta != 0.0 and args.use_bias_correction_kl,
         "loss_type='vespo' with beta > 0 and use_bias_correction_kl=True (TRL corrects by the token ratio)"),
        (args.loss_type == "cispo" and epsilon_high < 1.0,
         f"loss_type='cispo' with epsilon_high={epsilon_high!r} < 1 (the ratio cap min(r, epsilon_high) is "
         "covered from 1 up)"),
        (getattr(args, "actfocus_scope", "sequence") != "sequence",
         "actfocus_scope='turn' (TRL has no turn ids; covered: 'sequence')"),
    ]
    for bad, option in uncovered:
        if bad:
            raise ValueError(f"ActFocusGRPOTrainer does not reproduce TRL's {option}: use trl.GRPOTrainer for it "
                             "(docs/integrations.md lists the covered options)")


def check_trl_model(model, is_vlm: bool, aux_loss_enabled: bool) -> None:
    """The loss starts from ``hidden @ lm_head.weight.T + lm_head.bias``: a ``ValueError`` for models
    whose logits are something else (soft-capped or scaled) and for inputs it does not forward."""
    text_config = model.config.get_text_config()
    for name in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                 "logits_scaling"):
        value = getattr(text_config, name, None)
        if value is not None and (name == "final_logit_softcapping" or value != 1.0):
            raise ValueError(f"ActFocusGRPOTrainer computes the logits as hidden @ lm_head.weight.T: "
                             f"{text_config.model_type} has {name}={value!r}, which it does not apply")
    if is_vlm:
        raise ValueError("ActFocusGRPOTrainer supports text-only models (the processing class is a multimodal "
                         "processor)")
    if aux_loss_enabled:
        raise ValueError("ActFocusGRPOTrainer does not add the MoE router auxiliary loss: set "
                         "router_aux_loss_coef=0")


@dataclass(frozen=True)
class LossPlan:
    """How one TRL micro-batch's loss is computed: the ``PolicyLossConfig``, the factor the returned
    loss is multiplied by (gradient accumulation, where TRL's normaliser does not hold it), and the
    coefficient of an entropy bonus over the high-entropy tokens only (``top_entropy_quantile < 1``:
    TRL's bonus then averages over them, which the loss's own entropy term cannot, so it is computed
    apart from differentiable statistics; 0: none, or inside ``cfg``)."""

    cfg: PolicyLossConfig
    loss_factor: float
    masked_bonus: float = 0.0


def trl_loss_plan(trainer: GRPOTrainer, inputs: dict, mode: str) -> LossPlan:
    """The ``PolicyLossConfig`` and loss factor reproducing ``trainer``'s loss on ``inputs``."""
    args, loss_type = trainer.args, trainer.loss_type
    accumulation = trainer.current_gradient_accumulation_steps if mode == "train" else 1.0
    sequence = trainer.importance_sampling_level == "sequence"
    policy = loss_type if loss_type in ("cispo", "sapo", "vespo") else ("gspo" if sequence else "ppo")
    global_norm = loss_type in ("dapo", "cispo", "vespo")  # TRL's normaliser already holds the accumulation
    bonus = _entropy_bonus(args)
    masked_bonus = bonus and trainer.top_entropy_quantile < 1.0
    coef = trainer.entropy_coef
    if args.use_adaptive_entropy and trainer._last_world_entropy > args.entropy_target:
        coef = 0.0  # TRL's controller gates the bonus on the last optimizer step's entropy
    common = dict(
        policy=policy, clip_low=trainer.epsilon_low,
        clip_high=trainer.epsilon_high - 1.0 if policy == "cispo" else trainer.epsilon_high,
        delta=args.delta if policy in ("ppo", "gspo") else None,
        sapo_tau_pos=args.sapo_temperature_pos, sapo_tau_neg=args.sapo_temperature_neg,
        vespo_k_pos=args.vespo_k_pos, vespo_lambda_pos=args.vespo_lambda_pos, vespo_k_neg=args.vespo_k_neg,
        vespo_lambda_neg=args.vespo_lambda_neg,
        temperature=trainer.temperature, kl_coef=trainer.beta, kl_type="k3",
        kl_bias_correction=trainer.beta != 0.0 and args.use_bias_correction_kl,
        entropy_coef=(coef / (accumulation if global_norm else 1.0)) if bonus and not masked_bonus else 0.0,
        # bnpo's policy normaliser is TRL's entropy mean: aggregated alike, it keeps the fused kernel
        entropy_agg="token-mean" if bonus and not masked_bonus and loss_type != "bnpo" else None,
        ignore_index=IGNORE_INDEX)
    bonus_coef = coef / accumulation if masked_bonus else 0.0
    if loss_type in ("grpo", "sapo"):
        return LossPlan(PolicyLossConfig(agg="seq-mean-token-mean", empty_seqs="count", **common), 1 / accumulation,
                        bonus_coef)
    if loss_type == "bnpo":
        return LossPlan(PolicyLossConfig(agg="token-mean", **common), 1.0 / accumulation, bonus_coef)
    if loss_type == "dr_grpo":
        return LossPlan(PolicyLossConfig(agg="seq-mean-token-sum-norm", norm_len=trainer.max_completion_length,
                                         **common), 1.0 / accumulation, bonus_coef)
    if loss_type == "luspo":
        return LossPlan(PolicyLossConfig(agg="seq-mean-token-sum", **common), 1.0 / accumulation, bonus_coef)
    # dapo, cispo, vespo: TRL's normaliser spans the generation batch, rescaled to one accumulation window
    normalizer = float(inputs["num_items_in_batch"].clamp(min=1.0)) / trainer.accelerator.num_processes
    if mode == "train":
        normalizer = normalizer * trainer.current_gradient_accumulation_steps / args.steps_per_generation
    return LossPlan(PolicyLossConfig(agg="token-mean", norm_tokens=normalizer, **common), 1.0, bonus_coef)


def add_hidden_states_forward(model) -> None:
    """Patch ``model.forward`` (already patched by TRL's ``add_fused_lm_head``) so that
    ``model(..., actfocus_hidden_states=n)`` returns the backbone's last hidden states at the ``n``
    positions that predict the last ``n`` tokens, ``[B, n, H]``; without it the forward is unchanged.
    Going through ``model.forward`` keeps wrappers (DDP, PEFT) in the call."""
    inner = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, actfocus_hidden_states: Optional[int] = None, **kwargs):
        if actfocus_hidden_states is None:
            return inner(*args, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        return hidden[:, -actfocus_hidden_states - 1:-1]

    model.forward = types.MethodType(forward, model)


class ActFocusGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` with the loss of ``actfocus_kernels.linear_policy_loss`` (module docstring):
    equal to stock TRL's with ActFocus off, ActFocus-weighted with ``args.actfocus_enabled``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_trl_options(self.args)
        target = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        check_trl_model(target, self._is_vlm, self.aux_loss_enabled)
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

    def _actfocus_hidden(self, model, input_ids: Tensor, attention_mask: Tensor, n: int) -> Tensor:
        """Last hidden states ``[B, n, H]`` predicting the last ``n`` tokens, in the LM head's dtype."""
        with self.accelerator.autocast():
            hidden = model(input_ids=input_ids, attention_mask=attention_mask, actfocus_hidden_states=n)
        return hidden.to(self._actfocus_head()[0].dtype)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, **kwargs):
        """TRL's per-token log-probs; for the rollout pass of an ActFocus run (the first call while
        ``_generate_and_score_completions`` runs) computed here with ``linear_token_stats``, which also
        keeps the rollout energies for the ActFocus weights."""
        if not self._actfocus_capture:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, **kwargs)
        self._actfocus_capture = False
        weight, bias = self._actfocus_head()
        batch_size = batch_size or input_ids.size(0)
        parts = []
        for start in range(0, input_ids.size(0), batch_size):
            ids, att = input_ids[start:start + batch_size], attention_mask[start:start + batch_size]
            targets = ids[:, -logits_to_keep:].masked_fill(att[:, -logits_to_keep:] == 0, IGNORE_INDEX)
            hidden = self._actfocus_hidden(model, ids, att, logits_to_keep)
            parts.append(linear_token_stats(hidden, weight, targets, self.temperature, bias=bias))
        stats = TokenStats(*(torch.cat(x, dim=0) for x in zip(*parts)))
        self._actfocus_rollout_stats = stats
        return stats.logp, (stats.entropy if compute_entropy else None), None

    def _generate_and_score_completions(self, inputs):
        """TRL's rollout batch, plus (ActFocus on) ``actfocus_action_mask`` from the span rule and,
        when TRL computed old log-probs, ``actfocus_weights`` from the rollout statistics."""
        if not self._actfocus_on:
            return super()._generate_and_score_completions(inputs)
        self._actfocus_capture, self._actfocus_rollout_stats = True, None
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

    def _compute_loss(self, model, inputs):
        """TRL's loss (module docstring) from the fused linear policy loss, plus TRL's metrics and
        (ActFocus on) the action / reasoning energies, the weight statistics and the action-token share."""
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        targets = completion_ids.masked_fill(completion_mask == 0, IGNORE_INDEX)
        hidden = self._actfocus_hidden(model, input_ids, attention_mask, completion_ids.size(1))
        weight, bias = self._actfocus_head()
        mode = "train" if self.model.training else "eval"
        plan = trl_loss_plan(self, inputs, mode)
        advantages = inputs["advantages"]  # [B] (TRL), or [B, T] / [B, 1] from a subclass
        advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages

        @functools.lru_cache(maxsize=None)
        def current() -> TokenStats:
            with torch.no_grad():
                return linear_token_stats(hidden.detach(), weight.detach(), targets, self.temperature,
                                          bias=None if bias is None else bias.detach())

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
            actfocus=actfocus)
        loss = out.loss * plan.loss_factor
        if plan.masked_bonus:
            entropy = linear_token_stats(hidden, weight, targets, self.temperature, bias=bias).entropy
            loss = loss - plan.masked_bonus * (entropy * effective).sum() / effective.sum().clamp(min=1.0)
        if self.use_adaptive_entropy and mode == "train":
            self._adapt_entropy_coef(out.entropy, effective)
        self._log_trl_metrics(mode, out, mask, advantages, inputs, plan)
        if self._actfocus_on:
            self._log_actfocus_metrics(mode, out, mask, action)
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

    # -- metrics --------------------------------------------------------------------------------------

    def _global_masked_mean(self, x: Tensor, mask: Tensor) -> float:
        """TRL's ``global_masked_mean`` over every process: ``sum m x / sum m``, or the mean over the
        rows of a per-sequence ``x [B, 1]``."""
        if x.shape[1] == 1:
            local = torch.stack([x.sum(), torch.tensor(float(x.shape[0]), device=x.device)])
        else:
            local = torch.stack([(x * mask).sum(), mask.sum().float()])
        totals = self.accelerator.reduce(local, reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    def _masked_seq_mean(self, x: Tensor, mask: Tensor) -> Tensor:
        """TRL's ``masked_seq_mean``, gathered over processes."""
        return self.accelerator.gather(x.squeeze(1) if x.shape[1] == 1 else (x * mask).sum(-1) / mask.sum(-1))

    def _log_trl_metrics(self, mode: str, out: PolicyLossOutput, mask: Tensor, advantages: Tensor, inputs: dict,
                         plan: LossPlan) -> None:
        """The metrics stock TRL logs for the covered options, from the loss's detached outputs; the
        importance ratio is per sequence ``[B, 1]`` at TRL's sequence level, as TRL's ``coef_1``."""
        metrics, mean = self._metrics[mode], functools.partial(self._global_masked_mean, mask=mask)
        ratio = out.ratio
        if self.importance_sampling_level == "sequence" or self.loss_type == "vespo":
            count = mask.sum(-1, keepdim=True)
            ratio = torch.where(count > 0, (ratio * mask).sum(-1, keepdim=True) / count.clamp(min=1), 1.0)
        if self.beta != 0.0:
            delta = inputs["ref_per_token_logps"] - out.logp
            kl = torch.exp(delta) - delta - 1
            metrics["kl"].append(mean(kl * ratio if plan.cfg.kl_bias_correction else kl))
        metrics["entropy"].append(mean(out.entropy))
        if _entropy_bonus(self.args):
            policy = out.loss.detach() + plan.cfg.entropy_coef * out.entropy_mean  # TRL's loss before the bonus
            metrics["policy_loss"].append(self.accelerator.gather(policy).nanmean().item())
            if mode == "train" and self.accelerator.sync_gradients:
                metrics["entropy_coef"].append(self.entropy_coef)
        if self.loss_type in PPO_LOSS_TYPES:
            if self.args.delta is not None:
                ratio = torch.clamp(ratio, max=self.args.delta)
            low = ((ratio < 1 - self.epsilon_low) & (advantages < 0)).float()
            high = ((ratio > 1 + self.epsilon_high) & (advantages > 0)).float()
            metrics["clip_ratio/low_mean"].append(mean(low))
            metrics["clip_ratio/high_mean"].append(mean(high))
            metrics["clip_ratio/region_mean"].append(mean(((low + high) > 0).float()))
            metrics["clip_ratio/low_min"].append(nanmin(self._masked_seq_mean(low, mask)).item())
            metrics["clip_ratio/high_max"].append(nanmax(self._masked_seq_mean(high, mask)).item())
        elif self.loss_type == "cispo":
            metrics["cispo_clip_ratio"].append(mean(((ratio > self.epsilon_high) & (advantages > 0)).float()))
        elif self.loss_type == "vespo":  # the gamma weight of the sequence ratio w (the ratio output)
            nonneg = advantages >= 0
            k = torch.where(nonneg, plan.cfg.vespo_k_pos, plan.cfg.vespo_k_neg)
            lam = torch.where(nonneg, plan.cfg.vespo_lambda_pos, plan.cfg.vespo_lambda_neg).clamp(min=1e-4)
            phi = torch.exp(lam + k * torch.log(ratio) - lam * ratio).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
            metrics["vespo/phi_seq_mean"].append(mean(phi[:, :1]))

    def _log_actfocus_metrics(self, mode: str, out: PolicyLossOutput, mask: Tensor, action: Tensor) -> None:
        """``actfocus/energy_action`` and ``energy_reasoning`` (mean energy of the action / reasoning
        tokens), ``weight_mean`` / ``weight_max`` over the mask, ``action_share`` (action tokens over
        mask tokens), each a mean over processes."""
        metrics = self._metrics[mode]
        active = mask > 0
        gathered = {
            "actfocus/energy_action": out.energy_mean_action,
            "actfocus/energy_reasoning": out.energy_mean_reasoning,
            "actfocus/weight_mean": self._masked_mean_tensor(out.weights, mask),
            "actfocus/weight_max": torch.where(active, out.weights, 0.0).amax(),
            "actfocus/action_share": self._masked_mean_tensor((action > 0).float(), mask),
        }
        for name, value in gathered.items():
            metrics[name].append(self.accelerator.gather(value.detach().float().reshape(1)).nanmean().item())

    @staticmethod
    def _masked_mean_tensor(x: Tensor, mask: Tensor) -> Tensor:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
