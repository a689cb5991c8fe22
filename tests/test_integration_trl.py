"""actfocus_kernels.integrations.trl against the real TRL 1.16 GRPOTrainer (SPEC section 9), on CPU.

- Two real training steps (generation, rewards, two Adam steps) of stock ``GRPOTrainer`` and
  ``ActFocusGRPOTrainer`` with ActFocus off from the same tiny random Qwen2: equal logged losses and
  parameters, for each covered loss type and option.
- One ``_compute_loss`` call of each on the same rollout batch with every per-token input TRL can hand
  over (old, reference and sampling log-probs, vLLM importance-sampling ratios): equal loss and
  gradients for the options that need them.
- ActFocus on: it trains and logs the energies; neutral ActFocus weights reproduce stock TRL.
- Every uncovered option is an error at construction.
"""
from __future__ import annotations

import math
import re

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from actfocus_kernels.integrations.trl import LOSS_TYPES, ActFocusGRPOConfig, ActFocusGRPOTrainer  # noqa: E402

from toy_lm import PROMPTS, toy_model_dir, toy_reward, toy_tokenizer  # noqa: E402
from trl_helpers import config_kwargs, flat_params, logged, rel, rollout_batch  # noqa: E402

# losses relative to their scale, the advantages (unit std): on-policy GRPO losses are sums that cancel to ~1e-8
LOSS_TOL = 1e-6
PARAM_TOL = 1e-6
GRAD_TOL = 1e-5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return toy_model_dir(tmp_path_factory.mktemp("toy_qwen2"))


@pytest.fixture(scope="module")
def tokenizer():
    return toy_tokenizer()


@pytest.fixture(scope="module")
def dataset():
    return Dataset.from_dict({"prompt": PROMPTS})


def build(trainer_cls, config_cls, model_dir, tokenizer, dataset, tmp_path, **options):
    args = config_cls(**config_kwargs(tmp_path, **options))
    return trainer_cls(model=model_dir, reward_funcs=toy_reward, args=args, train_dataset=dataset,
                       processing_class=tokenizer)


def trained_pair(model_dir, tokenizer, dataset, tmp_path, **options):
    """Stock GRPOTrainer and ActFocusGRPOTrainer, each built (which seeds every generator) and trained
    in turn, so that both sample the same completions."""
    stock = build(GRPOTrainer, GRPOConfig, model_dir, tokenizer, dataset, tmp_path, **options)
    stock.train()
    ours = build(ActFocusGRPOTrainer, ActFocusGRPOConfig, model_dir, tokenizer, dataset, tmp_path, **options)
    ours.train()
    return stock, ours


# loss type -> the option sets run through two training steps (each also on-policy by default)
TRAIN_CASES = [(loss_type, {}) for loss_type in LOSS_TYPES if loss_type != "cispo"] + [
    ("cispo", dict(epsilon_high=5.0)),
    ("grpo", dict(steps_per_generation=2)),  # TRL computes old log-probs
    ("dapo", dict(gradient_accumulation_steps=2, mask_truncated_completions=True)),
    ("grpo", dict(importance_sampling_level="sequence", steps_per_generation=2, delta=1.05)),
    ("dapo", dict(beta=0.1)),  # TRL's default use_bias_correction_kl=True
    ("dapo", dict(entropy_coef=0.05, gradient_accumulation_steps=2)),
    ("dapo", dict(top_entropy_quantile=0.5, steps_per_generation=2)),
    ("dr_grpo", dict(off_policy_mask_threshold=1e-4, steps_per_generation=2)),
    # TRL's adaptive controller: the bonus off at step 1 (no entropy seen yet), on at step 2, the coefficient moving
    ("grpo", dict(use_adaptive_entropy=True, entropy_coef=0.05, entropy_target=5.0, gradient_accumulation_steps=2)),
    ("dapo", dict(use_adaptive_entropy=True, entropy_coef=0.3, entropy_target=0.5, entropy_coef_delta=0.1)),
    ("grpo", dict(use_adaptive_entropy=True, entropy_coef=0.05, entropy_target=5.0, top_entropy_quantile=0.5)),
]


@pytest.mark.parametrize("loss_type,options", TRAIN_CASES,
                         ids=[f"{lt}-{'-'.join(o) or 'default'}" for lt, o in TRAIN_CASES])
def test_two_steps_equal_stock_trl(loss_type, options, model_dir, tokenizer, dataset, tmp_path):
    stock, ours = trained_pair(model_dir, tokenizer, dataset, tmp_path, loss_type=loss_type, **options)
    start = flat_params(AutoModelForCausalLM.from_pretrained(model_dir))
    stock_losses, our_losses = logged(stock, "loss"), logged(ours, "loss")
    assert len(stock_losses) == len(our_losses) == 2
    for a, b in zip(our_losses, stock_losses):
        assert abs(a - b) <= LOSS_TOL * max(abs(b), 1.0), (our_losses, stock_losses)
    assert rel(flat_params(ours.model), flat_params(stock.model)) <= PARAM_TOL
    assert rel(flat_params(ours.model), start) > 0  # it trained
    for key in ("entropy", "clip_ratio/region_mean", "entropy_coef"):
        assert logged(ours, key) == pytest.approx(logged(stock, key), rel=1e-5, abs=1e-6)
    assert ours.entropy_coef == pytest.approx(stock.entropy_coef)


# -- one loss call with every per-token input -------------------------------------------------------


LOSS_CASES = [(loss_type, {}) for loss_type in LOSS_TYPES if loss_type != "cispo"] + [
    ("cispo", dict(epsilon_high=1.2)),
    ("cispo", dict(epsilon_high=5.0, beta=0.05)),
    ("sapo", dict(sapo_temperature_pos=0.8, sapo_temperature_neg=1.3, beta=0.05, use_bias_correction_kl=False)),
] + [
    (loss_type, dict(beta=0.05, use_bias_correction_kl=False)) for loss_type in ("grpo", "dapo", "dr_grpo")
] + [
    (loss_type, dict(beta=0.05)) for loss_type in ("grpo", "bnpo", "luspo")  # bias-corrected KL
] + [
    (loss_type, dict(importance_sampling_level="sequence", beta=0.05))
    for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
] + [
    ("grpo", dict(delta=1.1)),
    ("dapo", dict(delta=1.1, importance_sampling_level="sequence", epsilon_high=0.28)),
    ("grpo", dict(entropy_coef=0.1)),
    ("dapo", dict(entropy_coef=0.1)),
    ("cispo", dict(entropy_coef=0.1, epsilon_high=5.0)),
    ("vespo", dict(vespo_k_pos=1.5, vespo_lambda_neg=1.0, beta=0.05, use_bias_correction_kl=False,
                   entropy_coef=0.1)),
    ("grpo", dict(vllm="sequence_is", importance_sampling_level="sequence")),
] + [
    ("grpo", dict(vllm="token_is")),
    ("dapo", dict(vllm="sequence_is")),
    ("bnpo", dict(off_policy_mask_threshold=0.02)),
    ("dr_grpo", dict(top_entropy_quantile=0.3)),
    ("luspo", dict(top_entropy_quantile=0.6, off_policy_mask_threshold=0.02, vllm="token_is")),
    ("bnpo", dict(entropy_coef=0.1, epsilon_high=0.28)),
    ("dapo", dict(entropy_coef=0.1, top_entropy_quantile=0.5)),  # the bonus over the high-entropy tokens
    ("grpo", dict(entropy_coef=0.1, top_entropy_quantile=0.4, beta=0.05)),
]


@pytest.mark.parametrize("loss_type,options", LOSS_CASES,
                         ids=[f"{lt}-{'-'.join(f'{k}' for k in o) or 'default'}" for lt, o in LOSS_CASES])
def test_loss_and_gradients_equal_stock_trl(loss_type, options, model_dir, tokenizer, dataset, tmp_path):
    options = dict(options, mask_truncated_completions=True, gradient_accumulation_steps=2)
    vllm = options.pop("vllm", None)
    stock = build(GRPOTrainer, GRPOConfig, model_dir, tokenizer, dataset, tmp_path, loss_type=loss_type, **options)
    ours = build(ActFocusGRPOTrainer, ActFocusGRPOConfig, model_dir, tokenizer, dataset, tmp_path,
                 loss_type=loss_type, **options)
    inputs = rollout_batch(stock)
    results = []
    for trainer in (stock, ours):
        trainer.current_gradient_accumulation_steps = 2
        trainer.model.train()
        trainer.use_vllm = vllm is not None
        trainer.vllm_importance_sampling_correction = vllm is not None
        batch = dict(inputs, importance_sampling_ratio=inputs[vllm]) if vllm else dict(inputs)
        trainer.model.zero_grad()
        loss = trainer._compute_loss(trainer.model, batch)
        loss.backward()
        results.append((loss.detach(), torch.cat([p.grad.flatten() for p in trainer.model.parameters()])))
    (stock_loss, stock_grad), (our_loss, our_grad) = results
    assert float(stock_grad.norm()) > 0
    assert abs(float(our_loss - stock_loss)) <= LOSS_TOL * max(abs(float(stock_loss)), 1.0)
    assert rel(our_grad, stock_grad) <= GRAD_TOL
    for key in ("entropy", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/low_min", "kl",
                "policy_loss", "cispo_clip_ratio", "vespo/phi_seq_mean"):
        assert ours._metrics["train"][key] == pytest.approx(stock._metrics["train"][key], rel=1e-5, abs=1e-6)


# -- ActFocus on ------------------------------------------------------------------------------------

ACTION_WORDS = r"\b(left|right|up|down)\b"


def action_word_spans(text: str):
    """The callable form of the span rule: the character spans of the movement words."""
    return [m.span() for m in re.finditer(ACTION_WORDS, text)]


@pytest.mark.parametrize("options", [dict(actfocus_action_pattern=ACTION_WORDS),
                                     dict(actfocus_action_pattern=ACTION_WORDS, steps_per_generation=2),
                                     dict(actfocus_action_spans=action_word_spans, loss_type="grpo")],
                         ids=["current-stats", "rollout-stats", "callable-spans"])
def test_actfocus_trains_and_logs_energies(options, model_dir, tokenizer, dataset, tmp_path):
    trainer = build(ActFocusGRPOTrainer, ActFocusGRPOConfig, model_dir, tokenizer, dataset, tmp_path,
                    actfocus_enabled=True, **options)
    start = flat_params(trainer.model)
    trainer.train()
    assert rel(flat_params(trainer.model), start) > 0
    for key in ("actfocus/energy_action", "actfocus/energy_reasoning", "actfocus/weight_mean",
                "actfocus/weight_max", "actfocus/action_share"):
        values = logged(trainer, key)
        assert len(values) == 2 and all(math.isfinite(v) for v in values), key
    assert all(0 < s < 1 for s in logged(trainer, "actfocus/action_share"))
    assert all(e < 0 for e in logged(trainer, "actfocus/energy_action"))
    weight_max = logged(trainer, "actfocus/weight_max")
    assert all(w >= 1 for w in weight_max) and any(w > 1 for w in weight_max)  # redistributed toward actions


def test_actfocus_weights_come_from_the_rollout_when_trl_has_old_logps(model_dir, tokenizer, dataset, tmp_path):
    trainer = build(ActFocusGRPOTrainer, ActFocusGRPOConfig, model_dir, tokenizer, dataset, tmp_path,
                    actfocus_enabled=True, actfocus_action_pattern=ACTION_WORDS, steps_per_generation=2)
    torch.manual_seed(1)
    trainer.model.train()
    batch = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS * 2])
    assert {"old_per_token_logps", "actfocus_weights", "actfocus_action_mask"} <= set(batch)
    mask = batch["completion_mask"].bool()
    # the rollout pass returns TRL's log-probs (the old-policy pass) within the fused op's rounding
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    att = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad():
        stock, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(trainer, trainer.model, ids, att, mask.shape[1])
    assert rel(batch["old_per_token_logps"][mask], stock[mask]) <= 1e-6
    action = batch["actfocus_action_mask"].bool() & mask
    assert action.any() and (~action & mask).any()
    assert torch.all(batch["actfocus_weights"][~action & mask] == 0.5)  # reasoning_weight


def test_neutral_actfocus_equals_stock_trl(model_dir, tokenizer, dataset, tmp_path):
    """ActFocusConfig(reasoning_weight=1, redistribution=0, action_weight=1) is vanilla GRPO."""
    stock = build(GRPOTrainer, GRPOConfig, model_dir, tokenizer, dataset, tmp_path, loss_type="grpo")
    stock.train()
    ours = build(ActFocusGRPOTrainer, ActFocusGRPOConfig, model_dir, tokenizer, dataset, tmp_path, loss_type="grpo",
                 actfocus_enabled=True, actfocus_reasoning_weight=1.0, actfocus_redistribution=0.0,
                 actfocus_action_pattern=ACTION_WORDS)
    ours.train()
    assert rel(flat_params(ours.model), flat_params(stock.model)) <= PARAM_TOL


# -- construction errors ----------------------------------------------------------------------------

UNCOVERED = [
    dict(loss_type="vespo", beta=0.1),  # bias-corrected by the token ratio
    dict(loss_type="vespo", importance_sampling_level="sequence"),
    dict(loss_type="cispo"),  # epsilon_high = epsilon = 0.2: min(r, 0.2)
    dict(loss_type="sapo", importance_sampling_level="sequence"),
    dict(loss_type="cispo", epsilon_high=5.0, importance_sampling_level="sequence"),
    dict(actfocus_scope="turn"),
]


@pytest.mark.parametrize("options", UNCOVERED, ids=["-".join(f"{k}={v}" for k, v in o.items()) for o in UNCOVERED])
def test_uncovered_option_is_a_construction_error(options, tmp_path):
    with pytest.raises(ValueError, match="ActFocusGRPOTrainer does not reproduce TRL's"):
        ActFocusGRPOConfig(**config_kwargs(tmp_path, **options))


def test_config_mirrors_every_actfocus_field(tmp_path):
    import dataclasses

    from actfocus_kernels import ActFocusConfig

    args = ActFocusGRPOConfig(**config_kwargs(tmp_path))
    assert args.actfocus_enabled is False
    for f in dataclasses.fields(ActFocusConfig):
        if f.name != "source":  # chosen by the trainer
            assert getattr(args, f"actfocus_{f.name}") == f.default, f.name
    assert args.actfocus_config("old") == ActFocusConfig(source="old")


def test_bad_actfocus_fields_are_construction_errors(tmp_path):
    with pytest.raises(ValueError, match="reasoning_weight"):
        ActFocusGRPOConfig(**config_kwargs(tmp_path, actfocus_reasoning_weight=-1.0))
    with pytest.raises(ValueError, match="not a valid regex"):
        ActFocusGRPOConfig(**config_kwargs(tmp_path, actfocus_action_pattern="(unclosed"))


def test_plain_grpo_config_is_checked_by_the_trainer(model_dir, tokenizer, dataset, tmp_path):
    with pytest.raises(ValueError, match="loss_type='sapo'"):
        build(ActFocusGRPOTrainer, GRPOConfig, model_dir, tokenizer, dataset, tmp_path, loss_type="sapo",
              importance_sampling_level="sequence")


def test_tokenizer_without_offsets_is_a_construction_error(model_dir, tokenizer, dataset, tmp_path):
    class SlowTokenizer(type(tokenizer)):
        is_fast = False

    slow = toy_tokenizer()
    slow.__class__ = SlowTokenizer
    with pytest.raises(ValueError, match="character offsets"):
        build(ActFocusGRPOTrainer, ActFocusGRPOConfig, model_dir, slow, dataset, tmp_path, actfocus_enabled=True)
