"""The row contract: the typed records that carry a policy loss's per-row inputs and outputs from
the public functions through the ``actfocus`` ops to every backend's kernels (SPEC section 4).

On rows ``logits [N, V]`` (unit stride along V) the public functions fold the aggregation mode into
a per-token ``scale = d loss / d token_loss``, so that ``loss = sum_t token_loss_t`` with

    token_loss_t = scale_t (w_t L_pg,t + kl_coef KL_t - entropy_coef H_t),

and every backend implements ``policy_loss(logits, RowLossInputs, dlogits?) -> RowLossOutputs``.
The op schemas are generated from the record's fields (``RowLossInputs.schema()``), and the op
glue rebuilds the record from the op's named arguments (``RowLossInputs.from_named``), so no
argument ever travels by position.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Optional

from torch import Tensor

KL_TYPE_IDS = {"k1": 1, "k2": 2, "k3": 3}
_SCHEMA_TYPES = {Tensor: "Tensor", Optional[Tensor]: "Tensor?", float: "float", int: "int", bool: "bool", str: "str"}


class _OpRecord:
    """A record whose fields are arguments of an op: their schema, and the conversions by name."""

    @classmethod
    def schema(cls) -> str:
        """The fields as ``torch.library`` schema arguments, e.g. ``"Tensor targets, Tensor? old_logp, ..."``."""
        hints = typing.get_type_hints(cls)
        return ", ".join(f"{_SCHEMA_TYPES[hints[f.name]]} {f.name}" for f in dataclasses.fields(cls))

    @classmethod
    def from_named(cls, named: Mapping[str, Any]):
        """The record from an op's arguments by name (extra names, e.g. ``logits``, are ignored)."""
        return cls(**{f.name: named[f.name] for f in dataclasses.fields(cls)})

    def as_kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments of an op whose schema embeds ``schema()``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def take(self, rows):
        """The record of a subset of rows (a slice or an index tensor): per-token tensors indexed."""
        return dataclasses.replace(self, **{
            f.name: getattr(self, f.name)[rows] for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        })


@dataclass(frozen=True)
class RowLossInputs(_OpRecord):
    """Per-row inputs of the fused policy loss: ``[N]`` tensors (``targets`` int64, the rest
    float32; ``old_logp=None`` is on-policy, ``ref_logp=None`` no KL) and the scalar parameters.
    ``logit_scale > 0`` (1 = off) and ``softcap >= 0`` (0 = off) transform the logits (SPEC 10:
    ``s = softcap tanh(logit_scale z / softcap) / T``, or ``logit_scale z / T`` without cap).
    ``dual_clip <= 1`` is off; ``kl_type`` is 1 (k1), 2 (k2) or 3 (k3), see ``KL_TYPE_IDS``."""

    targets: Tensor
    old_logp: Optional[Tensor]
    advantages: Tensor
    ref_logp: Optional[Tensor]
    weights: Tensor
    scale: Tensor
    temperature: float
    logit_scale: float
    softcap: float
    clip_low: float
    clip_high: float
    dual_clip: float
    kl_coef: float
    kl_type: int
    entropy_coef: float
    ignore_index: int


@dataclass(frozen=True)
class RowGradientInputs(_OpRecord):
    """Per-row coefficients of the gradient pass (``row_gradient``): with the transformed logits
    ``s`` (SPEC 10), the row's own softmax ``p = softmax(s)`` and ``mu = sum_v p_v s_v``,

        dz_v = ds_v/dz_v (target_coef 1{v = y} - prob_coef p_v + centred_coef p_v (s_v - mu)),
        ds_v/dz_v = logit_scale (1 - tanh^2(logit_scale z_v / softcap)) / T   (logit_scale / T without cap),

    exactly 0 on rows whose three coefficients are 0, no one-hot term where ``y == ignore_index``.
    In these terms ``dz = a dlogp/dz + (a - b) dlse/dz - h dH/dz`` with ``(a, b, h)`` the three
    coefficients (``a`` taken as 0 where the target is ignored); the fused policy loss is
    ``a = b = scale c``, ``h = scale entropy_coef``."""

    targets: Tensor
    target_coef: Tensor
    prob_coef: Tensor
    centred_coef: Tensor
    temperature: float
    logit_scale: float
    softcap: float
    ignore_index: int


def outputs_schema(outputs: type) -> str:
    """A NamedTuple of tensors as ``torch.library`` schema returns: ``"Tensor <field>, ..."``."""
    return ", ".join(f"Tensor {name}" for name in outputs._fields)


class RowLossOutputs(NamedTuple):
    """Per-row outputs of the fused policy loss, ``[N]``: fp32 ``token_loss`` (0 on inactive rows),
    ``logp``, ``energy``, ``entropy``, ``ratio`` (1 on inactive rows) and bool ``clipped``."""

    token_loss: Tensor
    logp: Tensor
    energy: Tensor
    entropy: Tensor
    ratio: Tensor
    clipped: Tensor


class LossOpOutputs(NamedTuple):
    """What the policy-loss ops return before any gradient output: the summed fp32 ``loss`` and
    the per-row outputs of ``RowLossOutputs`` other than ``token_loss``."""

    loss: Tensor
    logp: Tensor
    energy: Tensor
    entropy: Tensor
    ratio: Tensor
    clipped: Tensor

    schema = classmethod(outputs_schema)  # "Tensor loss, Tensor logp, ..."



@dataclass(frozen=True)
class TokenStatsInputs(_OpRecord):
    """Per-row inputs of ``token_stats``: ``targets [N]`` int64 and the transform of SPEC 10
    (``logit_scale > 0``, 1 = off; ``softcap >= 0``, 0 = off); ``extra_stats`` asks for the three
    statistics of ``TokenStatsOutputs`` beyond section 2's (empty ``[0]`` tensors otherwise)."""

    targets: Tensor
    temperature: float
    ignore_index: int
    logit_scale: float
    softcap: float
    extra_stats: bool


class TokenStatsOutputs(NamedTuple):
    """Per-row outputs of ``token_stats``, ``[N]``: fp32 ``logp`` (0 where the target is ignored),
    ``energy = -T lse``, ``entropy``, and with ``extra_stats`` fp32 ``log_sum_sq_probs = log sum_v p_v^2``,
    fp32 ``mean_logits = mean_v s_v`` and bool ``is_top1`` (the target is the first index of
    ``max_v s_v``; false where ignored); without ``extra_stats`` those three are empty ``[0]`` tensors."""

    logp: Tensor
    energy: Tensor
    entropy: Tensor
    log_sum_sq_probs: Tensor
    mean_logits: Tensor
    is_top1: Tensor

    schema = classmethod(outputs_schema)  # "Tensor logp, Tensor energy, ..."
