"""The comparison scheme of the tensor-parallel benchmark: Megatron-LM's vocab-parallel cross entropy
(``megatron/core/tensor_parallel/cross_entropy.py``, ``VocabParallelCrossEntropy``) written out in
plain torch on this rank's logits block ``[N, V_l]`` and global targets, T = 1.

Forward, THREE all-reduces of one fp32 per token each:

    m       = all_reduce_MAX(max_v z_v)                    the global row max
    z_y - m = all_reduce_SUM(z_y - m on the owner, else 0)  the target logit
    l       = all_reduce_SUM(sum_v exp(z_v - m))           the global sum of exponentials
    loss    = log l - (z_y - m)   (= -logp; lse = m + log l, so energy comes free, entropy does not:
                                   it would need a fourth all-reduce of sum_v exp(z_v - m) z_v)

Backward is local: ``softmax - onehot(y)`` on the block, scaled by the incoming gradient.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

ALL_REDUCES = 3


class VocabParallelCrossEntropy(torch.autograd.Function):
    """``-logp [N]`` of the full rows from this rank's block ``logits [N, V_l]`` (ids from
    ``vocab_start``) and global ``targets [N]``."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, vocab_start: int, group: dist.ProcessGroup) -> Tensor:
        logits = logits.float()
        row_max = logits.max(dim=-1).values
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - row_max.unsqueeze(-1)
        local = targets - vocab_start
        outside = (local < 0) | (local >= logits.shape[-1])
        local = torch.where(outside, 0, local)
        predicted = torch.where(outside, 0.0, shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1))
        dist.all_reduce(predicted, group=group)
        exp = shifted.exp_()
        sum_exp = exp.sum(dim=-1)
        dist.all_reduce(sum_exp, group=group)
        softmax = exp.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, local, outside)
        return sum_exp.log() - predicted

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        softmax, local, outside = ctx.saved_tensors
        grad = softmax.clone()
        rows = torch.arange(grad.shape[0])
        grad[rows, local] -= (~outside).to(grad.dtype)
        return grad * grad_loss.unsqueeze(-1), None, None, None
