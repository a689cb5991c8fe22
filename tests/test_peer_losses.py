"""Parity with the peers' own loss code (SPEC section 4.1: their code is the contract), pinned in CI:
TRL 1.16.0's ``GRPOTrainer._compute_loss`` and verl 0.9.1's ``compute_policy_loss_*`` / ``agg_loss`` /
``kl_penalty``, each run on log-probs and entropies that are differentiable functions of the same
logits as ours (in float64), so the loss and the gradient with respect to the logits are compared (ours fp32,
<= 1e-5 relative), on every backend on this machine."""

import pytest
import torch
import trl
import verl
from trl.trainer.grpo_trainer import GRPOTrainer
from verl.trainer.ppo import core_algos

from actfocus_kernels import PolicyLossConfig, policy_loss
from actfocus_kernels.config import KL_TYPES
from actfocus_kernels.testing import assert_rel_close
from actfocus_kernels.variants import kl_term, vespo_phi

from judge import make_batch
from peer_losses import VERL_KL, TrlOptions, VerlOptions, trl_config, trl_loss, verl_actor_loss, verl_config

RTOL = 1e-5


def test_peer_versions_are_the_pinned_ones():
    assert trl.__version__ == "1.16.0" and verl.__version__ == "0.9.1"


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


TRL_CASES = {
    "grpo": TrlOptions(),
    "bnpo": TrlOptions(loss_type="bnpo", epsilon_high=0.28),
    "dr_grpo": TrlOptions(loss_type="dr_grpo"),
    "dapo": TrlOptions(loss_type="dapo", epsilon_high=0.28),
    "luspo": TrlOptions(loss_type="luspo"),
    "cispo": TrlOptions(loss_type="cispo", epsilon_high=1.3),
    "sapo": TrlOptions(loss_type="sapo"),
    "vespo": TrlOptions(loss_type="vespo"),
    "vespo-beta-bias-corrected": TrlOptions(loss_type="vespo", beta=0.05),  # the KL times the token ratio
    "vespo-beta-plain-k3": TrlOptions(loss_type="vespo", beta=0.05, use_bias_correction_kl=False),
    "cispo-beta": TrlOptions(loss_type="cispo", epsilon_high=1.3, beta=0.05),
    "sapo-beta": TrlOptions(loss_type="sapo", beta=0.05),
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


# every kl_penalty type of verl 0.9.1 but "full" (verl raises NotImplementedError on it): "+" is the
# straight-through k2 gradient, a no-op on k2 itself


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
    "kl-abs+": VerlOptions(kl_loss_coef=0.1, kl_loss_type="abs+"),
    "kl-low_var_kl+": VerlOptions(kl_loss_coef=0.1, kl_loss_type="low_var_kl+"),
    "kl-mse+": VerlOptions(kl_loss_coef=0.1, kl_loss_type="mse+"),
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
    "dppo_tv": VerlOptions(mode="dppo_tv", clip_low=0.002, clip_high=0.002, clip_ratio_c=1.2),
    "dppo_kl": VerlOptions(mode="dppo_kl", clip_low=1e-5, clip_high=1e-5, clip_ratio_c=1.2),
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


@pytest.mark.parametrize("verl_type", list(VERL_KL))
def test_kl_term_matches_verl_kl_penalty(verl_type):
    """``variants.kl_term`` against verl's own ``kl_penalty`` in float64, value and gradient, on log-ratios
    up to +-30 (past low_var_kl's clamps)."""
    g = torch.Generator().manual_seed(len(verl_type))
    logp = (torch.randn(64, generator=g, dtype=torch.float64) * 8).requires_grad_(True)
    spread = torch.logspace(-3, 1.5, 64, dtype=torch.float64)
    ref = logp.detach() + torch.randn(64, generator=g, dtype=torch.float64) * spread
    weights = torch.rand(64, generator=g, dtype=torch.float64)
    ours_value = kl_term(logp, ref, VERL_KL[verl_type])
    (ours_grad,) = torch.autograd.grad((weights * ours_value).sum(), logp)
    peer_value = core_algos.kl_penalty(logp, ref, verl_type)
    (peer_grad,) = torch.autograd.grad((weights * peer_value).sum(), logp)
    assert torch.equal(ours_value.detach(), peer_value.detach()) or torch.allclose(ours_value, peer_value, rtol=1e-14)
    assert torch.allclose(ours_grad, peer_grad, rtol=1e-14, atol=0)


def test_every_verl_kl_type_is_mapped():
    """Each name verl's ``kl_penalty`` computes has a ``kl_type`` (a new verl type fails here)."""
    probe = torch.zeros(2, dtype=torch.float64)
    bases = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")
    served = [name for base in bases for name in (base, base + "+")]
    for name in served:
        core_algos.kl_penalty(probe, probe, name)  # verl computes it
    assert sorted(VERL_KL) == sorted(served) and set(VERL_KL.values()) <= set(KL_TYPES)
    with pytest.raises(NotImplementedError):
        core_algos.kl_penalty(probe, probe, "full")


@pytest.mark.parametrize("seed", range(4))
def test_vespo_phi_matches_trl_gamma_weights(seed):
    """``variants.vespo_phi`` against TRL's own ``get_gamma_weights`` in float64: per-sequence [B, 1]
    advantages of both signs and 0, log-ratios up to +-40 (past every clamp), lambda below 1e-4."""
    g = torch.Generator().manual_seed(seed)
    log_ratio = torch.randn(6, 7, generator=g, dtype=torch.float64) * [0.1, 1.0, 5.0, 40.0][seed]
    mask = (torch.rand(6, 7, generator=g) > 0.3).double()
    advantages = torch.tensor([[1.0], [-1.0], [0.0], [0.5], [-2.0], [3.0]], dtype=torch.float64)
    options = dict(vespo_k_pos=[2.0, 0.0, 1.5, 4.0][seed], vespo_lambda_pos=[3.0, 0.0, 1e-6, 1.0][seed],
                   vespo_k_neg=3.0, vespo_lambda_neg=[2.0, 0.5, 0.0, 7.0][seed])
    peer = GRPOTrainer.get_gamma_weights(advantages, log_ratio, mask, None, k_pos=options["vespo_k_pos"],
                                         lambda_pos=options["vespo_lambda_pos"], k_neg=options["vespo_k_neg"],
                                         lambda_neg=options["vespo_lambda_neg"])
    log_w = (torch.clamp(log_ratio, -20, 20) * mask).sum(-1, keepdim=True)
    ours_phi = vespo_phi(log_w, advantages, PolicyLossConfig(policy="vespo", **options))
    assert ours_phi.shape == peer.shape and torch.allclose(ours_phi, peer, rtol=1e-14, atol=0)
    assert torch.isfinite(ours_phi).all()


def test_vespo_phi_zeroes_non_finite_weights_as_trl():
    """TRL passes phi through nan_to_num: a NaN sequence log-ratio gives phi = 0, not NaN."""
    advantages = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    log_ratio = torch.tensor([[float("nan"), 0.1], [0.2, float("nan")]], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.float64)
    peer = GRPOTrainer.get_gamma_weights(advantages, log_ratio, mask, None)
    ours_phi = vespo_phi((torch.clamp(log_ratio, -20, 20) * mask).sum(-1, keepdim=True), advantages,
                         PolicyLossConfig(policy="vespo"))
    assert torch.equal(peer, torch.zeros(2, 1, dtype=torch.float64)) and torch.equal(ours_phi, peer)


def test_verl_parity_can_fail(device):
    """verl's local seq-mean-token-sum skips empty rows: counting them (our default) differs."""
    data = peer_batch(5, device)
    options = VerlOptions(agg="seq-mean-token-sum")
    counted = PolicyLossConfig(agg="seq-mean-token-sum", dual_clip=3.0)
    loss, _ = ours(data, "reference", counted)
    peer_loss, _ = verl_actor_loss(data, options)
    assert abs(loss - peer_loss) / abs(peer_loss) > 1e-3
