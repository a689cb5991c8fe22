"""pytest-benchmark: ``token_stats`` (logp + energy + entropy, no grad) for every variant."""
import pytest

from benchmarks.cases import variants_for

OP = "token_stats"


@pytest.mark.parametrize("variant", [variant.name for variant in variants_for(OP)])
def test_token_stats(bench_case, variant):
    bench_case(OP, variant)
