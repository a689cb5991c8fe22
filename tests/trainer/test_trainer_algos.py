"""GRPO/PPO advantages and one update through the library's loss."""
import pytest
import torch

from actfocus_kernels import ActFocusConfig
from actfocus_trainer.algos import AlgoConfig, Learner, gae, grpo_advantages
from actfocus_trainer.envs import make_env
from actfocus_trainer.masks import build_batch
from actfocus_trainer.policy import TinyCausalLM
from actfocus_trainer.rollout import collect
from actfocus_trainer.tokenizer import WordTokenizer


def test_grpo_advantages_normalise_within_groups():
    returns = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    adv = grpo_advantages(returns, groups)
    torch.testing.assert_close(adv[:4], (returns[:4] - 0.25) / (returns[:4].std(unbiased=False) + 1e-6))
    assert adv[4:].eq(0).all()  # no spread, no signal


def test_gae_skips_unmasked_positions():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 9.0, 0.25, 9.0, 1.0]])
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # lambda = 1: advantage = reward-to-go - V over the masked positions 0, 2, 4
    torch.testing.assert_close(adv, torch.tensor([[3.0 - 0.5, 0.0, 3.0 - 0.25, 0.0, 2.0 - 1.0]]))
    torch.testing.assert_close(ret, torch.tensor([[3.0, 0.0, 3.0, 0.0, 2.0]]))
    adv0, _ = gae(rewards, values, mask, gamma=0.5, lam=0.0)
    # lambda = 0: one-step TD errors r + gamma V(next masked) - V
    torch.testing.assert_close(adv0, torch.tensor([[0.125 - 0.5, 0.0, 1.5 - 0.25, 0.0, 1.0]]))


def rollout_batch(seed=0):
    tok = WordTokenizer()
    torch.manual_seed(seed)
    policy = TinyCausalLM(tok.vocab_size, d_model=32, n_layers=1)
    episodes = collect(policy, tok, lambda: make_env("frozenlake", random_start=True, max_turns=3), [0, 1],
                       group_size=4, max_response_tokens=8, generator=torch.Generator().manual_seed(seed))
    batch = build_batch(episodes, tok.pad_id)
    returns = torch.tensor([ep.total_return for ep in episodes])
    return policy, batch, returns, torch.tensor([ep.group for ep in episodes])


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
@pytest.mark.parametrize("actfocus", [False, True])
def test_update_changes_the_policy(algo, actfocus):
    policy, batch, returns, groups = rollout_batch()
    returns[0] += 1.0  # make sure the first group has a reward spread
    before = [p.detach().clone() for p in policy.parameters()]
    metrics = Learner(policy, AlgoConfig(algo=algo, actfocus=actfocus)).update(batch, returns, groups)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert ("value_loss" in metrics) == (algo == "ppo") and ("weight_action" in metrics) == actfocus
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_neutral_actfocus_reproduces_vanilla_update():
    """lambda = 1, gamma = 0, beta_a = 1 gives weights 1: the same update as without ActFocus."""
    neutral = ActFocusConfig(reasoning_weight=1.0, redistribution=0.0)
    params = []
    for cfg in (AlgoConfig(), AlgoConfig(actfocus=True, actfocus_cfg=neutral)):
        policy, batch, returns, groups = rollout_batch()
        returns[0] += 1.0
        Learner(policy, cfg).update(batch, returns, groups, torch.Generator().manual_seed(0))
        params.append(torch.cat([p.detach().flatten() for p in policy.parameters()]))
    torch.testing.assert_close(params[0], params[1], rtol=0, atol=0)
