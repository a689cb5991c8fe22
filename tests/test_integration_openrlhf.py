"""actfocus_kernels.integrations.openrlhf against OpenRLHF 0.11.2's own code (SPEC section 9), on CPU.

OpenRLHF's package needs deepspeed and peft to import: its ``models/loss.py`` and ``models/actor.py``
are loaded from the installed files (``benchmarks.bench_openrlhf.load_openrlhf``).

- ``ActFocusPolicyLoss`` against ``PolicyLoss`` on every option combination it accepts (ppo / gspo x dual
  clip x token / sequence level x every IS-correction setting x local / global normalisers), with masked
  rows, float masks and an all-masked batch: the loss, every returned statistic and the gradient with
  respect to ``log_probs``; the options it rejects.
- ActFocus: the loss weighted by the ActFocus weights of the rollout statistics; the action tokens from
  the span rule over the decoded responses.
- ``patch_actor_with_actfocus`` against ``Actor.forward`` on a tiny random Qwen2, padded and packed: the
  action log-probs, the entropies, their gradients to every parameter, the energies against
  ``-T logsumexp(z / T)``, and no call of the LM head (no ``[B, L, V]`` logits).
"""
from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from benchmarks.bench_openrlhf import load_openrlhf

ROOT = Path(__file__).resolve().parents[1]

try:
    PEER = load_openrlhf()
except ImportError:
    pytest.skip("openrlhf is not installed", allow_module_level=True)

from actfocus_kernels import ActFocusConfig, PolicyLossConfig, TokenStats, actfocus_weights  # noqa: E402
from actfocus_kernels.integrations import openrlhf as af  # noqa: E402

from toy_lm import FAMILIES, toy_family, toy_model, toy_tokenizer  # noqa: E402

TOL = 1e-5

# (level, mode, gating, threshold): off, ICEPOP (token mask), TIS (token clip), seq-mask-TIS, and the
# binary-KL / TV trust regions per token and per sequence
IS_SETTINGS = {
    "off": ("off", "mask", "ratio", (0.5, 5.0)),
    "icepop": ("token", "mask", "ratio", (0.5, 2.0)),
    "tis": ("token", "clip", "ratio", (0.5, 2.0)),
    "seq_mask_tis": ("seq", "mask", "ratio", (0.7, 1.5)),
    "token_binary_kl": ("token", "mask", "binary_kl", (0.0, 0.02)),
    "token_tv": ("token", "mask", "tv", (0.0, 0.1)),
    "seq_binary_kl": ("seq", "mask", "binary_kl", (0.0, 0.02)),
    "seq_tv": ("seq", "mask", "tv", (-1.0, 0.1)),
}
NORMALISERS = {"local": {}, "global": dict(dp_size=2, batch_num_tokens=40, global_batch_size=10)}


def batch(seed: int = 0, rows: int = 6, length: int = 9, float_mask: bool = False):
    g = torch.Generator().manual_seed(seed)
    log_probs = -torch.rand(rows, length, generator=g) * 3
    old = log_probs + 0.8 * torch.randn(rows, length, generator=g)  # past the clips and the dual clip
    rollout = old + 0.5 * torch.randn(rows, length, generator=g)  # some units leave every band
    advantages = torch.randn(rows, 1, generator=g).expand(rows, length).contiguous()
    lengths = torch.tensor([9, 5, 0, 7, 1, 3])[:rows]  # an empty row
    mask = torch.arange(length)[None, :] < lengths[:, None]
    if float_mask:
        mask = mask * (0.25 + torch.rand(rows, length, generator=g))
    return log_probs, old, rollout, advantages, mask


def options(policy, dual_clip, token_level, setting) -> dict:
    level, mode, gating, threshold = IS_SETTINGS[setting]
    return dict(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip=dual_clip, token_level_loss=token_level,
                policy_loss_type=policy, is_correction_level=level, is_correction_mode=mode,
                is_correction_gating=gating, is_correction_threshold=threshold)


def run(loss_fn, data, **kwargs):
    """``(loss, stats, grad)`` of one forward + backward with respect to ``log_probs``."""
    log_probs, old, rollout, advantages, mask = data
    x = log_probs.clone().requires_grad_(True)
    loss, *stats = loss_fn(x, old, advantages, action_mask=mask, rollout_log_probs=rollout, **kwargs)
    loss.backward()
    return loss.detach(), stats, x.grad


def assert_close(ours, theirs, what):
    if theirs is None:
        assert ours is None, what
        return
    scale = max(float(theirs.detach().double().norm()), 1.0)
    assert float((ours.detach().double() - theirs.detach().double()).norm()) <= TOL * scale, (what, ours, theirs)


def assert_same(ours, theirs):
    (our_loss, our_stats, our_grad), (loss, stats, grad) = ours, theirs
    assert_close(our_loss, loss, "loss")
    assert_close(our_grad, grad, "grad")
    for name, a, b in zip(("clip_ratio", "ppo_kl", "vllm_kl", "is_filter_ratio"), our_stats, stats):
        assert_close(a, b, name)


CASES = [(p, d, t, s, n) for p, d, t, s, n in itertools.product(("ppo", "gspo"), (None, 3.0), (True, False),
                                                                  IS_SETTINGS, NORMALISERS)
         if not (p == "gspo" and not t)]  # gspo is sequence-level whatever token_level_loss says


@pytest.mark.parametrize("policy,dual_clip,token_level,setting,norm", CASES,
                         ids=["-".join(map(str, case)) for case in CASES])
def test_policy_loss_equals_openrlhf(policy, dual_clip, token_level, setting, norm):
    opts = options(policy, dual_clip, token_level, setting)
    data = batch()
    theirs = run(PEER.loss.PolicyLoss(**opts), data, **NORMALISERS[norm])
    ours = run(af.ActFocusPolicyLoss(**opts), data, **NORMALISERS[norm])
    assert float(theirs[2].norm()) > 0
    assert_same(ours, theirs)


@pytest.mark.parametrize("setting", ["off", "icepop", "tis", "seq_mask_tis", "token_tv"])
@pytest.mark.parametrize("token_level", [True, False])
def test_float_mask_equals_openrlhf(token_level, setting):
    """Fractional masks (ppo): a multiplier in every sum, as OpenRLHF's. Its gspo multiplies the sequence
    ratio itself by the mask (``ratio * action_mask``), which only a 0/1 mask leaves unchanged: not compared."""
    opts = options("ppo", 3.0, token_level, setting)
    data = batch(seed=1, float_mask=True)
    assert_same(run(af.ActFocusPolicyLoss(**opts), data), run(PEER.loss.PolicyLoss(**opts), data))


def test_the_grid_filters_and_clips():
    """The batch reaches every branch: clipped tokens, and filtered units under each correction."""
    data = batch()
    _, (clip_ratio, *_), _ = run(PEER.loss.PolicyLoss(), data)
    assert 0 < float(clip_ratio) < 1
    for setting in IS_SETTINGS:
        if setting != "off":
            _, (*_, filter_ratio), _ = run(PEER.loss.PolicyLoss(**options("ppo", None, True, setting)), data)
            assert 0 < float(filter_ratio) < 1, setting


def test_action_mask_none_is_a_plain_mean():
    log_probs, old, rollout, advantages, _ = batch()
    results = []
    for cls in (PEER.loss.PolicyLoss, af.ActFocusPolicyLoss):
        x = log_probs.clone().requires_grad_(True)
        loss, *stats = cls()(x, old, advantages)
        loss.backward()
        results.append((loss.detach(), stats, x.grad))
    assert_same(*reversed(results))


@pytest.mark.parametrize("setting", ["off", "icepop", "seq_tv"])
@pytest.mark.parametrize("policy,token_level", [("ppo", True), ("ppo", False), ("gspo", False)])
def test_all_masked_batch(policy, token_level, setting):
    """Global normalisers: equal to OpenRLHF (0). Local ones: OpenRLHF's 0/0 is NaN; ours is the
    documented empty result, loss 0 with a zero gradient and metrics 0."""
    log_probs, old, rollout, advantages, mask = batch()
    data = (log_probs, old, rollout, advantages, torch.zeros_like(mask))
    opts = options(policy, None, token_level, setting)
    ours_global = run(af.ActFocusPolicyLoss(**opts), data, **NORMALISERS["global"])
    theirs_global = run(PEER.loss.PolicyLoss(**opts), data, **NORMALISERS["global"])
    assert_close(ours_global[0], theirs_global[0], "loss")
    assert_close(ours_global[2], theirs_global[2], "grad")
    loss, stats, grad = run(af.ActFocusPolicyLoss(**opts), data)
    assert float(loss) == 0.0 and float(grad.abs().max()) == 0.0
    assert all(s is None or float(s) == 0.0 for s in stats[:3])
    assert torch.isnan(run(PEER.loss.PolicyLoss(**opts), data)[0])


REJECTED = [
    (dict(dual_clip=1.0), "dual_clip must be > 1.0"),
    (dict(is_correction_level="sequence"), "is_correction_level must be off/token/seq"),
    (dict(is_correction_mode="drop"), "is_correction_mode must be mask/clip"),
    (dict(is_correction_gating="kl"), "is_correction_gating must be ratio/binary_kl/tv"),
    (dict(is_correction_level="seq", is_correction_mode="clip"), "requires is_correction_level=token"),
    (dict(is_correction_level="token", is_correction_mode="clip", is_correction_gating="tv",
          is_correction_threshold=(0.0, 0.1)), "requires is_correction_level=token"),
    (dict(is_correction_level="token", is_correction_gating="binary_kl"), "takes an upper bound only"),
]


@pytest.mark.parametrize("kwargs,message", REJECTED, ids=[m for _, m in REJECTED])
def test_rejects_what_openrlhf_rejects(kwargs, message):
    with pytest.raises((AssertionError, ValueError)):
        PEER.loss.PolicyLoss(**kwargs)
    with pytest.raises(ValueError, match=message):
        af.ActFocusPolicyLoss(**kwargs)


def test_rejects_at_construction_what_openrlhf_rejects_in_forward():
    log_probs, old, rollout, advantages, mask = batch()
    with pytest.raises(ValueError, match="Invalid policy loss type"):
        PEER.loss.PolicyLoss(policy_loss_type="grpo")(log_probs, old, advantages, action_mask=mask)
    with pytest.raises(ValueError, match="policy_loss_type must be one of"):
        af.ActFocusPolicyLoss(policy_loss_type="grpo")
    correcting = dict(is_correction_level="token")
    with pytest.raises(TypeError):  # OpenRLHF: None - tensor
        PEER.loss.PolicyLoss(**correcting)(log_probs, old, advantages, action_mask=mask)
    with pytest.raises(ValueError, match="needs rollout_log_probs"):
        af.ActFocusPolicyLoss(**correcting)(log_probs, old, advantages, action_mask=mask)
    with pytest.raises(ValueError, match="action_mask=None is only accepted"):
        af.ActFocusPolicyLoss(policy_loss_type="gspo")(log_probs, old, advantages)
    with pytest.raises(ValueError, match="advantages must be a tensor broadcastable"):
        af.ActFocusPolicyLoss()(log_probs, old, advantages[:, :2], action_mask=mask)
    with pytest.raises(ValueError, match="dp_size must be > 0"):
        af.ActFocusPolicyLoss()(log_probs, old, advantages, action_mask=mask, dp_size=0, batch_num_tokens=10)
    with pytest.raises(ValueError, match="old_energy must be a tensor shaped like log_probs"):
        af.ActFocusPolicyLoss()(log_probs, old, advantages, action_mask=mask, old_energy=old[:, :3])


@pytest.mark.parametrize("fields,error,message", [
    (dict(rollout_is_level="sequence"), ValueError, "rollout_is_level must be one of"),
    (dict(rollout_is_mode="drop"), ValueError, "rollout_is_mode must be one of"),
    (dict(rollout_is_gating="kl"), ValueError, "rollout_is_gating must be one of"),
    (dict(rollout_is_low=float("nan")), TypeError, "rollout_is_low must be a real number"),
    (dict(rollout_is_level="seq", rollout_is_mode="clip"), ValueError, "rollout_is_mode='clip' clamps"),
    (dict(rollout_is_level="token", rollout_is_gating="tv"), ValueError, "rollout_is_low must be <= 0"),
])
def test_rollout_correction_config_is_validated(fields, error, message):
    with pytest.raises(error, match=message):
        PolicyLossConfig(**fields)
    PolicyLossConfig(rollout_is_level="token", rollout_is_gating="tv", rollout_is_low=float("-inf"),
                     rollout_is_high=0.1)


def test_module_imports_with_torch_alone():
    code = ("import sys, actfocus_kernels.integrations.openrlhf; print(','.join(m for m in ('openrlhf', "
            "'deepspeed', 'peft', 'flash_attn', 'transformers', 'ray') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "", f"imported: {result.stdout.strip()}"


# --- ActFocus ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("uncertainty", ["nll", "energy"])
def test_actfocus_weights_the_policy_term(uncertainty):
    """Token-level ppo: ``sum m w L / sum m`` with ``w`` the ActFocus weights of the rollout statistics."""
    log_probs, old, rollout, advantages, mask = batch()
    energy = -2.0 - torch.rand(old.shape, generator=torch.Generator().manual_seed(9))
    action = (torch.arange(9)[None, :] % 3 == 0).float().expand(6, 9)
    cfg = ActFocusConfig(uncertainty=uncertainty)
    x = log_probs.clone().requires_grad_(True)
    loss = af.ActFocusPolicyLoss(actfocus=cfg)(x, old, advantages, action_mask=mask, action_tokens=action,
                                               old_energy=energy)[0]
    weights = actfocus_weights(TokenStats(old, energy, torch.zeros_like(old)), mask.float(), action, cfg)
    assert float(weights[mask & (action > 0)].std()) > 0
    ratio = torch.exp(torch.clamp(log_probs.double() - old.double(), -20, 20)).requires_grad_(True)
    a = advantages.double()
    token_loss = torch.maximum(-a * ratio, -a * ratio.clamp(0.8, 1.2))
    expected = (mask * weights.double() * token_loss).sum() / mask.sum()
    assert abs(float(loss.detach()) - float(expected.detach())) <= TOL * abs(float(expected.detach()))
    assert float(weights[mask & (action == 0)].max()) == 0.5  # the reasoning weight
    neutral = ActFocusConfig(reasoning_weight=1.0, redistribution=0.0, action_weight=1.0, uncertainty="nll")
    plain = af.ActFocusPolicyLoss()(log_probs, old, advantages, action_mask=mask)[0]
    same = af.ActFocusPolicyLoss(actfocus=neutral)(log_probs, old, advantages, action_mask=mask,
                                                    action_tokens=action)[0]
    assert float(plain) == float(same)


def test_actfocus_needs_its_inputs():
    log_probs, old, rollout, advantages, mask = batch()
    with pytest.raises(ValueError, match="actfocus needs action_tokens"):
        af.ActFocusPolicyLoss(actfocus=ActFocusConfig())(log_probs, old, advantages, action_mask=mask)
    with pytest.raises(ValueError, match="needs old_energy"):
        af.ActFocusPolicyLoss(actfocus=ActFocusConfig())(log_probs, old, advantages, action_mask=mask,
                                                          action_tokens=mask.float())
    with pytest.raises(ValueError, match="needs ActFocusConfig\\(source='old'\\)"):
        af.ActFocusPolicyLoss(actfocus=ActFocusConfig(source="current"))
    with pytest.raises(TypeError, match="actfocus must be an ActFocusConfig"):
        af.ActFocusPolicyLoss(actfocus={"reasoning_weight": 0.5})


def test_response_action_tokens_follow_the_span_rule():
    tok = toy_tokenizer()
    prompt = tok("think a", add_special_tokens=False)["input_ids"]
    response = tok("move <answer> left </answer> b", add_special_tokens=False)["input_ids"] + [0]  # a pad
    sequences = torch.tensor([prompt + response])
    action_mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    tokens = af.response_action_tokens(tok, sequences, action_mask)
    assert tokens.tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0, 0.0]]


# --- the fused actor forward ------------------------------------------------------------------------


def actors(packing: bool, temperature: float):
    model = toy_model(seed=3).double().float()
    stock, ours = PEER.actor.Actor(model), PEER.actor.Actor(model)
    for actor in (stock, ours):
        actor.packing_samples, actor.temperature = packing, temperature
    af.patch_actor_with_actfocus(ours)
    return model, stock, ours


def rollout(vocab: int):
    g = torch.Generator().manual_seed(5)
    attention = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 0, 0, 0]])
    sequences = torch.randint(3, vocab, attention.shape, generator=g) * attention
    action_mask = attention[:, -5:].bool()
    return sequences, attention, action_mask


def forward_and_grads(model, actor, sequences, attention, action_mask):
    model.zero_grad(set_to_none=True)
    log_probs, output = actor(sequences, action_mask, attention_mask=attention, return_output=True,
                              return_entropy=True)
    g = torch.Generator().manual_seed(7)
    probe = (log_probs * torch.randn(log_probs.shape, generator=g)).sum()
    probe = probe + (output.entropy * torch.randn(output.entropy.shape, generator=g)).sum()
    probe.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return log_probs.detach(), output.entropy.detach(), grads, output


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("temperature,dtype", [(1.0, torch.float32), (0.7, torch.float32), (1.0, torch.bfloat16)])
def test_fused_actor_forward_equals_openrlhf(packing, temperature, dtype):
    """SPEC section 6: per-token outputs within 1e-5; gradients 1e-5 (fp32) or 1e-2 (bf16)."""
    model, stock, ours = actors(packing, temperature)
    model.to(dtype)
    data = rollout(model.config.vocab_size)
    their_logp, their_entropy, their_grads, _ = forward_and_grads(model, stock, *data)
    handle = model.lm_head.register_forward_hook(lambda *_: pytest.fail("the LM head computed [B, L, V] logits"))
    try:
        our_logp, our_entropy, our_grads, output = forward_and_grads(model, ours, *data)
    finally:
        handle.remove()
    entropy_mask = data[1][:, 1:].bool() if packing else torch.ones_like(our_entropy, dtype=torch.bool)
    assert_close(our_logp, their_logp, "log_probs")
    assert_close(our_entropy[entropy_mask], their_entropy[entropy_mask], "entropy")
    assert set(our_grads) == set(their_grads)
    for name, grad in their_grads.items():
        tol = TOL if dtype == torch.float32 else 1e-2
        assert float((our_grads[name].double() - grad.double()).norm()) <= tol * float(grad.double().norm()), name


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fused_actor_forward_of_a_transforming_family_equals_openrlhf(family, packing):
    """Gemma 2's softcap (30, reached by the toy's large weights), Cohere's and Granite's scales: the model's
    own forward transforms its logits, the fused forward applies the same transform in the kernels."""
    model = toy_family(family, seed=3)
    stock, ours = PEER.actor.Actor(model), PEER.actor.Actor(model)
    for actor in (stock, ours):
        actor.packing_samples, actor.temperature = packing, 0.7
    af.patch_actor_with_actfocus(ours)
    data = rollout(model.config.vocab_size)
    their_logp, their_entropy, their_grads, _ = forward_and_grads(model, stock, *data)
    our_logp, our_entropy, our_grads, _ = forward_and_grads(model, ours, *data)
    entropy_mask = data[1][:, 1:].bool() if packing else torch.ones_like(our_entropy, dtype=torch.bool)
    assert_close(our_logp, their_logp, "log_probs")
    assert_close(our_entropy[entropy_mask], their_entropy[entropy_mask], "entropy")
    assert set(our_grads) == set(their_grads)
    for name, grad in their_grads.items():
        assert float((our_grads[name].double() - grad.double()).norm()) <= TOL * float(grad.double().norm()), name


def test_fused_actor_forward_energy_and_all_log_probs():
    model, _, ours = actors(False, 0.7)
    sequences, attention, action_mask = rollout(model.config.vocab_size)
    log_probs, output = ours(sequences, attention_mask=attention, return_output=True, return_logprobs=True,
                             return_energy=True)
    with torch.no_grad():
        positions = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 1)
        logits = model(sequences, attention_mask=attention, position_ids=positions).logits.double() / 0.7
    reference = logits.log_softmax(-1).gather(-1, sequences.roll(-1, 1)[..., None])[..., 0][:, :-1]
    assert_close(log_probs, reference, "log_probs")
    assert_close(output.energy, -0.7 * torch.logsumexp(logits, -1)[:, :-1], "energy")


def test_fused_actor_forward_rejects_what_it_cannot_do():
    model, _, ours = actors(False, 1.0)
    sequences, attention, action_mask = rollout(model.config.vocab_size)
    with pytest.raises(ValueError, match="computes no logits"):
        ours(sequences, attention_mask=attention, return_output=True)
    with pytest.raises(NotImplementedError, match="ring attention"):
        ours(sequences, action_mask, attention_mask=attention, ring_attn_group=object())


def test_benchmark_runs(capsys):
    from benchmarks import bench_openrlhf

    assert bench_openrlhf.main(["--vocab", "64", "--hidden", "32", "--layers", "1", "--batch", "2", "--prompt", "4",
                                "--response", "4", "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| actfocus_kernels")]
    assert len(rows) == 1 and "×" in rows[0]


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_fused_actor_forward_moe_aux_loss(packing):
    """A MoE model: OpenRLHF's trainer adds ``output.aux_loss``; equal values and gradients."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    torch.manual_seed(0)
    model = Qwen2MoeForCausalLM(Qwen2MoeConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        shared_expert_intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        num_experts=4, num_experts_per_tok=2,
        output_router_logits=True, tie_word_embeddings=False, initializer_range=0.5, pad_token_id=0))
    stock, ours = PEER.actor.Actor(model), PEER.actor.Actor(model)
    for actor in (stock, ours):
        actor.packing_samples = packing
    af.patch_actor_with_actfocus(ours)
    sequences, attention, action_mask = rollout(40)
    results = []
    for actor in (stock, ours):
        model.zero_grad(set_to_none=True)
        log_probs, output = actor(sequences, action_mask, attention_mask=attention, return_output=True)
        (log_probs.sum() + 0.5 * output.aux_loss).backward()
        results.append((log_probs.detach(), output.aux_loss.detach(),
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (their_logp, their_aux, their_grads), (our_logp, our_aux, our_grads) = results
    assert float(their_aux) > 0
    assert_close(our_logp, their_logp, "log_probs")
    assert_close(our_aux, their_aux, "aux_loss")
    assert set(our_grads) == set(their_grads)
    for name, grad in their_grads.items():
        assert_close(our_grads[name], grad, name)


@pytest.mark.parametrize("setting", ["off", "icepop", "seq_mask_tis"])
def test_non_finite_inputs(setting):
    """SPEC section 2: NaN on an active token reaches the loss (a NaN rollout log-prob too, where
    OpenRLHF's mask mode would drop the token); anything on an inactive token changes nothing."""
    log_probs, old, rollout, advantages, mask = batch()
    loss_fn = af.ActFocusPolicyLoss(**options("ppo", None, True, setting))
    clean = loss_fn(log_probs, old, advantages, action_mask=mask, rollout_log_probs=rollout)[0]
    inactive = (~mask).nonzero()[0].tolist()
    for tensor in (log_probs, old, rollout, advantages):
        dirty = tensor.clone()
        dirty[tuple(inactive)] = float("nan")
        args = [dirty if t is tensor else t for t in (log_probs, old, advantages, rollout)]
        assert float(loss_fn(*args[:3], action_mask=mask, rollout_log_probs=args[3])[0]) == float(clean)
        dirty = tensor.clone()
        dirty[0, 0] = float("nan")
        args = [dirty if t is tensor else t for t in (log_probs, old, advantages, rollout)]
        if tensor is rollout and setting == "off":
            continue
        assert torch.isnan(loss_fn(*args[:3], action_mask=mask, rollout_log_probs=args[3])[0])


@pytest.mark.parametrize("setting", [s for s in IS_SETTINGS if s != "off"])
def test_policy_loss_takes_the_rollout_correction(backend, setting):
    """``policy_loss(..., rollout_logp=...)`` on logits (the fused kernel: the correction is a per-token
    weight known before the pass) equals OpenRLHF's ``PolicyLoss`` on the logits' log-probs: the loss,
    the logits' gradient (through log-softmax), ``vllm_kl`` and ``is_filter_ratio``."""
    from actfocus_kernels import policy_loss

    opts = options("ppo", 3.0, True, setting)
    _, old, rollout, advantages, mask = batch(seed=3)
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(*old.shape, 11, generator=g) * 2
    targets = torch.randint(0, 11, old.shape, generator=g)
    x = logits.clone().requires_grad_(True)
    log_probs = torch.log_softmax(x, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    loss, _, _, vllm_kl, filter_ratio = PEER.loss.PolicyLoss(**opts)(log_probs, old, advantages, action_mask=mask,
                                                                      rollout_log_probs=rollout)
    loss.backward()
    cfg = af.ActFocusPolicyLoss(**opts).cfg
    ours_x = logits.clone().requires_grad_(True)
    out = policy_loss(ours_x, targets, old, advantages, mask.float(), rollout_logp=rollout, cfg=cfg, backend=backend)
    out.loss.backward()
    assert_close(out.loss, loss, "loss")
    assert_close(ours_x.grad, x.grad, "grad")
    assert_close(out.rollout_kl, vllm_kl, "vllm_kl")
    assert_close(out.rollout_filter_frac, filter_ratio, "is_filter_ratio")
    with pytest.raises(ValueError, match="needs rollout_logp and old_logp"):
        policy_loss(logits, targets, old, advantages, mask.float(), cfg=cfg, backend=backend)
