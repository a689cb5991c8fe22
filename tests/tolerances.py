"""SPEC section 6 tolerances: relative error ||x - ref|| / ||ref|| against the float64 judge."""
import torch

# per-token outputs and the loss are computed in fp32 whatever the input dtype
OUTPUT_RTOL = 1e-5
# gradients are rounded once to the logits dtype
GRAD_RTOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float64: 1e-10}


def relative_error(value: torch.Tensor, expected: torch.Tensor) -> float:
    value, expected = value.detach().double().cpu(), expected.detach().double().cpu()
    scale = expected.norm().item()
    error = (value - expected).norm().item()
    return error / scale if scale > 0 else error


def assert_rel_close(value, expected, rtol: float, name: str = "value") -> None:
    assert value.shape == expected.shape, f"{name}: shape {tuple(value.shape)} != {tuple(expected.shape)}"
    error = relative_error(value, expected)
    assert error <= rtol, f"{name}: relative error {error:.3e} > {rtol:.1e}"
