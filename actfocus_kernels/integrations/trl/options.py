"""TRL option mapping: ``ActFocusGRPOConfig``, the covered-option check and the loss plan.

``trl_loss_plan`` maps a TRL micro-batch's loss options to a ``PolicyLossConfig`` plus a loss factor,
with ``m`` the completion mask (times TRL's tool mask), ``l`` the token loss and ``GA`` the current
gradient-accumulation steps (1 in eval):

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
  ``GA``: for dapo/cispo/vespo the coefficient carries that ``1 / GA``), gated by TRL's adaptive
  controller with ``use_adaptive_entropy``; with ``top_entropy_quantile < 1`` TRL's bonus averages
  over the high-entropy tokens only, so it is added apart (``LossPlan.masked_bonus``);
  ``temperature`` -> ``temperature``.

An option the trainer does not reproduce exactly is a ``ValueError`` at construction
(``check_trl_options``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Tuple

from trl import GRPOConfig, GRPOTrainer

from ...config import ActFocusConfig, PolicyLossConfig
from ..spans import DEFAULT_ACTION_PATTERN, SpanRule, check_span_rule

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
        """The ``ActFocusConfig`` of the ``actfocus_*`` fields, weights from ``source``.

        Args:
            source: ``ActFocusConfig.source``, ``"old"`` (rollout statistics) or ``"current"``.

        Returns:
            The validated ``ActFocusConfig``.
        """
        return ActFocusConfig(
            reasoning_weight=self.actfocus_reasoning_weight, action_weight=self.actfocus_action_weight,
            redistribution=self.actfocus_redistribution, energy_temperature=self.actfocus_energy_temperature,
            max_weight=self.actfocus_max_weight, uncertainty=self.actfocus_uncertainty, scope=self.actfocus_scope,
            preserve_total=self.actfocus_preserve_total, source=source)

    def action_span_rule(self) -> SpanRule:
        """The span rule: ``actfocus_action_spans`` when given, else ``actfocus_action_pattern``."""
        return self.actfocus_action_spans if self.actfocus_action_spans is not None else self.actfocus_action_pattern


def entropy_bonus_on(args) -> bool:
    """Whether TRL adds an entropy bonus (a fixed ``entropy_coef`` or the adaptive controller)."""
    return args.entropy_coef != 0.0 or args.use_adaptive_entropy


def check_trl_options(args) -> None:
    """A ``ValueError`` naming the first TRL option this trainer does not reproduce exactly.

    Args:
        args: a ``trl.GRPOConfig`` (or ``ActFocusGRPOConfig``).
    """
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
    """The plan reproducing ``trainer``'s loss on one micro-batch (module docstring).

    Args:
        trainer: the ``GRPOTrainer`` whose options (``args``, ``loss_type``, epsilons, ``beta``,
            entropy coefficient, accumulation steps) are mapped.
        inputs: the micro-batch (``num_items_in_batch`` is read for dapo / cispo / vespo).
        mode: ``"train"`` or ``"eval"``.

    Returns:
        The ``LossPlan``.
    """
    args, loss_type = trainer.args, trainer.loss_type
    accumulation = trainer.current_gradient_accumulation_steps if mode == "train" else 1.0
    sequence = trainer.importance_sampling_level == "sequence"
    policy = loss_type if loss_type in ("cispo", "sapo", "vespo") else ("gspo" if sequence else "ppo")
    global_norm = loss_type in ("dapo", "cispo", "vespo")  # TRL's normaliser already holds the accumulation
    bonus = entropy_bonus_on(args)
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
