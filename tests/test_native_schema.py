"""The native ops' schemas (csrc/torch_bindings.cpp) against the row records of actfocus_kernels.contract:
the argument names are the records' fields, in order, with the records' types, and the ``actfocus::``
ops embed the same records. A field added to a record and not to the C++ schema (or the reverse)
fails here, not at a call deep in a backend."""
import pytest
import torch

import actfocus_kernels.ops  # noqa: F401  (registers the actfocus:: ops)
from actfocus_kernels import native
from actfocus_kernels.contract import RowGradientInputs, RowLossInputs

pytestmark = pytest.mark.skipif(not native.has_backend("cpu"), reason="actfocus_kernels._C is not built")


def field_names(record) -> list[str]:
    return list(record.__dataclass_fields__)


def schema_text(namespace, op: str) -> str:
    return str(getattr(getattr(torch.ops, namespace), op).default._schema)


@pytest.mark.parametrize("op, record", [("policy_loss", RowLossInputs), ("row_gradient", RowGradientInputs)])
def test_native_arguments_are_the_record_fields(op, record):
    assert native.schema_argument_names(op) == ["logits", *field_names(record), "dlogits"]
    # the types too: the record's schema fragment is the native schema's middle, verbatim
    assert f"(Tensor logits, {record.schema()}, Tensor(a!)" in schema_text("actfocus_native", op)


def test_token_stats_arguments():
    assert native.schema_argument_names("token_stats") == [
        "logits", "targets", "temperature", "ignore_index", "logit_scale", "softcap", "extra_stats"]
    returns = [r.name for r in torch.ops.actfocus_native.token_stats.default._schema.returns]
    assert returns == ["logp", "energy", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1"]


@pytest.mark.parametrize("op, record", [("policy_loss", RowLossInputs), ("policy_loss_inplace", RowLossInputs),
                                        ("row_gradient", RowGradientInputs),
                                        ("row_gradient_inplace", RowGradientInputs)])
def test_python_ops_embed_the_records(op, record):
    if not hasattr(torch.ops.actfocus, op):
        pytest.skip(f"actfocus::{op} is not defined")
    assert record.schema() in schema_text("actfocus", op)


def test_record_fields_named_once():
    """centred_coef is the coefficient of p (s - mu), entropy_coef the loss's entropy weight: one name each."""
    assert "entropy_coef" not in field_names(RowGradientInputs) and "centred_coef" in field_names(RowGradientInputs)
    for record in (RowLossInputs, RowGradientInputs):
        fields = field_names(record)
        assert fields.index("logit_scale") == fields.index("temperature") + 1
        assert fields.index("softcap") == fields.index("logit_scale") + 1
