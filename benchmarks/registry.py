"""Every op module's ops in one order — the order of the tables and of the plan — and the
variant names they use, each once, in the order they first appear (the tables' row order)."""
from __future__ import annotations

import actfocus_kernels as ak

from .bench_linear import LINEAR_POLICY_LOSS, LINEAR_TOKEN_STATS
from .bench_policy_loss import POLICY_LOSS, POLICY_LOSS_FULL
from .bench_token_stats import TOKEN_STATS
from .case import Case, Op, Variant
from .inputs import Inputs

OPS: dict[str, Op] = {op.name: op for op in (POLICY_LOSS, TOKEN_STATS, POLICY_LOSS_FULL, LINEAR_POLICY_LOSS,
                                              LINEAR_TOKEN_STATS)}


def _first_of_each_name() -> tuple[Variant, ...]:
    by_name: dict[str, Variant] = {}
    for op in OPS.values():
        for variant in op.variants:
            by_name.setdefault(variant.name, variant)
    return tuple(by_name.values())


VARIANTS = _first_of_each_name()


def available_ops() -> list[str]:
    """The logits-level ops, and the linear ones once ``actfocus_kernels`` has them."""
    return [name for name, op in OPS.items() if not op.linear or hasattr(ak, name)]


def variants_for(op_name: str) -> tuple[Variant, ...]:
    return OPS[op_name].variants


def variant(op_name: str, variant_name: str) -> Variant:
    return next(variant for variant in OPS[op_name].variants if variant.name == variant_name)


def build_case(op_name: str, variant: Variant, inputs: Inputs) -> Case:
    """The case of ``variant`` for ``op_name`` on ``inputs``; raises ``Skip`` when it can't run."""
    return variant.build(OPS[op_name], inputs)
