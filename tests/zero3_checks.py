"""The check each rank of a gloo group runs for tests/test_trl_zero3.py: stock TRL 1.16's
``GRPOTrainer`` against ``ActFocusGRPOTrainer`` (ActFocus off, and on) under DeepSpeed ZeRO-3 on the
CPU, each trained for two steps by ``Trainer.train`` from the same saved Qwen2.

accelerate takes DeepSpeed only off the CPU (``cpu=False``), and then, with no accelerator device, picks
no backend and sees one process; ``take_deepspeed_on_cpu`` makes it take the torchrun-style environment
as the multi-CPU gloo run it is (it then switches to ``DistributedType.DEEPSPEED`` itself). DeepSpeed
runs its CPU accelerator (``DS_ACCELERATOR=cpu``, gloo without oneCCL). Every parameter is partitioned
(``stage3_param_persistence_threshold`` 0: the toy's small tensors too), so the LM head outside its
forward is a partition of numel 0, as on a real model."""
from __future__ import annotations

import os

import torch

from trl_distributed_checks import launch_environment, trained

DEEPSPEED = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
             "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
             "train_batch_size": "auto", "gradient_clipping": "auto", "bf16": {"enabled": False},
             "fp16": {"enabled": False}, "zero_allow_untested_optimizer": True}


def take_deepspeed_on_cpu() -> None:
    """accelerate's backend choice, where it finds no device for a DeepSpeed run of torchrun's
    environment: the gloo multi-CPU run."""
    from accelerate.state import DistributedType, PartialState

    choose = PartialState._prepare_backend

    def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        chosen, kind = choose(self, cpu, sagemaker_dp, backend)
        if (kind == DistributedType.NO and not cpu and "LOCAL_RANK" in os.environ
                and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"):
            return "gloo", DistributedType.MULTI_CPU
        return chosen, kind

    PartialState._prepare_backend = prepare_backend


def gathered_params(trainer) -> torch.Tensor:
    """Every parameter of the trained model, gathered from the ZeRO-3 partitions."""
    import deepspeed

    params = list(trainer.model_wrapped.module.parameters())
    with deepspeed.zero.GatheredParameters(params):
        return torch.cat([p.detach().flatten().clone() for p in params])


def check_zero3_equal_to_stock_trl(rank: int, world_size: int, model_dir: str, out_dir: str) -> None:
    os.environ.update(DS_ACCELERATOR="cpu", ACCELERATE_TORCH_DEVICE="cpu")  # before DeepSpeed picks one
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    from trl import GRPOConfig, GRPOTrainer

    from actfocus_kernels.integrations.trl import ActFocusGRPOConfig, ActFocusGRPOTrainer

    from trl_helpers import logged, rel

    launch_environment(rank, world_size)
    take_deepspeed_on_cpu()
    options = dict(loss_type="dapo", beta=0.05, temperature=0.7, per_device_train_batch_size=2, num_generations=4,
                   deepspeed=DEEPSPEED, use_cpu=False)
    stock = trained(GRPOTrainer, GRPOConfig, model_dir, out_dir, **options)
    ours = trained(ActFocusGRPOTrainer, ActFocusGRPOConfig, model_dir, out_dir, **options)
    assert is_deepspeed_zero3_enabled() and ours.accelerator.num_processes == world_size
    head = ours.model_wrapped.module.lm_head.weight
    assert head.numel() == 0 < head.ds_numel  # partitioned outside its forward
    stock_losses, our_losses = logged(stock, "loss"), logged(ours, "loss")
    assert len(stock_losses) == len(our_losses) == 2, (stock_losses, our_losses)
    for a, b in zip(our_losses, stock_losses):
        assert abs(a - b) <= 1e-6 * max(abs(b), 1.0), (our_losses, stock_losses)
    stock_params, our_params = gathered_params(stock), gathered_params(ours)
    assert rel(our_params, stock_params) <= 1e-6, rel(our_params, stock_params)
    # ActFocus on: the rollout statistics (the old-policy pass, gradient accumulation 2) and the loss
    actfocus = trained(ActFocusGRPOTrainer, ActFocusGRPOConfig, model_dir, out_dir, actfocus_enabled=True,
                       actfocus_action_pattern=r"\b(left|right|up|down)\b", gradient_accumulation_steps=2,
                       **options)
    assert all(map(torch.isfinite, torch.tensor(logged(actfocus, "loss"))))
    assert rel(gathered_params(actfocus), stock_params) > 1e-6  # it trained, otherwise
    weight_max = logged(actfocus, "actfocus/weight_max")
    assert weight_max and min(weight_max) >= 1.0, weight_max
