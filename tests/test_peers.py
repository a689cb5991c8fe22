"""Overlap with a real peer: Liger-Kernel's Triton GRPO loss (runs under the Triton interpreter).

Where the feature sets overlap (token-level clipped surrogate + k3 KL, 'bnpo' = token-mean over the
mask) the loss and the gradient must agree.
"""
import pytest
import torch

from actfocus_kernels import PolicyLossConfig, policy_loss

from judge import make_batch

liger_grpo = pytest.importorskip("liger_kernel.transformers.grpo_loss", reason="liger-kernel not installed")


@pytest.mark.parametrize("beta, temperature", [(0.0, 1.0), (0.04, 0.9)])
def test_matches_liger_grpo_loss(backend, device, beta, temperature):
    batch = make_batch(2, 5, 300, device=device, seed=21, per_seq_advantages=True)
    # Liger takes logits [B, L + 1, V] and drops the last position
    logits = torch.cat([batch["logits"], torch.randn(2, 1, 300, device=device)], dim=1)
    # Liger's kernel reads the logits as given (its temperature divides them): same inputs for both
    ours_logits = logits.clone().requires_grad_(True)
    liger_logits = logits.clone().requires_grad_(True)
    cfg = PolicyLossConfig(clip_low=0.2, clip_high=0.28, kl_coef=beta, kl_type="k3", temperature=temperature)
    ours = policy_loss(ours_logits[:, :-1], batch["targets"], batch["old_logp"], batch["advantages"],
                       batch["loss_mask"], ref_logp=batch["ref_logp"], cfg=cfg, backend=backend)
    ours.loss.backward()
    liger = liger_grpo.triton_grpo_loss(
        liger_logits, batch["old_logp"], batch["ref_logp"], batch["targets"], batch["advantages"],
        completion_mask=batch["loss_mask"].to(torch.int32), temperature=temperature, beta=beta, eps_low=0.2,
        eps_high=0.28, inplace=False, loss_type="bnpo", reduce=True)
    liger_loss = liger[0] if isinstance(liger, tuple) else liger
    liger_loss.backward()
    assert torch.allclose(ours.loss, liger_loss, rtol=1e-5, atol=1e-7)
    assert torch.allclose(ours_logits.grad, liger_logits.grad, rtol=1e-4, atol=1e-7)
