"""ActFocus weights (SPEC section 3): the judge's loop over scopes and the formula's properties."""
import pytest
import torch

from actfocus_kernels import ActFocusConfig, TokenStats, actfocus_weights

from judge import judge_weights


def random_stats(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TokenStats(-torch.rand(shape, generator=g) * 3, -5 - torch.randn(shape, generator=g),
                      torch.rand(shape, generator=g) * 2)


def masks(shape, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    loss_mask = (torch.rand(shape, generator=g) > 0.2).float()
    action_mask = (torch.rand(shape, generator=g) > 0.5).float()
    return loss_mask, action_mask


CONFIGS = [
    ActFocusConfig(),
    ActFocusConfig(uncertainty="entropy", energy_temperature=0.5, max_weight=2.0),
    ActFocusConfig(uncertainty="nll", preserve_total=True, reasoning_weight=0.2, redistribution=2.0),
    ActFocusConfig(scope="turn", action_weight=1.5, preserve_total=True),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.uncertainty}-{c.scope}-{c.preserve_total}")
def test_padded_matches_judge(cfg):
    shape = (4, 12)
    stats, (loss_mask, action_mask) = random_stats(shape), masks(shape)
    turn_ids = torch.arange(12).repeat(4, 1) // 4
    weights = actfocus_weights(stats, loss_mask, action_mask, cfg, turn_ids=turn_ids)
    u = {"energy": stats.energy, "entropy": stats.entropy, "nll": -stats.logp}[cfg.uncertainty]
    keys = [(b, int(turn_ids[b, t]) if cfg.scope == "turn" else 0) for b in range(4) for t in range(12)]
    expected = judge_weights(u, loss_mask, action_mask, cfg, keys)
    assert weights.dtype == torch.float32 and weights.shape == shape
    assert torch.allclose(weights.double(), expected, rtol=1e-5, atol=1e-6)


def test_packed_matches_padded():
    lengths = [5, 3, 7]
    stats, (loss_mask, action_mask) = random_stats((3, 7), 2), masks((3, 7), 2)
    loss_mask[torch.arange(7)[None] >= torch.tensor(lengths)[:, None]] = 0
    cfg = ActFocusConfig(preserve_total=True)
    padded = actfocus_weights(stats, loss_mask, action_mask, cfg)
    keep = (torch.arange(7)[None] < torch.tensor(lengths)[:, None]).reshape(-1)
    packed_stats = TokenStats(*(x.reshape(-1)[keep] for x in stats))
    packed = actfocus_weights(packed_stats, loss_mask.reshape(-1)[keep], action_mask.reshape(-1)[keep], cfg,
                              cu_seqlens=torch.tensor([0, 5, 8, 15]))
    assert torch.allclose(packed, padded.reshape(-1)[keep])


def test_vanilla_settings_give_exactly_the_mask():
    stats, (loss_mask, action_mask) = random_stats((3, 9), 3), masks((3, 9), 3)
    for preserve in (False, True):
        cfg = ActFocusConfig(reasoning_weight=1.0, redistribution=0.0, action_weight=1.0, preserve_total=preserve)
        assert torch.equal(actfocus_weights(stats, loss_mask, action_mask, cfg), loss_mask)


def test_mean_action_weight_is_one_before_the_cap_and_rises_with_uncertainty():
    shape = (2, 20)
    stats, (loss_mask, action_mask) = random_stats(shape, 4), masks(shape, 4)
    cfg = ActFocusConfig(max_weight=1e9, redistribution=0.7)
    weights = actfocus_weights(stats, loss_mask, action_mask, cfg)
    for b in range(2):
        action = (loss_mask[b] * action_mask[b]).bool()
        assert torch.isclose(weights[b][action].mean(), torch.tensor(1.0), atol=1e-6)
        order = torch.argsort(stats.energy[b][action])
        assert torch.all(weights[b][action][order].diff() > 0)
        reasoning = loss_mask[b].bool() & ~action
        assert torch.all(weights[b][reasoning] == cfg.reasoning_weight)


def test_cap():
    stats, (loss_mask, action_mask) = random_stats((2, 16), 5), masks((2, 16), 5)
    cfg = ActFocusConfig(redistribution=5.0, energy_temperature=0.2, max_weight=1.7)
    weights = actfocus_weights(stats, loss_mask, action_mask, cfg)
    assert weights.max() == pytest.approx(1.7)
    assert torch.all(weights <= 1.7)


def test_preserve_total_keeps_each_scope_sum():
    shape = (3, 10)
    stats, (loss_mask, action_mask) = random_stats(shape, 6), masks(shape, 6)
    weights = actfocus_weights(stats, loss_mask, action_mask, ActFocusConfig(preserve_total=True))
    assert torch.allclose(weights.sum(1), loss_mask.sum(1))


def test_empty_and_tiny_scopes():
    stats = random_stats((4, 5), 7)
    loss_mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]).float()
    action_mask = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 1]]).float()
    cfg = ActFocusConfig(reasoning_weight=0.25, action_weight=1.5)
    weights = actfocus_weights(stats, loss_mask, action_mask, cfg)
    assert torch.all(weights[0] == 0.25)  # no action tokens: reasoning weight only
    assert torch.all(weights[1] == 0)  # fully masked
    assert weights[2, 2] == 1.5  # a single action token: standardised energy 0, weight beta_a
    assert torch.all(weights[3, 2:] == 0) and torch.all(weights[3, :2] == 0.25)  # masked actions
    preserved = actfocus_weights(stats, loss_mask, action_mask, ActFocusConfig(preserve_total=True))
    assert torch.all(preserved[1] == 0)


def test_turn_scope_needs_turn_ids():
    stats, (loss_mask, action_mask) = random_stats((2, 4)), masks((2, 4))
    with pytest.raises(ValueError, match="turn_ids"):
        actfocus_weights(stats, loss_mask, action_mask, ActFocusConfig(scope="turn"))


def test_nan_uncertainty_off_the_mask_does_not_leak():
    stats, (loss_mask, action_mask) = random_stats((2, 6), 8), masks((2, 6), 8)
    energy = torch.where(loss_mask.bool(), stats.energy, float("nan"))
    weights = actfocus_weights(stats._replace(energy=energy), loss_mask, action_mask)
    assert torch.isfinite(weights).all()
