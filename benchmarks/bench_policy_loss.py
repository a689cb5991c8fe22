"""pytest-benchmark: the policy loss forward + backward from logits for every variant, with the
default terms (``policy_loss``) and with all of them (``policy_loss_full``: entropy bonus, k3 KL,
dual clip)."""
import pytest

from benchmarks.cases import variants_for

CASES = [(op, variant.name) for op in ("policy_loss", "policy_loss_full") for variant in variants_for(op)]


@pytest.mark.parametrize("op,variant", CASES)
def test_policy_loss(bench_case, op, variant):
    bench_case(op, variant)
