"""The checks each rank of a gloo group runs for tests/test_trl_distributed.py, stock TRL 1.16's
``GRPOTrainer`` against ``ActFocusGRPOTrainer`` (ActFocus off), the ranks spawned by
``distributed.run_ranks`` and taken by accelerate as torchrun's (through the environment):

- DDP: each trained for two steps by ``Trainer.train`` (accelerate's multi-CPU DDP): the same logged
  losses and parameters;
- FSDP2: accelerate does not take FSDP on CPU (its state sets ``DistributedType.FSDP`` only for GPU
  kinds), so torch's ``fully_shard`` is applied directly (each decoder layer a group, the root) and one
  Adam step is driven on TRL's ``_compute_loss`` of each rank's own rollout batch: ours equals stock
  TRL with the LM head in the root group, and ours with the head sharded on its own (a DTensor head,
  ``dtensor.local_head``) gives the same parameters."""
from __future__ import annotations

import os

import torch


def launch_environment(rank: int, world_size: int) -> None:
    """What torchrun sets and accelerate reads for a multi-CPU run (the group is initialised already)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT="29500")


def full_params(model) -> torch.Tensor:
    """Every parameter, gathered when FSDP2 shards it."""
    return torch.cat([(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().flatten()
                      for p in model.parameters()])


def trained(trainer_cls, config_cls, model_dir: str, out_dir: str, **options):
    from datasets import Dataset

    from toy_lm import PROMPTS, toy_reward, toy_tokenizer
    from trl_helpers import config_kwargs

    args = config_cls(**config_kwargs(out_dir, **options))
    trainer = trainer_cls(model=model_dir, reward_funcs=toy_reward, args=args,
                          train_dataset=Dataset.from_dict({"prompt": PROMPTS * 2}), processing_class=toy_tokenizer())
    trainer.train()
    return trainer


def check_ddp_equal_to_stock_trl(rank: int, world_size: int, model_dir: str, out_dir: str) -> None:
    """Two DDP steps of stock TRL and of ours, from the same saved Qwen2."""
    from trl import GRPOConfig, GRPOTrainer

    from actfocus_kernels.integrations.trl import ActFocusGRPOConfig, ActFocusGRPOTrainer

    from trl_helpers import logged, rel

    launch_environment(rank, world_size)
    options = dict(loss_type="dapo", beta=0.05, per_device_train_batch_size=2, num_generations=4)
    stock = trained(GRPOTrainer, GRPOConfig, model_dir, out_dir, **options)
    ours = trained(ActFocusGRPOTrainer, ActFocusGRPOConfig, model_dir, out_dir, **options)
    assert ours.accelerator.num_processes == stock.accelerator.num_processes == world_size
    stock_losses, our_losses = logged(stock, "loss"), logged(ours, "loss")
    assert len(stock_losses) == len(our_losses) == 2, (stock_losses, our_losses)
    for a, b in zip(our_losses, stock_losses):
        assert abs(a - b) <= 1e-6 * max(abs(b), 1.0), (our_losses, stock_losses)
    assert rel(full_params(ours.model), full_params(stock.model)) <= 1e-6


def fsdp2_step(trainer, inputs: dict, head_on_its_own: bool):
    """``fully_shard`` the trainer's model (each decoder layer, optionally the LM head, then the root),
    one Adam step on ``_compute_loss``; the loss and the full parameters after it."""
    from torch.distributed.fsdp import fully_shard

    model = trainer.model
    for layer in model.model.layers:
        fully_shard(layer)
    if head_on_its_own:
        fully_shard(model.lm_head)
    fully_shard(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    trainer.current_gradient_accumulation_steps = 1
    model.train()
    loss = trainer._compute_loss(model, dict(inputs))
    loss.backward()
    optimizer.step()
    return loss.detach(), full_params(model)


def check_fsdp2_equal_to_stock_trl(rank: int, world_size: int, model_dir: str, out_dir: str) -> None:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from actfocus_kernels.integrations.trl import ActFocusGRPOConfig, ActFocusGRPOTrainer

    from toy_lm import PROMPTS, toy_reward, toy_tokenizer
    from trl_helpers import config_kwargs, rel, rollout_batch

    launch_environment(rank, world_size)
    options = dict(loss_type="dapo", beta=0.05, temperature=0.7)

    def build(trainer_cls, config_cls, **extra):
        args = config_cls(**config_kwargs(out_dir, **options, **extra))
        return trainer_cls(model=model_dir, reward_funcs=toy_reward, args=args,
                           train_dataset=Dataset.from_dict({"prompt": PROMPTS}), processing_class=toy_tokenizer())

    inputs = rollout_batch(build(GRPOTrainer, GRPOConfig), seed=1 + rank)  # each rank its own completions
    stock_loss, stock_params = fsdp2_step(build(GRPOTrainer, GRPOConfig), inputs, head_on_its_own=False)
    our_loss, our_params = fsdp2_step(build(ActFocusGRPOTrainer, ActFocusGRPOConfig), inputs, head_on_its_own=False)
    own_loss, own_params = fsdp2_step(build(ActFocusGRPOTrainer, ActFocusGRPOConfig), inputs, head_on_its_own=True)
    start = full_params(build(GRPOTrainer, GRPOConfig).model)
    assert abs(float(our_loss - stock_loss)) <= 1e-6 * max(abs(float(stock_loss)), 1.0)
    assert abs(float(own_loss - stock_loss)) <= 1e-6 * max(abs(float(stock_loss)), 1.0)
    assert rel(our_params, stock_params) <= 1e-6, rel(our_params, stock_params)
    assert rel(own_params, our_params) <= 1e-6, rel(own_params, our_params)
    assert rel(stock_params, start) > 1e-4  # it trained
    # ActFocus on, the head sharded on its own: the current statistics and the loss on the gathered head
    actfocus = build(ActFocusGRPOTrainer, ActFocusGRPOConfig, actfocus_enabled=True,
                     actfocus_action_pattern=r"\b(left|right|up|down)\b")
    batch = rollout_batch(actfocus, seed=1 + rank)
    assert "actfocus_action_mask" in batch
    loss, params = fsdp2_step(actfocus, batch, head_on_its_own=True)
    assert torch.isfinite(loss) and rel(params, start) > 1e-4
    assert actfocus._metrics["train"]["actfocus/weight_max"][-1] >= 1.0


def every_check(rank: int, world_size: int, model_dir: str, out_dir: str) -> None:
    """One spawn for both (the processes and their imports are the slow part)."""
    check_ddp_equal_to_stock_trl(rank, world_size, model_dir, out_dir)
    check_fsdp2_equal_to_stock_trl(rank, world_size, model_dir, out_dir)
