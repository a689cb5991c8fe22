"""How every ``actfocus`` op is registered: one style for all of them.

``define_op`` defines the schema (``torch.library.define``), the implementation
(CompositeExplicitAutograd), the fake, and optionally the autograd formula. The dispatcher hands
implementations, fakes and ``setup_context`` the op's arguments by position; ``Signature`` names
them from the op's own schema, and lays out a backward's result as exactly one entry per op input
(newer torch checks the count), so no glue counts or slices arguments.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

NAMESPACE = "actfocus"


class Signature:
    """The argument names of ``actfocus::<name>`` as its schema declares them."""

    def __init__(self, name: str, schema: str) -> None:
        parsed = torch._C.parse_schema(f"{NAMESPACE}::{name}{schema}")
        self.names = tuple(argument.name for argument in parsed.arguments)

    def bind(self, args: Sequence[Any], kwargs: Optional[dict] = None) -> dict[str, Any]:
        """``{name: value}`` of the op's arguments (positional, then any passed by keyword)."""
        named = dict(zip(self.names, args))
        named.update(kwargs or {})
        missing = set(self.names) - set(named)
        if missing:
            raise TypeError(f"{NAMESPACE} op: missing arguments {sorted(missing)}")
        return named

    def gradients(self, **grads: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], ...]:
        """A backward's result: the named gradients in input order, ``None`` for every other input."""
        unknown = set(grads) - set(self.names)
        if unknown:
            raise TypeError(f"{NAMESPACE} op: no inputs named {sorted(unknown)}")
        return tuple(grads.get(name) for name in self.names)


def define_op(
    name: str,
    schema: str,
    impl: Callable,
    fake: Callable,
    backward: Optional[Callable] = None,
    setup_context: Optional[Callable] = None,
) -> Signature:
    """Register ``actfocus::<name>`` with ``schema`` (``"(args) -> outputs"``); returns its ``Signature``.

    ``impl`` and ``fake`` take the op's arguments as the dispatcher passes them; ``backward`` and
    ``setup_context`` are those of ``torch.library.register_autograd``.
    """
    qualname = f"{NAMESPACE}::{name}"
    torch.library.define(qualname, schema)
    torch.library.impl(qualname, "CompositeExplicitAutograd")(impl)
    torch.library.register_fake(qualname)(fake)
    if backward is not None:
        torch.library.register_autograd(qualname, backward, setup_context=setup_context)
    return Signature(name, schema)
