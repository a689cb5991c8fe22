"""DTensor LM heads and logits (SPEC section 8) on CPU gloo groups, one spawn per group size.
2 processes (``dtensor_checks``): a vocab-sharded DTensor head with replicated hidden states, and
DTensor logits sharded on the vocabulary, equal the unsharded op with no gather; an FSDP2 head
sharded on its own gives the same parameters after two Adam steps as the head in the root group;
other placements are clear errors. 4 processes (``dtensor_2d_checks``): a head on a 2 x 2 (dp, tp)
mesh, torchtitan's layout."""
from __future__ import annotations

import pytest
import torch

from actfocus_kernels import linear_policy_loss
from actfocus_kernels.dtensor import local_head

from distributed import run_ranks
from dtensor_2d_checks import check_two_dimensional_mesh
from dtensor_checks import every_check


def test_dtensor_heads_on_two_ranks():
    run_ranks(every_check, 2, timeout_s=180)


def test_plain_tensors_pass_through():
    hidden, weight = torch.randn(3, 4), torch.randn(5, 4)
    head = local_head(hidden, weight, None, None)
    assert head.hidden is hidden and head.weight is weight and head.tp_group is None and not head.gathered


def test_plain_head_still_checked():
    with pytest.raises(ValueError, match="expected \\[V, H\\]"):
        linear_policy_loss(torch.randn(3, 4), torch.randn(5, 3), torch.tensor([0, 1, 2]), None, torch.ones(3),
                           torch.ones(3))


def test_two_dimensional_mesh_on_four_ranks():
    run_ranks(check_two_dimensional_mesh, 4, timeout_s=180)
