"""Vocab-parallel (tensor-parallel) token statistics on ``torch.distributed`` (SPEC section 8).

Rank r of a group of P holds the contiguous block ``[r V_l, (r + 1) V_l)`` of the vocabulary
(``V = P V_l``): its logits ``[..., V_l]``, or its rows of the LM head (weight ``[V_l, H]``, bias
``[V_l]``). Targets are global ids. Every rank returns the same per-token ``logp``, ``energy`` and
``entropy`` (SPEC section 2), differentiable, and backward gives each rank the gradient of its own
shard.

Merge. With ``s = z / T``, each rank runs the existing local ``token_stats`` on its shard with the
targets it owns (shifted to local ids; the others ignored), which gives per row its shard's state

    lse_r = logsumexp_{v in r} s_v = -energy_r / T,    H_r = entropy_r,    logp_r = s_y - lse_r (owner).

One collective, a packed all-gather of these three fp32 per row (12 bytes per token from each rank,
``12 (P - 1)`` received), gives every rank every state. Then, in float64, with ``M = max_r lse_r``:

    lse       = M + log sum_r exp(lse_r - M)
    log a_r   = lse_r - lse          (a_r = sum_{v in r} p_v, the shard's share of the softmax)
    logp      = logp_o + log a_o     (o = y // V_l, the owner of the target; 0 where y is ignored)
    energy    = -T lse
    entropy   = sum_r a_r (H_r - log a_r)     (= lse - sum_r a_r mu_r, mu_r = sum_{v in r} p^r_v s_v)

The entropy form avoids ``lse - mu`` (a cancellation of two large numbers); ``log a_r`` is a
difference, finite where ``a_r`` underflows. Every output is the exact function of the states, so
its error is that of the local statistics: the fp32 rounding of ``energy_r`` (half an ulp of
``T |lse_r|``) becomes an absolute error of ``logp`` and ``entropy`` (about 2e-6 at ``|lse| = 30``).

Gradient. Rank r differentiates the merge with respect to its OWN slot only (the other slots are
constants: they are equal on every rank and each of them is differentiated by its own rank), then
the local ``token_stats`` backward, one ``row_gradient`` pass over the shard. The result is the
global gradient restricted to the shard: for ``L = sum g_logp logp + g_E energy + g_H entropy``
with ``a = g_logp``, ``b = a + T g_E``, ``h = -g_H``, ``p_v = a_r p^r_v`` and ``delta_r = mu_r - mu``,

    dL/ds_v = a 1{v = y} - b p_v + h p_v (s_v - mu)
            = a 1{v = y} - a_r (b - h delta_r) p^r_v + a_r h p^r_v (s_v - mu_r),

the local kernel's form with coefficients ``a' = a`` (owner only), ``b' = a_r (b - h delta_r)``,
``h' = a_r h``. Backward therefore needs no communication on the logits path. On the linear path
``hidden`` is replicated and each rank's backward gives only its shard's part ``G_r W_r`` of the
gradient of ``hidden``: ``ReplicatedInput`` all-reduces (sums) it over the group in backward, as
Megatron's ``copy_to_tensor_model_parallel_region`` does (so do not wrap ``hidden`` in another
region that sums it again). The gradients of the weight and bias rows stay local.

Policy losses (``sharded_policy_loss``, ``sharded_linear_policy_loss``) take the generic two-pass
path of ``variants``: these differentiable statistics, the variant's per-token scalars in torch
(every rank computes them for every token from the same statistics, so no variant, ActFocus
weights included, needs a further collective), then autograd into the local backward.

Checks (errors instead of hangs). Each rank checks its targets against ``[0, P V_l)`` or
``ignore_index`` before any collective. The gathered buffer carries a header row per rank (its
``V_l``, ``T`` and a checksum of the targets) that every rank compares after the collective, so
unequal blocks (a ``V`` not divisible by P), a different temperature or different targets raise the
same ``ValueError`` on every rank. What one collective cannot detect: a different token count N (the
buffers differ in size: gloo aborts the process, NCCL may hang or read garbage), a different
``ignore_index``, ``hidden`` that is not the same on every rank, or a rank that does not call at all
(a hang, bounded only by the group's timeout).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from . import api, linear, ops
from .backends import resolve_backend
from .config import (ActFocusConfig, PolicyLossConfig, PolicyLossOutput, TokenStats, check_ignore_index,
                     check_temperature)
from .policy_rows import CurrentStats, LossInputs, check_loss_configs, loss_inputs
from .rows import Rows, check, check_targets, flat_targets, flatten_rows
from .variants import two_pass_loss

LOCAL_IGNORE = -1  # the local id of a target another rank owns (or that is ignored): no local id is negative
STATE_FIELDS = 3  # fp32 per row and rank in the all-gather: lse_r, H_r, logp_r
CHECKSUM_MODULUS = 1_000_003  # < 2**24: the targets' checksum is exact in the fp32 header


@dataclass(frozen=True)
class VocabShard:
    """This rank's block of the vocabulary: ids ``[start, start + local)`` of ``vocab = size * local``."""

    group: dist.ProcessGroup
    rank: int
    size: int
    local: int

    @property
    def start(self) -> int:
        return self.rank * self.local

    @property
    def vocab(self) -> int:
        return self.size * self.local

    def local_targets(self, targets: Tensor, ignore_index: int) -> Tensor:
        """Global targets -> local ids: ``y - start`` where this rank owns ``y``, else ``LOCAL_IGNORE``."""
        local = targets.to(torch.int64) - self.start
        owned = (targets != ignore_index) & (local >= 0) & (local < self.local)
        return torch.where(owned, local, LOCAL_IGNORE)

    def owners(self, targets: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
        """``(owner rank [N], valid [N])`` of flat global targets (owner 0 where ignored)."""
        valid = targets != ignore_index
        return torch.where(valid, targets.to(torch.int64) // self.local, 0), valid


def vocab_shard(group: dist.ProcessGroup, local_vocab: int) -> VocabShard:
    """The shard of this rank in ``group`` holding ``local_vocab`` ids."""
    check(dist.is_available() and dist.is_initialized(),
          "tp_group needs an initialised torch.distributed process group")
    check(local_vocab > 0, "tp_group: this rank's vocabulary shard is empty (V_local = 0)")
    return VocabShard(group, dist.get_rank(group), dist.get_world_size(group), int(local_vocab))


@dataclass
class ShardStates:
    """Every rank's per-row state, ``[P, N]`` float64; this rank's slot differentiable."""

    lse: Tensor
    entropy: Tensor
    logp: Tensor


def _checksum(targets: Tensor) -> Tensor:
    """A position-weighted checksum of the flat targets, an integer < ``CHECKSUM_MODULUS``."""
    weights = torch.arange(targets.numel(), device=targets.device) % 251 + 1
    return (targets.remainder(CHECKSUM_MODULUS) * weights).sum().remainder(CHECKSUM_MODULUS)


def _check_headers(headers: Tensor, shard: VocabShard) -> None:
    """Every rank compares all headers ``[P, 3]`` (V_l, T, checksum): the same error everywhere."""
    headers = headers.cpu()
    for column, what, hint in ((0, "local vocabulary sizes", "each rank must hold V / P ids: is V divisible by "
                                                               f"the group size {shard.size}?"),
                               (1, "temperatures", "pass the same temperature on every rank"),
                               (2, "target checksums", "every rank must pass the same global targets")):
        values = headers[:, column]
        if bool((values != values[0]).any()):
            shown = [int(v) if column != 1 else float(v) for v in values.tolist()]
            raise ValueError(f"tp_group: the ranks' {what} differ: {shown}; {hint}")


def gather_states(local: TokenStats, targets: Tensor, shard: VocabShard, temperature: float) -> ShardStates:
    """All ranks' states from this rank's local statistics (flat ``[N]``): ONE all-gather of
    ``[1 + N, 3]`` fp32 per rank (a header row, then ``lse_r, H_r, logp_r`` per row)."""
    own = torch.stack((-local.energy / temperature, local.entropy, local.logp), dim=1).to(torch.float32)
    header = torch.stack((torch.tensor(float(shard.local)), torch.tensor(float(temperature)),
                          _checksum(targets).cpu().to(torch.float32))).to(own.device).unsqueeze(0)
    send = torch.cat((header, own.detach())).contiguous()
    received = send.new_empty((shard.size * send.shape[0], STATE_FIELDS))
    dist.all_gather_single(received, send, group=shard.group)
    received = received.view(shard.size, send.shape[0], STATE_FIELDS)
    _check_headers(received[:, 0], shard)
    is_own = (torch.arange(shard.size, device=own.device) == shard.rank).view(-1, 1, 1)
    states = torch.where(is_own, own.unsqueeze(0), received[:, 1:]).to(torch.float64)
    return ShardStates(lse=states[..., 0], entropy=states[..., 1], logp=states[..., 2])


def merge(states: ShardStates, targets: Tensor, shard: VocabShard, temperature: float,
          ignore_index: int) -> TokenStats:
    """The global statistics of flat rows from every rank's state (module docstring), fp32 ``[N]``."""
    peak = states.lse.detach().max(dim=0).values
    lse = peak + torch.exp(states.lse - peak).sum(dim=0).log()
    log_share = states.lse - lse
    entropy = (torch.exp(log_share) * (states.entropy - log_share)).sum(dim=0)
    owner, valid = shard.owners(targets, ignore_index)
    at_owner = owner.unsqueeze(0)
    logp = (states.logp.gather(0, at_owner) + log_share.gather(0, at_owner)).squeeze(0)
    logp = torch.where(valid, logp, 0.0)
    return TokenStats(logp.to(torch.float32), (-temperature * lse).to(torch.float32), entropy.to(torch.float32))


def _merged(local: TokenStats, targets: Tensor, shard: VocabShard, temperature: float,
            ignore_index: int) -> TokenStats:
    """The merge, differentiated on finite states only: a row with a non-finite state (NaN or inf
    logits on some shard) keeps its non-finite outputs, detached, and gets a zero gradient (an
    unused row's 0 incoming gradient would otherwise turn into 0 * NaN = NaN in the merge's backward;
    an active one's loss is non-finite already)."""
    flat_targets = targets.reshape(-1)
    states = gather_states(TokenStats(*(x.reshape(-1) for x in local)), flat_targets, shard, temperature)
    values = (states.lse, states.entropy, states.logp)
    finite = torch.stack([torch.isfinite(x).all(dim=0) for x in values]).all(dim=0)
    safe = ShardStates(*(torch.where(finite, x, 0.0) for x in values))
    merged = merge(safe, flat_targets, shard, temperature, ignore_index)
    if not bool(finite.all()):
        with torch.no_grad():
            raw = merge(states, flat_targets, shard, temperature, ignore_index)
        merged = TokenStats(*(torch.where(finite, x, r) for x, r in zip(merged, raw)))
    return TokenStats(*(x.view(targets.shape) for x in merged))


def _check_common(targets: Tensor, temperature: float, ignore_index: int, owner: str) -> None:
    check(isinstance(targets, Tensor), f"targets must be a torch.Tensor, got {type(targets).__name__}", TypeError)
    check_temperature(owner, temperature)
    check_ignore_index(owner, ignore_index)


def sharded_token_stats(logits: Tensor, targets: Tensor, temperature: float, backend: str, *, ignore_index: int,
                        group: dist.ProcessGroup) -> TokenStats:
    """``token_stats`` of vocab-parallel ``logits [..., V_l]`` (this rank's block) and global
    ``targets``: the statistics of the full rows on every rank, differentiable (own shard)."""
    check(isinstance(logits, Tensor), f"logits must be a torch.Tensor, got {type(logits).__name__}", TypeError)
    _check_common(targets, temperature, ignore_index, "token_stats")
    check(logits.dim() >= 1, "logits must have a vocabulary dimension")
    shard = vocab_shard(group, logits.shape[-1])
    check_targets(targets, shard.vocab, ignore_index)
    local = api.token_stats(logits, shard.local_targets(targets, ignore_index), temperature, backend,
                            ignore_index=LOCAL_IGNORE)
    return _merged(local, targets, shard, temperature, ignore_index)


class ReplicatedInput(torch.autograd.Function):
    """Identity in forward; backward sums the gradient over ``group`` (every rank holds the same
    input and its shard contributes one term of the gradient)."""

    @staticmethod
    def forward(ctx, value: Tensor, group: dist.ProcessGroup) -> Tensor:
        ctx.group = group
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def sharded_linear_token_stats(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float, *,
                               bias: Optional[Tensor], chunk_size: Optional[int], backend: str, ignore_index: int,
                               group: dist.ProcessGroup) -> TokenStats:
    """``linear_token_stats`` with this rank's LM-head rows ``weight [V_l, H]`` (``bias [V_l]``) and
    the replicated ``hidden``: the statistics of the full rows on every rank; backward all-reduces
    the gradient of ``hidden``, the weight and bias gradients are this rank's rows."""
    check(isinstance(weight, Tensor) and weight.dim() == 2,
          f"weight must be the LM head's rows [V_l, H], got {getattr(weight, 'shape', type(weight).__name__)}")
    _check_common(targets, temperature, ignore_index, "linear_token_stats")
    shard = vocab_shard(group, weight.shape[0])
    check_targets(targets, shard.vocab, ignore_index)
    if isinstance(hidden, Tensor) and hidden.requires_grad and torch.is_grad_enabled():
        hidden = ReplicatedInput.apply(hidden, group)
    local = linear.linear_token_stats(hidden, weight, shard.local_targets(targets, ignore_index), temperature,
                                      bias=bias, chunk_size=chunk_size, backend=backend, ignore_index=LOCAL_IGNORE)
    return _merged(local, targets, shard, temperature, ignore_index)


@dataclass(frozen=True)
class LossArguments:
    """The arguments of ``policy_loss`` / ``linear_policy_loss`` other than the logits or the LM
    head and the execution options (their meaning is the unsharded functions')."""

    targets: Tensor
    old_logp: Optional[Tensor]
    advantages: Tensor
    loss_mask: Tensor
    weights: Optional[Tensor]
    action_mask: Optional[Tensor]
    ref_logp: Optional[Tensor]
    cu_seqlens: Optional[Tensor]
    turn_ids: Optional[Tensor]
    cfg: PolicyLossConfig
    actfocus: Optional[ActFocusConfig]
    generator: Optional[torch.Generator]


def _token_rows(args: LossArguments) -> Rows:
    """The token structure of the targets (``[B, L]``, or packed ``[N]`` with ``cu_seqlens``),
    from a stand-in ``[.., 1]`` tensor: no vocabulary, no copy of the logits."""
    check(isinstance(args.targets, Tensor), f"targets must be a torch.Tensor, got {type(args.targets).__name__}",
          TypeError)
    stand_in = torch.zeros(tuple(args.targets.shape) + (1,), dtype=torch.float32, device=args.targets.device)
    return flatten_rows(stand_in, args.targets, args.cu_seqlens, "reference")


def _loss_of(stats: TokenStats, rows: Rows, vocab: int, args: LossArguments) -> PolicyLossOutput:
    """The loss of ``args.cfg`` from the merged differentiable statistics (``variants.two_pass_loss``)."""
    def inputs_with(current_stats: CurrentStats) -> LossInputs:
        return loss_inputs(rows, args.targets, vocab, args.old_logp, args.advantages, args.loss_mask, args.weights,
                           args.action_mask, args.ref_logp, args.turn_ids, args.cfg, args.actfocus, current_stats)

    flat = TokenStats(*(x.reshape(-1) for x in stats))
    return two_pass_loss(flat, rows, inputs_with, args.cfg, args.generator,
                         args.weights is not None or args.actfocus is not None)


def _inplace_grad_stats(logits: Tensor, args: LossArguments, backend: str, group: dist.ProcessGroup) -> TokenStats:
    """``sharded_token_stats`` whose local backward overwrites this rank's logits block by its
    gradient (``ops.InplaceGradTokenStats``: the two-pass losses' ``inplace_grad=True``)."""
    cfg = args.cfg
    backend = resolve_backend(backend, logits.device)
    shard = vocab_shard(group, logits.shape[-1])
    check_targets(args.targets, shard.vocab, cfg.ignore_index)
    local_targets = shard.local_targets(args.targets, cfg.ignore_index)
    rows = flatten_rows(logits, local_targets, args.cu_seqlens, backend, need_view=True)
    local = ops.InplaceGradTokenStats.apply(rows.flat, flat_targets(local_targets), float(cfg.temperature),
                                            LOCAL_IGNORE, backend)
    return _merged(TokenStats(*local), args.targets, shard, cfg.temperature, cfg.ignore_index)


def sharded_policy_loss(logits: Tensor, args: LossArguments, *, inplace_grad: bool, backend: str,
                        group: dist.ProcessGroup) -> PolicyLossOutput:
    """``policy_loss`` of vocab-parallel ``logits [B, L, V_l]`` / ``[N, V_l]`` (this rank's block):
    the same loss and per-token outputs on every rank, the gradient of this rank's block (written
    over the block in backward with ``inplace_grad=True``)."""
    check_loss_configs(args.cfg, args.actfocus)
    check(isinstance(logits, Tensor) and logits.dim() in (2, 3),
          f"logits must be [B, L, V_l] or packed [N, V_l], got {getattr(logits, 'shape', type(logits).__name__)}")
    rows = _token_rows(args)
    cfg = args.cfg
    if inplace_grad and torch.is_grad_enabled() and logits.requires_grad:
        stats = _inplace_grad_stats(logits, args, backend, group)
    else:
        stats = sharded_token_stats(logits, args.targets, cfg.temperature, backend, ignore_index=cfg.ignore_index,
                                    group=group)
    return _loss_of(stats, rows, dist.get_world_size(group) * logits.shape[-1], args)


def sharded_linear_policy_loss(hidden: Tensor, weight: Tensor, args: LossArguments, *, bias: Optional[Tensor],
                               chunk_size: Optional[int], backend: str,
                               group: dist.ProcessGroup) -> PolicyLossOutput:
    """``linear_policy_loss`` with this rank's LM-head rows ``weight [V_l, H]`` (``bias [V_l]``) and
    the replicated ``hidden [B, L, H]`` / ``[N, H]``: the same loss and per-token outputs on every
    rank; the gradient of ``hidden`` is summed over the group, those of the head are this rank's rows."""
    check_loss_configs(args.cfg, args.actfocus)
    check(isinstance(hidden, Tensor) and hidden.dim() in (2, 3),
          f"hidden must be [B, L, H] or packed [N, H], got {getattr(hidden, 'shape', type(hidden).__name__)}")
    rows = _token_rows(args)
    cfg = args.cfg
    stats = sharded_linear_token_stats(hidden, weight, args.targets, cfg.temperature, bias=bias,
                                       chunk_size=chunk_size, backend=backend, ignore_index=cfg.ignore_index,
                                       group=group)
    return _loss_of(stats, rows, dist.get_world_size(group) * weight.shape[0], args)
