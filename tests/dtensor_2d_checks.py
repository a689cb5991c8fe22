"""The checks each rank of a 4-process gloo group runs for tests/test_dtensor.py: an LM head on a 2-D
mesh ("dp" x "tp", torchtitan's FSDP2 over a tensor-parallel head) with hidden states replicated on
the "tp" dimension: each data-parallel rank's loss and hidden-state gradient equal the unsharded op on
its own tokens, the head's gradient is the mean over "dp" of the full gradients, on this rank's block."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

from actfocus_kernels import linear_policy_loss
from actfocus_kernels.testing import GRAD_RTOL, OUTPUT_RTOL, assert_rel_close

from dtensor_checks import CFG, H, V, batch, head


def expected(dp_size: int):
    """Every data-parallel rank's loss and hidden gradient on its own tokens, and the mean head gradients."""
    weight, bias = head()
    losses, hidden_grads, weight_grads, bias_grads = [], [], [], []
    for dp in range(dp_size):
        hidden, targets, inputs = batch(10 + dp)
        h, w, b = (x.clone().requires_grad_() for x in (hidden, weight, bias))
        out = linear_policy_loss(h, w, targets, bias=b, cfg=CFG, **inputs)
        out.loss.backward()
        losses.append(out.loss.detach())
        hidden_grads.append(h.grad)
        weight_grads.append(w.grad)
        bias_grads.append(b.grad)
    return losses, hidden_grads, torch.stack(weight_grads).mean(0), torch.stack(bias_grads).mean(0)


def check_two_dimensional_mesh(rank: int, world_size: int) -> None:
    mesh = init_device_mesh("cpu", (2, world_size // 2), mesh_dim_names=("dp", "tp"))
    dp = mesh.get_local_rank("dp")
    losses, hidden_grads, weight_grad, bias_grad = expected(2)
    weight, bias = head()
    linear = nn.Linear(H, V)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    parallelize_module(linear, mesh["tp"], ColwiseParallel())
    fully_shard(linear, mesh=mesh["dp"])  # torchtitan's layout: the dp placement a strided shard
    assert linear.weight.device_mesh.ndim == 2, linear.weight.placements
    for d_weight, d_bias in ((linear.weight, linear.bias),
                             tuple(distribute_tensor(x, mesh, [Shard(0), Shard(0)]).requires_grad_()
                                   for x in (weight, bias))):
        hidden, targets, inputs = batch(10 + dp)
        d_hidden = distribute_tensor(hidden, mesh["tp"], [Replicate()]).requires_grad_()
        out = linear_policy_loss(d_hidden, d_weight, targets, bias=d_bias, cfg=CFG, **inputs)
        out.loss.backward()
        assert_rel_close(out.loss, losses[dp], OUTPUT_RTOL, "loss")
        assert_rel_close(d_hidden.grad.to_local(), hidden_grads[dp], GRAD_RTOL[torch.float32], "grad hidden")
        assert_rel_close(d_weight.grad.full_tensor(), weight_grad, GRAD_RTOL[torch.float32], "grad weight: dp mean")
        assert_rel_close(d_bias.grad.full_tensor(), bias_grad, GRAD_RTOL[torch.float32], "grad bias: dp mean")
    with pytest.raises(ValueError, match="hidden must be a DTensor Replicate"):
        linear_policy_loss(hidden, linear.weight, targets, bias=linear.bias, cfg=CFG, **inputs)
    with pytest.raises(ValueError, match="'tp' needs Shard"):
        linear_policy_loss(d_hidden, distribute_tensor(weight, mesh, [Shard(0), Replicate()]), targets, cfg=CFG,
                           **inputs)
