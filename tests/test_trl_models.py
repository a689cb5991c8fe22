"""ActFocusGRPOTrainer (ActFocus off) on the models stock TRL 1.16 trains, against stock TRL's own
``GRPOTrainer._compute_loss`` (issue 24's parity): tiny Qwen2 and a tiny Qwen2-MoE with the router
aux loss, grpo and dapo, ``beta > 0`` and ``temperature != 1``: loss and every parameter gradient
within 1e-5, and two real training steps (generation, rewards, Adam) to the same parameters. Also the
drift of two Adam steps with gradient accumulation and a KL term (the README's TRL claim)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from actfocus_kernels.integrations.trl import ActFocusGRPOConfig, ActFocusGRPOTrainer  # noqa: E402

from toy_lm import FAMILIES, PROMPTS, SPECIALS, WORDS, toy_family, toy_model, toy_reward, toy_tokenizer  # noqa: E402
from trl_helpers import config_kwargs, flat_params, logged, rel, rollout_batch  # noqa: E402

TOL = 1e-5  # issue 24: loss and the gradient within 1e-5 of stock TRL
# Each parameter's own gradient, against stock's and the exact one (the same fp32 backbone, the head and the
# loss in float64: exact_head_grads): within 1e-5 of stock's beyond stock's own distance from exact, and within
# 1e-5 of exact or closer to it than stock's. A bare 1e-5 from stock per tensor is below stock's own rounding:
# measured on the MoE's k_proj bias, ours 1.5e-5 from stock, stock 1.4e-5 and ours 9.6e-6 from exact (stock's
# fp32 rounding of the loss gradient, amplified through the routed layer), so no correct implementation meets it.
AUX_COEF = 0.05


def toy_moe(seed: int = 0):
    """A one-layer Qwen2-MoE (4 experts, top 2, a shared expert) with a router aux loss coefficient."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    torch.manual_seed(seed)
    config = Qwen2MoeConfig(vocab_size=len(SPECIALS) + len(WORDS), hidden_size=32, intermediate_size=64,
                            moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4,
                            num_experts_per_tok=2, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                            max_position_embeddings=64, tie_word_embeddings=False, initializer_range=0.5,
                            router_aux_loss_coef=AUX_COEF, pad_token_id=0, eos_token_id=1, bos_token_id=1)
    return Qwen2MoeForCausalLM(config)


MODELS = {"qwen2": toy_model, "qwen2-moe": toy_moe, **{name: (lambda name=name: toy_family(name)) for name in FAMILIES}}
CASES = ([(model, loss_type, dict(beta=0.05, temperature=0.7)) for model in ("qwen2", "qwen2-moe")
          for loss_type in ("grpo", "dapo")]
         + [(family, loss_type, dict(beta=0.05, temperature=0.7)) for family in FAMILIES
            for loss_type in ("grpo", "dapo")])


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Each model saved once (TRL loads the reference model from the policy's path when beta > 0)."""
    dirs = {}
    for name, make in MODELS.items():
        dirs[name] = str(tmp_path_factory.mktemp(name))
        make().save_pretrained(dirs[name])
    return dirs


def build(trainer_cls, config_cls, model_dir, tmp_path, **options):
    args = config_cls(**config_kwargs(tmp_path, **options))
    return trainer_cls(model=model_dir, reward_funcs=toy_reward, args=args,
                       train_dataset=Dataset.from_dict({"prompt": PROMPTS}), processing_class=toy_tokenizer())


def exact_head_grads(trainer, inputs, monkeypatch):
    """``loss_and_grad`` with the head and the loss in float64 (the reference backend) on the fp32 backbone."""
    from actfocus_kernels.integrations.trl import trainer as trainer_module

    fused = trainer_module.linear_policy_loss

    def in_float64(hidden, weight, targets, old_logp, advantages, mask, *, bias=None, ref_logp=None, **options):
        def wide(x):
            return None if x is None else x.double()
        return fused(hidden.double(), weight.double(), targets, wide(old_logp), wide(advantages), mask, bias=wide(bias),
                     ref_logp=wide(ref_logp), backend="reference", **options)

    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "linear_policy_loss", in_float64)
        return loss_and_grad(trainer, inputs)[1]


def loss_and_grad(trainer, inputs):
    trainer.current_gradient_accumulation_steps = 2
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, dict(inputs))
    loss.backward()
    return loss.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                           for p in trainer.model.parameters()]


@pytest.mark.parametrize("model_name,loss_type,options", CASES, ids=[f"{m}-{lt}" for m, lt, _ in CASES])
def test_loss_and_every_gradient_equal_stock_trl(model_name, loss_type, options, model_dirs, tmp_path, monkeypatch):
    options = dict(options, loss_type=loss_type, gradient_accumulation_steps=2)
    stock = build(GRPOTrainer, GRPOConfig, model_dirs[model_name], tmp_path, **options)
    ours = build(ActFocusGRPOTrainer, ActFocusGRPOConfig, model_dirs[model_name], tmp_path, **options)
    assert stock.aux_loss_enabled == (model_name == "qwen2-moe") == ours.aux_loss_enabled
    inputs = rollout_batch(stock)
    stock_loss, stock_grads = loss_and_grad(stock, inputs)
    our_loss, our_grads = loss_and_grad(ours, inputs)
    assert abs(float(our_loss - stock_loss)) <= TOL * max(abs(float(stock_loss)), 1.0)
    names = [name for name, _ in stock.model.named_parameters()]
    assert rel(torch.cat([g.flatten() for g in our_grads]), torch.cat([g.flatten() for g in stock_grads])) <= TOL
    if model_name == "qwen2-moe":
        assert ours._metrics["train"]["aux_loss"] == pytest.approx(stock._metrics["train"]["aux_loss"], rel=1e-6)
        router = [g for n, g in zip(names, stock_grads) if n.endswith("mlp.gate.weight")]
        assert router and float(router[0].norm()) > 0  # the aux loss reaches the router
    exact = exact_head_grads(ours, inputs, monkeypatch)
    for name, a, b, c in zip(names, our_grads, stock_grads, exact):
        assert rel(a, b) <= TOL + rel(b, c), (name, rel(a, b), rel(b, c))
        assert rel(a, c) <= max(TOL, rel(b, c)), (name, rel(a, c), rel(b, c))


@pytest.mark.parametrize("model_name,loss_type,options", CASES, ids=[f"{m}-{lt}" for m, lt, _ in CASES])
def test_two_steps_equal_stock_trl(model_name, loss_type, options, model_dirs, tmp_path):
    stock = build(GRPOTrainer, GRPOConfig, model_dirs[model_name], tmp_path, loss_type=loss_type, **options)
    stock.train()
    ours = build(ActFocusGRPOTrainer, ActFocusGRPOConfig, model_dirs[model_name], tmp_path, loss_type=loss_type,
                 **options)
    ours.train()
    for a, b in zip(logged(ours, "loss"), logged(stock, "loss")):
        assert abs(a - b) <= TOL * max(abs(b), 1.0)
    assert rel(flat_params(ours.model), flat_params(stock.model)) <= TOL


def test_accumulation_and_kl_drift_of_two_adam_steps(model_dirs, tmp_path):
    """The README's TRL claim: two Adam steps with gradient accumulation and a KL term, parameters
    relative to stock TRL: 1.3e-8 measured here, 2e-6 in issue 24's run (Adam divides by sqrt(v), so a
    1e-7 gradient difference on a near-zero moment grows); the README claims 1e-5."""
    options = dict(loss_type="dapo", beta=0.1, gradient_accumulation_steps=2)
    stock = build(GRPOTrainer, GRPOConfig, model_dirs["qwen2"], tmp_path, **options)
    stock.train()
    ours = build(ActFocusGRPOTrainer, ActFocusGRPOConfig, model_dirs["qwen2"], tmp_path, **options)
    ours.train()
    drift = rel(flat_params(ours.model), flat_params(stock.model))
    print(f"accumulation + KL, two Adam steps: parameters relative {drift:.2e}")
    assert drift <= 1e-5


def test_vlm_text_config_equals_stock_trl(tmp_path):
    """A vision-language model (Llava over a tiny Qwen2 text model) on a text batch: TRL's text config and
    backbone, the language model's head; loss and gradient equal stock TRL's."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    from toy_lm import toy_config

    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=8, patch_size=4, projection_dim=16)
    config = LlavaConfig(vision_config=vision, text_config=toy_config(), image_token_index=2, pad_token_id=0)
    model_dir = str(tmp_path / "vlm")
    LlavaForConditionalGeneration(config).save_pretrained(model_dir)
    options = dict(loss_type="grpo", temperature=0.7, gradient_accumulation_steps=2)
    stock = build(GRPOTrainer, GRPOConfig, model_dir, tmp_path, **options)
    ours = build(ActFocusGRPOTrainer, ActFocusGRPOConfig, model_dir, tmp_path, **options)
    assert ours.model.config.get_text_config() is not ours.model.config
    inputs = rollout_batch(stock)
    stock_loss, stock_grads = loss_and_grad(stock, inputs)
    our_loss, our_grads = loss_and_grad(ours, inputs)
    assert abs(float(our_loss - stock_loss)) <= TOL * max(abs(float(stock_loss)), 1.0)
    grads = [torch.cat([g.flatten() for g in gs]) for gs in (our_grads, stock_grads)]
    assert float(grads[1].norm()) > 0 and rel(*grads) <= TOL


def test_cast_lm_head_to_fp32_with_a_bf16_head_equals_stock_trl(tmp_path):
    """A bf16 model with ``cast_lm_head_to_fp32=True``: TRL makes the head's parameters fp32 and computes fp32
    logits from the bf16 hidden states; ours takes the same fp32 head (the linear path with
    ``logits_dtype=float32``): the same loss, and the bf16 backbone's gradients within one rounding."""
    model_dir = str(tmp_path / "bf16")
    toy_model().to(torch.bfloat16).save_pretrained(model_dir)
    options = dict(loss_type="grpo", temperature=0.7, gradient_accumulation_steps=2, cast_lm_head_to_fp32=True,
                   model_init_kwargs={"dtype": torch.bfloat16})
    stock = build(GRPOTrainer, GRPOConfig, model_dir, tmp_path, **options)
    ours = build(ActFocusGRPOTrainer, ActFocusGRPOConfig, model_dir, tmp_path, **options)
    assert ours.model.get_output_embeddings().weight.dtype == torch.float32
    assert ours.model.get_input_embeddings().weight.dtype == torch.bfloat16
    inputs = rollout_batch(stock)
    stock_loss, stock_grads = loss_and_grad(stock, inputs)
    our_loss, our_grads = loss_and_grad(ours, inputs)
    assert abs(float(our_loss - stock_loss)) <= TOL * max(abs(float(stock_loss)), 1.0)
    grads = [torch.cat([g.float().flatten() for g in gs]) for gs in (our_grads, stock_grads)]
    assert float(grads[1].norm()) > 0 and rel(*grads) <= 1e-2


def test_actfocus_with_a_reference_model_and_no_old_logps_trains(model_dirs, tmp_path):
    """beta > 0 on-policy: TRL's first log-prob pass of a rollout is the reference model's, which stays
    TRL's (the rollout capture is for the old-policy pass only); the weights come from the current
    statistics."""
    trainer = build(ActFocusGRPOTrainer, ActFocusGRPOConfig, model_dirs["qwen2"], tmp_path, beta=0.05,
                    actfocus_enabled=True, actfocus_action_pattern=r"\b(left|right|up|down)\b")
    start = flat_params(trainer.model)
    trainer.train()
    assert rel(flat_params(trainer.model), start) > 0
    assert all(k >= 0 for k in logged(trainer, "kl")) and len(logged(trainer, "kl")) == 2
