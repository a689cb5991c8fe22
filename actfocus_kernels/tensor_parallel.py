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

Policy losses on a ``ShardedSource`` take the engine's two-pass path: these differentiable
statistics, the variant's per-token scalars in torch
(every rank computes them for every token from the same statistics, so no variant, ActFocus
weights included, needs a further collective), then autograd into the local backward.

Checks (errors instead of hangs). Each rank checks its own inputs (its shard, the global targets
against ``[0, P V_l)`` or ``ignore_index``, every per-token input) before the collective; a rank whose
checks raise still takes part in the collective with a failure header (``agreed``), so every rank
raises. The gathered buffer carries a header row per rank (its ``V_l`` or ``FAILED``, ``T`` and a
checksum of the targets) that every rank compares after the collective, so a failed rank, unequal
blocks (a ``V`` not divisible by P), a different temperature or different targets raise a
``ValueError`` on every rank. What one collective cannot detect: a different token count N (the
buffers differ in size: gloo aborts the process, NCCL may hang or read garbage), a different
``ignore_index``, ``hidden`` that is not the same on every rank, or a rank that does not call at all
(a hang, bounded only by the group's timeout).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, NoReturn, Optional, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from . import compat
from .config import LogitTransform, TokenStats
from .rows import check
from .sources import StatsSource

LOCAL_IGNORE = -1  # the local id of a target another rank owns (or that is ignored): no local id is negative
STATE_FIELDS = 3  # fp32 per row and rank in the all-gather: lse_r, H_r, logp_r
EXTRA_FIELDS = 4  # with extra_stats: log sum p_r^2, mean_r s, max_r s, the local is_top1
CHECKSUM_MODULUS = 1_000_003  # < 2**24: the targets' checksum is exact in the fp32 header
FAILED = -1.0  # the header's V_l of a rank whose own checks failed before the collective
ERROR_KINDS = (ValueError, TypeError, RuntimeError, Exception)  # the failure header's error kind, by index
T = TypeVar("T")


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
    extras: Optional[Tensor] = None  # [P, N, EXTRA_FIELDS], detached, with extra_stats


def _checksum(targets: Tensor) -> Tensor:
    """A position-weighted checksum of the flat targets, an integer < ``CHECKSUM_MODULUS``."""
    weights = torch.arange(targets.numel(), device=targets.device) % 251 + 1
    return (targets.remainder(CHECKSUM_MODULUS) * weights).sum().remainder(CHECKSUM_MODULUS)


def _check_headers(headers: Tensor, shard: VocabShard) -> None:
    """Every rank compares all headers ``[P, 3]`` (V_l, T, checksum): the same error everywhere."""
    headers = headers.cpu()
    failed = [rank for rank, v_l in enumerate(headers[:, 0].tolist()) if v_l == FAILED]
    if failed:
        kinds = [ERROR_KINDS[int(headers[rank, 1])].__name__ for rank in failed]
        raise ValueError(f"tp_group: rank(s) {failed} rejected their input before the collective ({', '.join(kinds)}; "
                         "their own error says why): no rank computed this call")
    for column, what, hint in ((0, "local vocabulary sizes", "each rank must hold V / P ids: is V divisible by "
                                                               f"the group size {shard.size}?"),
                               (1, "temperatures", "pass the same temperature on every rank"),
                               (2, "target checksums", "every rank must pass the same global targets")):
        values = headers[:, column]
        if bool((values != values[0]).any()):
            shown = [int(v) if column != 1 else float(v) for v in values.tolist()]
            raise ValueError(f"tp_group: the ranks' {what} differ: {shown}; {hint}")


def state_fields(extra_stats: bool) -> int:
    """fp32 per row and rank in the call's all-gather."""
    return STATE_FIELDS + (EXTRA_FIELDS if extra_stats else 0)


def fail_together(group: dist.ProcessGroup, targets: Tensor, error: BaseException, extra_stats: bool) -> NoReturn:
    """This rank's own checks raised ``error`` before the call's one collective: take part in it with a
    failure header (``V_l = FAILED``, the error's kind), so that no rank waits for this one and every
    other rank raises too (``_check_headers``), then raise ``error``."""
    fields = state_fields(extra_stats)
    send = torch.zeros((1 + targets.numel(), fields), dtype=torch.float32, device=targets.device)
    send[0, 0] = FAILED
    send[0, 1] = next(i for i, kind in enumerate(ERROR_KINDS) if isinstance(error, kind))
    received = send.new_empty((dist.get_world_size(group) * send.shape[0], fields))
    compat.all_gather_single(received, send, group=group)
    raise error


def agreed(group: Optional[dist.ProcessGroup], targets, build: Callable[[], T], extra_stats: bool = False) -> T:
    """``build()``: a call's checks and sources before its collective. Under a ``group``, a rank whose
    checks raise still takes part in the collective (``fail_together``), so a check whose outcome
    differs between ranks (a target out of range, a shard only one rank rejects, a bad mask on one
    rank) raises on every rank instead of leaving the others waiting. Not covered: targets that are
    not a tensor, or a token count that differs between ranks (the collective's sizes differ)."""
    if group is None:
        return build()
    try:
        return build()
    except Exception as error:  # noqa: BLE001 - every rank must hear of it before it is raised
        if not (dist.is_available() and dist.is_initialized()) or not isinstance(targets, Tensor):
            raise
        fail_together(group, targets, error, extra_stats)


def gather_states(local: TokenStats, targets: Tensor, shard: VocabShard, temperature: float,
                  local_max: Optional[Tensor] = None) -> ShardStates:
    """All ranks' states from this rank's local statistics (flat ``[N]``): ONE all-gather of
    ``[1 + N, F]`` fp32 per rank (a header row, then ``lse_r, H_r, logp_r`` per row; with the extra
    statistics, ``local_max`` the shard's ``max s``, also ``log sum p_r^2, mean_r s, max_r s, top1_r``)."""
    columns = [-local.energy / temperature, local.entropy, local.logp]
    if local_max is not None:
        columns += [local.log_sum_sq_probs, local.mean_logits, local_max, local.is_top1]
    own = torch.stack([x.to(torch.float32) for x in columns], dim=1)
    fields = own.shape[1]
    header = torch.zeros((1, fields), dtype=torch.float32, device=own.device)
    header[0, :3] = torch.stack((torch.tensor(float(shard.local)), torch.tensor(float(temperature)),
                                 _checksum(targets).cpu().to(torch.float32))).to(own.device)
    send = torch.cat((header, own.detach())).contiguous()
    received = send.new_empty((shard.size * send.shape[0], fields))
    compat.all_gather_single(received, send, group=shard.group)
    received = received.view(shard.size, send.shape[0], fields)
    _check_headers(received[:, 0, :3], shard)
    is_own = (torch.arange(shard.size, device=own.device) == shard.rank).view(-1, 1, 1)
    states = torch.where(is_own, own.unsqueeze(0), received[:, 1:]).to(torch.float64)
    extras = states[..., STATE_FIELDS:].detach() if local_max is not None else None
    return ShardStates(lse=states[..., 0], entropy=states[..., 1], logp=states[..., 2], extras=extras)


def merge_extras(states: ShardStates, lse: Tensor, targets: Tensor, shard: VocabShard,
                 ignore_index: int) -> tuple[Tensor, Tensor, Tensor]:
    """The extra statistics of the full rows (detached): ``log sum p^2 = logsumexp_r(log sum p_r^2 +
    2 (lse_r - lse))``, ``mean s = mean_r mean_r s`` (equal blocks), and ``is_top1``: the owner's
    local ``is_top1`` and no other block's ``max s`` above the owner's (nor equal to it on a lower
    rank: the first index wins)."""
    log_sq, mean, block_max, top1 = (states.extras[..., i] for i in range(EXTRA_FIELDS))
    log_sum_sq = torch.logsumexp(log_sq + 2.0 * (states.lse.detach() - lse.detach()), dim=0)
    owner, valid = shard.owners(targets, ignore_index)
    owner_max = block_max.gather(0, owner.unsqueeze(0))
    ranks = torch.arange(shard.size, device=owner.device).unsqueeze(1)
    beaten = torch.where(ranks < owner, block_max >= owner_max, block_max > owner_max).any(dim=0)
    is_top1 = valid & (top1.gather(0, owner.unsqueeze(0)).squeeze(0) > 0) & ~beaten
    return log_sum_sq.to(torch.float32), mean.mean(dim=0).to(torch.float32), is_top1


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
    extras = () if states.extras is None else merge_extras(states, lse, targets, shard, ignore_index)
    return TokenStats(logp.to(torch.float32), (-temperature * lse).to(torch.float32), entropy.to(torch.float32),
                      *extras)


def _merged(local: TokenStats, targets: Tensor, shard: VocabShard, temperature: float, ignore_index: int,
            local_max: Optional[Tensor] = None) -> TokenStats:
    """The merge, differentiated on finite states only: a row with a non-finite state (NaN or inf
    logits on some shard) keeps its non-finite outputs, detached, and gets a zero gradient (an
    unused row's 0 incoming gradient would otherwise turn into 0 * NaN = NaN in the merge's backward;
    an active one's loss is non-finite already)."""
    flat_targets = targets.reshape(-1)
    states = gather_states(local.map(lambda x: x.reshape(-1)), flat_targets, shard, temperature, local_max)
    values = (states.lse, states.entropy, states.logp)
    finite = torch.stack([torch.isfinite(x).all(dim=0) for x in values]).all(dim=0)
    safe = ShardStates(*(torch.where(finite, x, 0.0) for x in values), extras=states.extras)
    merged = merge(safe, flat_targets, shard, temperature, ignore_index)
    if not bool(finite.all()):
        with torch.no_grad():
            raw = merge(states, flat_targets, shard, temperature, ignore_index)
        merged = TokenStats(*(None if x is None else torch.where(finite, x, r)
                              for x, r in zip(merged.all_fields(), raw.all_fields())))
    return merged.map(lambda x: x.view(targets.shape))


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


@dataclass(frozen=True)
class ShardedSource:
    """A statistics source (``sources``) over this rank's block of the vocabulary: the inner source's
    local statistics of the targets it owns, merged over the group (module docstring). No single-pass
    loss: every policy loss runs the two passes on the merged differentiable statistics (every rank
    computes the variant's scalars for every token from the same statistics, so no variant, ActFocus
    weights included, needs a further collective)."""

    inner: StatsSource
    shard: VocabShard
    fused: ClassVar[bool] = False

    @property
    def vocab(self) -> int:
        return self.shard.vocab

    @property
    def transform(self) -> LogitTransform:
        return self.inner.transform

    def token_stats(self, targets: Tensor, temperature: float, ignore_index: int,
                    extra_stats: bool = False) -> TokenStats:
        """The merged statistics; with ``extra_stats`` each block's ``max s`` (``row_max``) joins the
        states so that ``is_top1`` can be decided across the blocks."""
        def local_pass():
            local = self.inner.token_stats(self.shard.local_targets(targets, ignore_index), temperature,
                                           LOCAL_IGNORE, extra_stats)
            return local, (scaled_max(self.inner, temperature) if extra_stats else None)

        local, local_max = agreed(self.shard.group, targets, local_pass, extra_stats)
        return _merged(local, targets, self.shard, temperature, ignore_index, local_max)

    def detached_stats(self, targets: Tensor, temperature: float, ignore_index: int,
                       selected: Optional[Tensor]) -> TokenStats:
        with torch.no_grad():
            return self.token_stats(targets, temperature, ignore_index)


def scaled_max(source: StatsSource, temperature: float) -> Tensor:
    """``max_v s_v`` per row of a source's block: the transform is increasing, so ``s(max_v z_v)``."""
    with torch.no_grad():
        peak = source.row_max().double()
        scale, cap = source.transform
        scaled = cap * torch.tanh(scale * peak / cap) if cap > 0 else scale * peak
        return scaled / temperature


def sharded(source: StatsSource, group: Optional[dist.ProcessGroup]) -> StatsSource:
    """``source`` itself when ``group`` is None, else the ``ShardedSource`` of this rank's vocabulary
    block (the source's vocabulary) in ``group``; an LM head's replicated hidden states get their
    gradient summed over the group in backward (``ReplicatedInput``)."""
    if group is None:
        return source
    shard = vocab_shard(group, source.vocab)

    def replicate(hidden: Tensor) -> Tensor:
        return ReplicatedInput.apply(hidden, group) if hidden.requires_grad and torch.is_grad_enabled() else hidden

    return ShardedSource(source.with_replicated_input(replicate), shard)
