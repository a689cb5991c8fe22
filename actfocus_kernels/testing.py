"""The SPEC section 6 tolerance table and the relative error it bounds, shared by the test suite and
the benchmarks (both import it from the installed package). Plain torch; no test framework.

The relative error of ``x`` against a reference ``ref`` (the float64 judge, or the unsharded op) is

    rel(x, ref) = ||x - ref||_2 / ||ref||_2        (the absolute error ||x - ref||_2 when ref = 0)

over all elements, both sides upcast to float64 on the CPU. SPEC section 6 bounds it by
``OUTPUT_RTOL`` for the per-token outputs and the loss (computed in fp32 whatever the input dtype)
and by ``GRAD_RTOL[dtype]`` for a gradient in the logits' ``dtype`` (rounded once to it).
"""
from __future__ import annotations

import torch

# per-token outputs and the loss are computed in fp32 whatever the input dtype
OUTPUT_RTOL = 1e-5
# gradients are rounded once to the logits dtype
GRAD_RTOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float64: 1e-10}


def relative_error(value: torch.Tensor, expected: torch.Tensor) -> float:
    """``||value - expected|| / ||expected||`` (Frobenius norms, in float64 on the CPU).

    Args:
        value: the tensor under test.
        expected: the reference, broadcastable with ``value``.

    Returns:
        The relative error; the absolute error ``||value - expected||`` when ``expected`` is all zero.
        NaN when either side holds a NaN (a non-finite result never passes a tolerance).
    """
    value, expected = value.detach().double().cpu(), expected.detach().double().cpu()
    scale = expected.norm().item()
    error = (value - expected).norm().item()
    return error / scale if scale > 0 else error


def assert_rel_close(value: torch.Tensor, expected: torch.Tensor, rtol: float, name: str = "value") -> None:
    """Raise ``AssertionError`` naming ``name`` unless ``value`` has ``expected``'s shape and
    ``relative_error(value, expected) <= rtol``.

    Args:
        value: the tensor under test.
        expected: the reference, of the same shape.
        rtol: the bound, e.g. ``OUTPUT_RTOL`` or ``GRAD_RTOL[dtype]``.
        name: what ``value`` is, for the message.

    Returns:
        None.
    """
    if value.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(value.shape)} != {tuple(expected.shape)}")
    error = relative_error(value, expected)
    if not error <= rtol:
        raise AssertionError(f"{name}: relative error {error:.3e} > {rtol:.1e}")
