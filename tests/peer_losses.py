"""Calls of the peers' own loss code on log-probs and entropies that are differentiable functions of
logits (float64): TRL 1.16.0's ``GRPOTrainer._compute_loss`` and verl 0.9.1's ``compute_policy_loss_*`` /
``agg_loss`` / ``kl_penalty``, and the library configs that mirror their options (the parity tests of
tests/test_peer_losses.py and tests/test_variant_bad_input.py)."""
from collections import defaultdict
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Optional

import torch
from trl.trainer.grpo_trainer import GRPOTrainer
from verl.trainer.ppo import core_algos
from verl.workers.config import ActorConfig
from verl.workers.config.actor import PolicyLossConfig as VerlPolicyLossConfig

from actfocus_kernels import PolicyLossConfig


def differentiable_stats(logits: torch.Tensor, targets: torch.Tensor, temperature: float):
    """Per-token log-prob and entropy of ``logits / T`` in plain torch (the peers' definitions), in float64:
    the peers' own functions then run in float64, the truth the fp32 results are held to."""
    log_probs = torch.log_softmax(logits.double() / temperature, dim=-1)
    logp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp, -(log_probs.exp() * log_probs).sum(-1)


@dataclass
class TrlOptions:
    """The ``GRPOConfig`` fields ``_compute_loss`` reads."""

    loss_type: str = "grpo"
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0
    use_bias_correction_kl: bool = True
    delta: Optional[float] = None
    importance_sampling_level: str = "token"
    entropy_coef: float = 0.0
    temperature: float = 1.0
    max_completion_length: int = 8
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0
    num_items_in_batch: float = 17.0
    on_policy: bool = False


def trl_loss(data, options: TrlOptions):
    """TRL's own ``_compute_loss`` on a stand-in trainer whose model hands back the log-probs and
    entropies of ``data["logits"]``; returns the loss and its gradient with respect to the logits."""
    logits = data["logits"].clone().requires_grad_(True)
    targets, mask = data["targets"], data["loss_mask"]

    def logps_and_entropies(_model, _input_ids, _attention_mask, _logits_to_keep, **_kwargs):
        logp, entropy = differentiable_stats(logits, targets, options.temperature)
        return logp, entropy, None

    accelerator = SimpleNamespace(num_processes=1, sync_gradients=False, gather=lambda x: x,
                                  gather_for_metrics=lambda x: x, reduce=lambda x, reduction="sum": x)
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=logps_and_entropies, get_gamma_weights=GRPOTrainer.get_gamma_weights,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None, importance_sampling_level=options.importance_sampling_level,
        beta=options.beta, loss_type=options.loss_type, epsilon_low=options.epsilon_low,
        epsilon_high=options.epsilon_high, use_vllm=False, vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, accelerator=accelerator,
        _metrics=defaultdict(lambda: defaultdict(list)), _entropy_bonus_enabled=options.entropy_coef != 0,
        entropy_coef=options.entropy_coef, use_adaptive_entropy=False, aux_loss_enabled=False,
        max_completion_length=options.max_completion_length,
        args=SimpleNamespace(use_bias_correction_kl=options.use_bias_correction_kl, delta=options.delta,
                             sapo_temperature_pos=options.sapo_temperature_pos,
                             sapo_temperature_neg=options.sapo_temperature_neg, steps_per_generation=1,
                             vespo_k_pos=options.vespo_k_pos, vespo_lambda_pos=options.vespo_lambda_pos,
                             vespo_k_neg=options.vespo_k_neg, vespo_lambda_neg=options.vespo_lambda_neg),
    )
    batch = targets.shape[0]
    inputs = {
        "prompt_ids": torch.zeros(batch, 1, dtype=torch.long), "prompt_mask": torch.ones(batch, 1),
        "completion_ids": targets, "completion_mask": mask, "advantages": data["advantages"],
        "ref_per_token_logps": data["ref_logp"],
        "num_items_in_batch": torch.tensor(options.num_items_in_batch),
    }
    if not options.on_policy:
        inputs["old_per_token_logps"] = data["old_logp"]
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    loss.backward()
    return loss.detach(), logits.grad


def trl_config(options: TrlOptions, length: int) -> PolicyLossConfig:
    """The ``PolicyLossConfig`` of a TRL loss option (docs/integrations.md has the full table)."""
    loss_type = options.loss_type
    agg = {"grpo": "seq-mean-token-mean", "sapo": "seq-mean-token-mean", "bnpo": "token-mean",
           "dr_grpo": "seq-mean-token-sum-norm", "dapo": "token-mean", "cispo": "token-mean",
           "luspo": "seq-mean-token-sum", "vespo": "token-mean"}[loss_type]
    policy = {"cispo": "cispo", "sapo": "sapo", "vespo": "vespo"}.get(loss_type, "ppo")
    if options.importance_sampling_level == "sequence":
        assert policy == "ppo"
        policy = "gspo"
    return PolicyLossConfig(
        policy=policy, clip_low=options.epsilon_low,
        clip_high=options.epsilon_high - 1.0 if policy == "cispo" else options.epsilon_high,
        delta=options.delta, kl_coef=options.beta, kl_type="k3", kl_bias_correction=options.use_bias_correction_kl,
        entropy_coef=options.entropy_coef, entropy_agg="token-mean" if options.entropy_coef else None, agg=agg,
        empty_seqs="count", norm_len=options.max_completion_length if loss_type == "dr_grpo" else None,
        norm_tokens=options.num_items_in_batch if loss_type in ("dapo", "cispo", "vespo") else None,
        temperature=options.temperature, sapo_tau_pos=options.sapo_temperature_pos,
        sapo_tau_neg=options.sapo_temperature_neg,
    )


@dataclass
class VerlOptions:
    """verl actor options: the registered loss mode and what the actor adds (entropy, KL loss)."""

    mode: str = "vanilla"
    agg: str = "token-mean"
    clip_low: float = 0.2
    clip_high: float = 0.2
    clip_ratio_c: float = 3.0
    entropy_coeff: float = 0.0
    kl_loss_coef: float = 0.0
    kl_loss_type: str = "low_var_kl"
    policy_loss: dict = field(default_factory=dict)
    global_batch_info: dict = field(default_factory=dict)
    loss_scale_factor: Optional[int] = None
    rollout_is_weights: bool = False


def verl_actor_loss(data, options: VerlOptions, weights=None, seed=0):
    """verl's own functions: the registered policy loss, minus ``entropy_coeff`` times the aggregated
    entropy, plus ``kl_loss_coef`` times the aggregated ``kl_penalty``, each with the global batch
    info and ``loss_scale_factor`` (as ``verl.workers.utils.losses.ppo_loss`` forms it)."""
    logits = data["logits"].clone().requires_grad_(True)
    mask = data["loss_mask"]
    logp, entropy = differentiable_stats(logits, data["targets"], 1.0)
    advantages = data["advantages"][:, None].expand_as(logp)
    config = ActorConfig(
        strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, clip_ratio=options.clip_low,
        clip_ratio_low=options.clip_low, clip_ratio_high=options.clip_high, clip_ratio_c=options.clip_ratio_c,
        loss_scale_factor=options.loss_scale_factor,
        global_batch_info=dict(options.global_batch_info, loss_scale_factor=options.loss_scale_factor),
        policy_loss=VerlPolicyLossConfig(loss_mode=options.mode, **options.policy_loss))
    torch.manual_seed(seed)  # clip_cov draws from the default generator
    loss_fn = core_algos.get_policy_loss_fn(options.mode)
    loss, _metrics = loss_fn(old_log_prob=data["old_logp"], log_prob=logp, advantages=advantages,
                             response_mask=mask, loss_agg_mode=options.agg, config=config,
                             rollout_is_weights=weights)
    info = config.global_batch_info
    if options.entropy_coeff:
        loss = loss - options.entropy_coeff * core_algos.agg_loss(entropy, mask, options.agg, **info)
    if options.kl_loss_coef:
        kl = core_algos.kl_penalty(logp, data["ref_logp"], options.kl_loss_type)
        loss = loss + options.kl_loss_coef * core_algos.agg_loss(kl, mask, options.agg, **info)
    loss.backward()
    return loss.detach(), logits.grad


VERL_POLICIES = {"vanilla": "ppo", "gspo": "gspo_token", "sapo": "sapo", "gpg": "gpg", "clip_cov": "clip_cov",
                 "kl_cov": "kl_cov", "geo_mean": "gmpo", "dro": "dro", "cispo": "cispo_two_sided",
                 "dppo_tv": "dppo_tv", "dppo_kl": "dppo_kl"}


VERL_KL = {"kl": "k1", "k1": "k1", "abs": "abs", "mse": "k2", "k2": "k2", "low_var_kl": "low_var_kl",
           "k3": "low_var_kl", "kl+": "k1+", "k1+": "k1+", "abs+": "abs+", "mse+": "k2", "k2+": "k2",
           "low_var_kl+": "k3+", "k3+": "k3+"}


def verl_config(options: VerlOptions) -> PolicyLossConfig:
    """The ``PolicyLossConfig`` of a verl actor configuration (docs/integrations.md has the table)."""
    info = options.global_batch_info
    dp = info.get("dp_size", 1)
    loss_options = options.policy_loss
    return PolicyLossConfig(
        policy=VERL_POLICIES[options.mode], clip_low=options.clip_low, clip_high=options.clip_high,
        dual_clip=options.clip_ratio_c if options.mode == "vanilla" else None,
        agg="seq-mean-token-mean" if options.mode == "sapo" else options.agg,  # verl's sapo fixes its mode
        empty_seqs="skip", norm_len=options.loss_scale_factor,
        norm_tokens=info["batch_num_tokens"] / dp if "batch_num_tokens" in info else None,
        norm_seqs=info["global_batch_size"] / dp if "global_batch_size" in info else None,
        entropy_coef=options.entropy_coeff, kl_coef=options.kl_loss_coef, kl_type=VERL_KL[options.kl_loss_type],
        clip_cov_ratio=loss_options.get("clip_cov_ratio", 0.0002), clip_cov_lb=loss_options.get("clip_cov_lb", 1.0),
        clip_cov_ub=loss_options.get("clip_cov_ub", 5.0), kl_cov_ratio=loss_options.get("kl_cov_ratio", 0.0002),
        kl_cov_coef=loss_options.get("ppo_kl_coef", 0.1), dro_beta=loss_options.get("dro_beta") or 1.0,
        dppo_ratio_cap=options.clip_ratio_c,
    )
