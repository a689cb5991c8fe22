"""DTensor LM heads and logits (SPEC section 8): which local tensors and which vocab-parallel group a
call on DTensors runs with.

Logits (``local_logits``): a DTensor sharded on its last dimension (the vocabulary, e.g. the output of
a ``ColwiseParallel`` LM head with ``use_local_output=False``) runs vocab-parallel over its mesh's
group; ``Replicate()`` or sharded on the first (batch) dimension runs on the local tensor (this
rank's tokens; the per-token inputs are this rank's); anything else (``Partial``, a multi-dimensional
mesh) is a ``ValueError`` naming it.

An LM head (``local_head``): the hidden states say which sharding it is:

- tensor parallel (DTensor TP, torchtitan): ``weight`` (and ``bias``) ``Shard(0)`` over a mesh whose
  ``hidden`` is a DTensor ``Replicate()`` on the same mesh (every rank holds the same tokens). The call
  runs on the local shard with ``tp_group`` = the mesh's group (``tensor_parallel.sharded``): one
  all-gather of ``(1 + N) * 12`` bytes per rank in forward, one all-reduce of the ``N x H`` gradient of
  ``hidden`` in backward, the head never gathered;
- data parallel (FSDP2): ``hidden`` a plain tensor, or a DTensor ``Shard(0)`` over the batch (each rank
  its own tokens, the per-token inputs those of ``hidden.to_local()``); ``weight`` ``Shard(0)`` (FSDP2's
  sharding) or ``Replicate()``. The head is gathered for the call with
  ``full_tensor(grad_placements=[Partial("avg")])``: its backward reduce-scatters the mean of the
  ranks' full gradients onto the shards, the gradient FSDP2 gives a parameter of a group whose forward
  runs, so an optimizer step equals the one with the head in the root group (a plain ``full_tensor()``
  backward leaves each rank only its own slice of its own gradient, and FSDP2 never reduces a group
  whose forward is not called). Cost: ``V x H`` gathered (all-gather of ``(P - 1) / P * V * H``
  elements per rank) and a reduce-scatter of the same size in backward, the full head in memory for
  the call;
- data parallel x tensor parallel (torchtitan's FSDP2 over a ``ColwiseParallel`` head): ``weight`` on a
  2-D mesh with named dimensions, ``Shard(0)`` on the one whose mesh holds ``hidden`` (a DTensor
  ``Replicate()``), ``Shard(0)`` (FSDP2's strided shard) or ``Replicate()`` on the other: gathered over
  the data-parallel dimension as above (``Partial("avg")`` gradients), then vocab parallel over the
  tensor-parallel dimension's group on the local block;
- anything else (a head sharded on the hidden dimension ``Shard(1)``, ``Partial``, a mesh of more than
  two dimensions, ``hidden`` replicated over a head that is not vocab-sharded, a DTensor ``hidden``
  with a plain head) is a ``ValueError`` naming the placement.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from .rows import check

try:
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
    from torch.distributed.tensor.placement_types import _StridedShard  # FSDP2's shard over a TP-sharded one
except ImportError:  # a torch built without distributed: no tensor is a DTensor
    DTensor = None


@dataclass(frozen=True)
class LocalLogits:
    """The plain logits a call runs with, and its vocab-parallel group (None: not sharded)."""

    logits: Tensor
    tp_group: object


@dataclass(frozen=True)
class LocalHead:
    """The plain tensors a call on an LM head runs with, and its vocab-parallel group (None: not
    sharded). ``gathered``: the head was gathered for the call (data parallel)."""

    hidden: Tensor
    weight: Tensor
    bias: Optional[Tensor]
    tp_group: object
    gathered: bool = False


def is_dtensor(value) -> bool:
    return DTensor is not None and isinstance(value, DTensor)


def _placement(name: str, value) -> object:
    """The one placement of a DTensor on a 1-D mesh."""
    placements = tuple(value.placements)
    check(value.device_mesh.ndim == 1 and len(placements) == 1,
          f"{name}: a DTensor on a {value.device_mesh.ndim}-D mesh {placements} is not supported here (a 1-D mesh; "
          "an LM head may be on a 2-D (data parallel, tensor parallel) mesh)")
    return placements[0]


def _check_head_placements(weight, bias) -> object:
    placement = _placement("weight", weight)
    check(isinstance(placement, Replicate) or placement == Shard(0),
          f"weight: a DTensor LM head placed {placement!r} is not supported: Shard(0) (vocabulary) or Replicate() only")
    if bias is not None:
        check(is_dtensor(bias), "bias must be a DTensor when weight is one")
        check(bias.device_mesh == weight.device_mesh and tuple(bias.placements) == tuple(weight.placements),
              f"bias: placed {tuple(bias.placements)} on {bias.device_mesh}, weight {tuple(weight.placements)} on "
              f"{weight.device_mesh}: they must match")
    return placement


def local_head(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], tp_group) -> LocalHead:
    """The local tensors and group of a call on ``hidden`` and the LM head ``weight``, ``bias``
    (module docstring); plain tensors pass through unchanged. A collective (the gather) runs here,
    on every rank, for a data-parallel DTensor head."""
    if not (is_dtensor(hidden) or is_dtensor(weight) or is_dtensor(bias)):
        return LocalHead(hidden, weight, bias, tp_group)
    check(is_dtensor(weight), f"hidden is a DTensor placed {getattr(hidden, 'placements', None)} but weight is a "
                              f"{type(weight).__name__}: pass the LM head as a DTensor too, or plain tensors")
    check(tp_group is None, "tp_group: a DTensor head names its own group (its device mesh); pass tp_group=None")
    if weight.device_mesh.ndim == 2:
        return _two_dimensional(hidden, weight, bias)
    placement = _check_head_placements(weight, bias)
    mesh = weight.device_mesh
    if is_dtensor(hidden):
        check(hidden.device_mesh == mesh, f"hidden: a DTensor on {hidden.device_mesh}, weight on {mesh}: the same "
                                          "mesh is needed")
        tokens = _placement("hidden", hidden)
        if isinstance(tokens, Replicate):
            check(placement == Shard(0), f"hidden is Replicate() (tensor parallel) but weight is placed {placement!r}: "
                                         "tensor parallel needs the head Shard(0) on the vocabulary")
            check(weight.shape[0] % mesh.size() == 0,
                  f"weight: a vocabulary of {weight.shape[0]} ids is not divisible by the mesh size {mesh.size()}")
            return LocalHead(hidden.to_local(), weight.to_local(), None if bias is None else bias.to_local(),
                             mesh.get_group())
        check(tokens == Shard(0), f"hidden: a DTensor placed {tokens!r} is not supported: Replicate() (tensor "
                                  "parallel) or Shard(0) on the batch (data parallel)")
        hidden = hidden.to_local()

    def gather(value):
        return None if value is None else value.full_tensor(grad_placements=[Partial("avg")])

    return LocalHead(hidden, gather(weight), gather(bias), None, gathered=True)


def _two_dimensional(hidden, weight: Tensor, bias) -> LocalHead:
    """A head on a 2-D mesh (data parallel x tensor parallel: torchtitan's FSDP2 over a
    ``ColwiseParallel`` head), ``hidden`` a DTensor ``Replicate()`` on the tensor-parallel dimension's
    mesh: gathered over the data-parallel dimension (its gradient the mean over it, as FSDP2's), then
    vocab parallel over the tensor-parallel dimension's group on the local vocabulary shard."""
    mesh, names = weight.device_mesh, weight.device_mesh.mesh_dim_names
    check(is_dtensor(hidden) and tuple(hidden.placements) == (Replicate(),) and names is not None,
          f"hidden: with an LM head on a 2-D mesh {names} placed {tuple(weight.placements)}, hidden must be a "
          f"DTensor Replicate() on the tensor-parallel dimension's mesh, got {getattr(hidden, 'placements', None)}")
    tp = next((i for i, name in enumerate(names) if mesh[name] == hidden.device_mesh), None)
    check(tp is not None, f"hidden: its mesh {hidden.device_mesh} is no dimension of the head's mesh {mesh}")
    tokens, data = weight.placements[tp], weight.placements[1 - tp]
    data_sharded = (data.is_shard(0) or isinstance(data, _StridedShard)) and getattr(data, "dim", None) == 0
    check(tokens == Shard(0) and (isinstance(data, Replicate) or data_sharded),
          f"weight: placed {tuple(weight.placements)} on {names}: the tensor-parallel dimension {names[tp]!r} needs "
          "Shard(0), the data-parallel one Shard(0) or Replicate()")
    check(bias is None or (is_dtensor(bias) and bias.device_mesh == mesh and bias.placements == weight.placements),
          f"bias: must be a DTensor placed like weight {tuple(weight.placements)} on {names}")
    check(weight.shape[0] % mesh.size(tp) == 0,
          f"weight: a vocabulary of {weight.shape[0]} ids is not divisible by {names[tp]!r}'s size {mesh.size(tp)}")
    gathered, grads = [Replicate(), Replicate()], [Partial("avg"), Partial("avg")]
    gathered[tp] = grads[tp] = Shard(0)

    def local(value):
        return None if value is None else value.redistribute(mesh, gathered).to_local(grad_placements=grads)

    return LocalHead(hidden.to_local(), local(weight), local(bias), mesh.get_group(tp), gathered=True)


def local_logits(logits: Tensor, tp_group) -> LocalLogits:
    """The local logits and group of a call on ``logits`` (module docstring); a plain tensor passes
    through unchanged. No collective runs here."""
    if not is_dtensor(logits):
        return LocalLogits(logits, tp_group)
    check(tp_group is None, "tp_group: DTensor logits name their own group (their device mesh); pass tp_group=None")
    placement, mesh = _placement("logits", logits), logits.device_mesh
    if placement == Shard(logits.dim() - 1):
        check(logits.shape[-1] % mesh.size() == 0,
              f"logits: a vocabulary of {logits.shape[-1]} ids is not divisible by the mesh size {mesh.size()}")
        return LocalLogits(logits.to_local(), mesh.get_group())
    check(isinstance(placement, Replicate) or (placement == Shard(0) and logits.dim() > 1),
          f"logits: a DTensor placed {placement!r} is not supported: Shard on the vocabulary (last) dimension, "
          "Shard(0) on the batch or Replicate()")
    return LocalLogits(logits.to_local(), None)
