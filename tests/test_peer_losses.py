"""Parity with the peers' own loss code (SPEC section 4.1: their code is the contract), pinned in CI:
TRL 1.16.0's ``GRPOTrainer._compute_loss`` and verl 0.9.1's ``compute_policy_loss_*`` / ``agg_loss`` /
``kl_penalty``, each run on log-probs and entropies that are differentiable functions of the same
logits as ours, so the loss and the gradient with respect to the logits are compared (fp32,
<= 1e-5 relative), on every backend on this machine."""
from collections import defaultdict
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Optional

import pytest
import torch
import trl
import verl
from trl.trainer.grpo_trainer import GRPOTrainer
from verl.trainer.ppo import core_algos
from verl.workers.config import ActorConfig
from verl.workers.config.actor import PolicyLossConfig as VerlPolicyLossConfig

from actfocus_kernels import PolicyLossConfig, policy_loss
from judge import make_batch
from tolerances import assert_rel_close

RTOL = 1e-5


def test_peer_versions_are_the_pinned_ones():
    assert trl.__version__ == "1.16.0" and verl.__version__ == "0.9.1"


def differentiable_stats(logits: torch.Tensor, targets: torch.Tensor, temperature: float):
    """Per-token log-prob and entropy of ``logits / T`` in plain torch (the peers' definitions)."""
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp, -(log_probs.exp() * log_probs).sum(-1)


def peer_batch(seed: int, device, batch=4, length=6, vocab=200):
    data = make_batch(batch, length, vocab, device=device, seed=seed, per_seq_advantages=True)
    data["advantages"] += 0.3
    data["loss_mask"][1, 3:] = 0  # trailing padding
    data["loss_mask"][2] = 0  # an empty completion: the normalisers differ on it
    return data


def ours(data, backend, cfg, weights=None, old="given", generator=None):
    logits = data["logits"].clone().requires_grad_(True)
    out = policy_loss(logits, data["targets"], data["old_logp"] if old == "given" else old, data["advantages"],
                      data["loss_mask"], weights=weights, ref_logp=data["ref_logp"], cfg=cfg, backend=backend,
                      generator=generator)
    out.loss.backward()
    return out.loss.detach(), logits.grad


def assert_parity(ours_result, peer_result):
    (loss, grad), (peer_loss, peer_grad) = ours_result, peer_result
    assert_rel_close(loss, peer_loss, RTOL, "loss")
    assert_rel_close(grad, peer_grad, RTOL, "grad")


# --- TRL ---------------------------------------------------------------------------------------


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
        _get_per_token_logps_and_entropies=logps_and_entropies, top_entropy_quantile=1.0,
        off_policy_mask_threshold=None, importance_sampling_level=options.importance_sampling_level,
        beta=options.beta, loss_type=options.loss_type, epsilon_low=options.epsilon_low,
        epsilon_high=options.epsilon_high, use_vllm=False, vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, accelerator=accelerator,
        _metrics=defaultdict(lambda: defaultdict(list)), _entropy_bonus_enabled=options.entropy_coef != 0,
        entropy_coef=options.entropy_coef, use_adaptive_entropy=False, aux_loss_enabled=False,
        max_completion_length=options.max_completion_length,
        args=SimpleNamespace(use_bias_correction_kl=options.use_bias_correction_kl, delta=options.delta,
                             sapo_temperature_pos=options.sapo_temperature_pos,
                             sapo_temperature_neg=options.sapo_temperature_neg, steps_per_generation=1),
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
           "luspo": "seq-mean-token-sum"}[loss_type]
    policy = {"cispo": "cispo", "sapo": "sapo"}.get(loss_type, "ppo")
    if options.importance_sampling_level == "sequence":
        assert policy == "ppo"
        policy = "gspo"
    return PolicyLossConfig(
        policy=policy, clip_low=options.epsilon_low,
        clip_high=options.epsilon_high - 1.0 if policy == "cispo" else options.epsilon_high,
        delta=options.delta, kl_coef=options.beta, kl_type="k3", kl_bias_correction=options.use_bias_correction_kl,
        entropy_coef=options.entropy_coef, entropy_agg="token-mean" if options.entropy_coef else None, agg=agg,
        empty_seqs="count", norm_len=options.max_completion_length if loss_type == "dr_grpo" else None,
        norm_tokens=options.num_items_in_batch if loss_type in ("dapo", "cispo") else None,
        temperature=options.temperature, sapo_tau_pos=options.sapo_temperature_pos,
        sapo_tau_neg=options.sapo_temperature_neg,
    )


TRL_CASES = {
    "grpo": TrlOptions(),
    "bnpo": TrlOptions(loss_type="bnpo", epsilon_high=0.28),
    "dr_grpo": TrlOptions(loss_type="dr_grpo"),
    "dapo": TrlOptions(loss_type="dapo", epsilon_high=0.28),
    "luspo": TrlOptions(loss_type="luspo"),
    "cispo": TrlOptions(loss_type="cispo", epsilon_high=1.3),
    "sapo": TrlOptions(loss_type="sapo"),
    "gspo": TrlOptions(importance_sampling_level="sequence", epsilon_low=0.05, epsilon_high=0.05),
    "delta": TrlOptions(loss_type="bnpo", delta=1.15),
    "beta-bias-corrected": TrlOptions(beta=0.05),
    "beta-plain-k3": TrlOptions(beta=0.05, use_bias_correction_kl=False),
    "gspo-beta": TrlOptions(importance_sampling_level="sequence", beta=0.05),
    "entropy-dapo": TrlOptions(loss_type="dapo", entropy_coef=0.01),
    "entropy-grpo-T": TrlOptions(entropy_coef=0.05, temperature=0.7),
    "on-policy-beta": TrlOptions(beta=0.04, on_policy=True),
}


@pytest.mark.parametrize("name", list(TRL_CASES))
def test_matches_trl_compute_loss(backend, device, name):
    options = TRL_CASES[name]
    data = peer_batch(len(name), device)
    cfg = trl_config(options, data["targets"].shape[1])
    assert_parity(ours(data, backend, cfg, old=None if options.on_policy else "given"), trl_loss(data, options))


def test_trl_parity_can_fail(device):
    """The comparison is sharp: TRL's default KL (bias-corrected) is not the plain k3."""
    data = peer_batch(3, device)
    options = TrlOptions(beta=0.5)
    plain = PolicyLossConfig(agg="seq-mean-token-mean", empty_seqs="count", kl_coef=0.5)
    loss, _ = ours(data, "reference", plain)
    peer_loss, _ = trl_loss(data, options)
    assert abs(loss - peer_loss) / abs(peer_loss) > 100 * RTOL


# --- verl --------------------------------------------------------------------------------------


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
                 "kl_cov": "kl_cov", "geo_mean": "gmpo", "dro": "dro", "cispo": "cispo_two_sided"}
VERL_KL = {"kl": "k1", "k1": "k1", "abs": "abs", "mse": "k2", "k2": "k2", "low_var_kl": "low_var_kl",
           "k3": "low_var_kl", "k1+": "k1+", "k3+": "k3+", "low_var_kl+": "k3+"}


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
    )


VERL_CASES = {
    "vanilla": VerlOptions(),
    "vanilla-seq-mean-token-mean": VerlOptions(agg="seq-mean-token-mean", clip_high=0.28),
    "vanilla-seq-mean-token-sum": VerlOptions(agg="seq-mean-token-sum"),
    "vanilla-token-sum": VerlOptions(agg="token-sum"),
    "vanilla-sum-norm-factor": VerlOptions(agg="seq-mean-token-sum-norm", loss_scale_factor=10),
    "vanilla-global-batch": VerlOptions(agg="seq-mean-token-mean",
                                        global_batch_info={"dp_size": 2, "global_batch_size": 9}),
    "vanilla-global-tokens": VerlOptions(global_batch_info={"dp_size": 2, "batch_num_tokens": 40}),
    "vanilla-entropy-kl": VerlOptions(entropy_coeff=0.01, kl_loss_coef=0.1, kl_loss_type="low_var_kl"),
    "kl-abs": VerlOptions(kl_loss_coef=0.1, kl_loss_type="abs"),
    "kl-k1+": VerlOptions(kl_loss_coef=0.1, kl_loss_type="k1+"),
    "kl-k3+": VerlOptions(kl_loss_coef=0.1, kl_loss_type="k3+"),
    "kl-mse": VerlOptions(kl_loss_coef=0.1, kl_loss_type="mse"),
    "gspo": VerlOptions(mode="gspo", agg="seq-mean-token-mean", clip_low=0.05, clip_high=0.05),
    "sapo": VerlOptions(mode="sapo"),
    "gpg": VerlOptions(mode="gpg"),
    "clip_cov": VerlOptions(mode="clip_cov", policy_loss={"clip_cov_ratio": 0.3, "clip_cov_lb": -0.5,
                                                          "clip_cov_ub": 2.0}),
    "kl_cov": VerlOptions(mode="kl_cov", policy_loss={"kl_cov_ratio": 0.2, "ppo_kl_coef": 1.0}),
    "geo_mean": VerlOptions(mode="geo_mean", clip_low=0.3, clip_high=0.3),
    "dro": VerlOptions(mode="dro", policy_loss={"dro_beta": 0.5}),
    "cispo": VerlOptions(mode="cispo"),
}


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "rollout-is-weights"])
@pytest.mark.parametrize("name", list(VERL_CASES))
def test_matches_verl_policy_losses(backend, device, name, weighted):
    options = VERL_CASES[name]
    data = peer_batch(len(name) + 100, device)
    weights = None
    if weighted:
        weights = (torch.rand(data["targets"].shape, generator=torch.Generator().manual_seed(2)) + 0.5).to(device)
    cfg = verl_config(options)
    peer = verl_actor_loss(data, options, weights, seed=11)
    torch.manual_seed(11)  # clip_cov: the same draw from the default generator
    assert_parity(ours(data, backend, cfg, weights), peer)


def test_verl_parity_can_fail(device):
    """verl's local seq-mean-token-sum skips empty rows: counting them (our default) differs."""
    data = peer_batch(5, device)
    options = VerlOptions(agg="seq-mean-token-sum")
    counted = PolicyLossConfig(agg="seq-mean-token-sum", dual_clip=3.0)
    loss, _ = ours(data, "reference", counted)
    peer_loss, _ = verl_actor_loss(data, options)
    assert abs(loss - peer_loss) / abs(peer_loss) > 1e-3
