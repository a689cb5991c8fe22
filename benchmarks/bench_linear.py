"""pytest-benchmark: ``linear_token_stats`` and ``linear_policy_loss`` (hidden states + LM head,
logits never materialised) for every variant; skipped while actfocus_kernels lacks them."""
import pytest

from benchmarks.cases import variants_for

CASES = [(op, variant.name) for op in ("linear_token_stats", "linear_policy_loss") for variant in variants_for(op)]


@pytest.mark.parametrize("op,variant", CASES)
def test_linear(bench_case, op, variant):
    bench_case(op, variant)
