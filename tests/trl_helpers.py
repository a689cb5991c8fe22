"""Helpers of the TRL drop-in tests (tests/test_integration_trl.py, tests/test_trl_models.py): the
tiny trainers' config, flat parameters, relative differences, logged values and a rollout batch with every
per-token input a TRL batch can carry."""
from __future__ import annotations

import torch
from trl import GRPOTrainer

from toy_lm import PROMPTS


def config_kwargs(tmp_path, **options):
    kwargs = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
                  max_steps=2, learning_rate=1e-3, report_to=[], logging_steps=1, save_strategy="no", use_cpu=True,
                  seed=0, bf16=False, disable_tqdm=True)
    kwargs.update(options)
    return kwargs


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def logged(trainer, key: str) -> list:
    return [h[key] for h in trainer.state.log_history if key in h and "train_runtime" not in h]


def rollout_batch(trainer, seed: int = 1) -> dict:
    """A rollout batch of ``trainer`` plus every per-token input a TRL batch can carry: old, reference
    and sampling log-probs near the current ones, and both shapes of the vLLM IS ratio."""
    torch.manual_seed(seed)
    trainer.model.train()
    inputs = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS])
    shape = inputs["completion_ids"].shape
    with torch.no_grad():
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
        att = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
        current, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(trainer, trainer.model, ids, att, shape[1])
    inputs["advantages"] = torch.randn(shape[0])
    inputs["old_per_token_logps"] = current + 0.3 * torch.randn(shape)
    inputs["ref_per_token_logps"] = current + 0.3 * torch.randn(shape)
    inputs["sampling_per_token_logps"] = current + 0.05 * torch.randn(shape)
    inputs["token_is"] = torch.rand(shape) * 2
    inputs["sequence_is"] = torch.rand(shape[0], 1) * 2
    return inputs
