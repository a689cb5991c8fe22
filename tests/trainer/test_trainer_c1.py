"""C1 statistics on synthetic data whose answer is known, and the measurement end to end."""
import math

import numpy as np
import pytest
import torch

from actfocus_kernels import ActFocusConfig
from actfocus_trainer.c1 import C1Config, TokenTable, analyse, measure_c1, position_correlations
from actfocus_trainer.envs import make_env
from actfocus_trainer.policy import TinyCausalLM
from actfocus_trainer.rollout import collect
from actfocus_trainer.stats import mean_ci, pearson, permutation_p, spearman
from actfocus_trainer.tokenizer import WordTokenizer
from actfocus_trainer.warmstart import warm_start

CFG = C1Config(resamples=300, permutations=300, top_k=4, min_prompts=16)


def synthetic(prompts=64, rollouts=8, zero_variance=8, turns=4, reasoning_tokens=6, seed=0):
    """Returns with a known per-prompt variance; the action tokens' ``energy_policy`` rises with it,
    the reasoning tokens' is noise, ``entropy_policy`` is noise for both classes. The last
    ``zero_variance`` prompts have identical returns and extreme statistics that would forge a
    correlation if they were mixed in."""
    rng = np.random.default_rng(seed)
    scale = np.concatenate([rng.uniform(0.2, 2.0, prompts - zero_variance), np.zeros(zero_variance)])
    groups = np.repeat(np.arange(prompts), rollouts)
    returns = rng.normal(size=prompts * rollouts) * scale[groups]
    v = np.array([returns[groups == g].var() for g in range(prompts)])
    prompt, key, is_action, energy, entropy = [], [], [], [], []
    for g in groups:
        for turn in range(turns):
            for cls, count in (("reasoning", reasoning_tokens), ("action", 1)):
                for index in range(count):
                    prompt.append(g)
                    key.append((turn, cls, index))
                    is_action.append(cls == "action")
                    planted = v[g] if v[g] > 0 else 50.0
                    energy.append((planted if cls == "action" else 0.0) + 0.3 * rng.normal())
                    entropy.append(rng.normal() + (50.0 if v[g] == 0 else 0.0))
    table = TokenTable(np.array(prompt), key, np.array(is_action),
                       {"energy_policy": np.array(energy), "entropy_policy": np.array(entropy)})
    return table, groups, returns


def test_a_planted_correlation_is_found_and_a_null_is_not():
    report = analyse(*synthetic(), CFG).to_dict()
    planted = report["correlations"]["action"]["energy_policy"]
    assert planted["pearson"] > 0.8 and planted["spearman"] > 0.8
    assert planted["pearson_ci"][0] > 0.5 and planted["spearman_ci"][0] > 0.5
    assert planted["pearson_p"] < 0.01 and planted["spearman_p"] < 0.01
    for cls, name in (("reasoning", "energy_policy"), ("action", "entropy_policy"), ("reasoning", "entropy_policy")):
        # 56 prompts: a chance correlation has a standard error of about 0.13
        null = report["correlations"][cls][name]
        assert abs(null["pearson"]) < 0.35 and abs(null["spearman"]) < 0.35, (cls, name, null)
        assert null["pearson_p"] > 0.01 and null["spearman_p"] > 0.01, (cls, name, null)
        assert null["pearson_ci"][0] < planted["pearson_ci"][0], (cls, name, null)


def test_zero_variance_prompts_are_set_apart():
    report = analyse(*synthetic(zero_variance=8), CFG).to_dict()
    assert (report["spread_prompts"], report["zero_variance_prompts"]) == (56, 8)
    # their statistics are reported separately (the planted 50 and +50), not in the correlations
    assert report["means_zero_variance"]["action"]["energy_policy"] == pytest.approx(50.0, abs=0.5)
    assert report["means_zero_variance"]["reasoning"]["entropy_policy"] == pytest.approx(50.0, abs=0.5)
    assert report["means_spread"]["reasoning"]["entropy_policy"] == pytest.approx(0.0, abs=0.2)


def test_concentration_finds_the_action_positions():
    report = analyse(*synthetic(), CFG).to_dict()
    energy = report["concentration"]["energy_policy"]
    assert energy["positions"] == 4 * 7 and energy["top_k"] == 4
    assert energy["action_share_positions"] == pytest.approx(1 / 7)
    assert energy["action_share_top_k"] == 1.0
    assert energy["null_top_k_mean"] < 0.5
    assert report["action_token_share"] == pytest.approx(1 / 7)


def test_position_correlations_match_pearson_on_present_columns():
    rng = np.random.default_rng(1)
    x, v = rng.normal(size=(3, 10)), rng.normal(size=10)
    present = rng.random((3, 10)) > 0.3
    r = position_correlations(x, present, v)[0]
    for p in range(3):
        assert r[p] == pytest.approx(pearson(x[p][present[p]], v[present[p]]))


def test_statistics_helpers():
    x, y = [1.0, 2.0, 4.0, 3.0, 5.0], [0.5, 0.1, 0.9, 0.7, 0.8]
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert math.isnan(pearson(x, [1.0] * 5))
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(np.corrcoef([0, 1.5, 1.5, 3], [0, 2, 1, 3])[0, 1])
    ci = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])  # t_{0.975,4} = 2.776, s = 1.5811
    half_width = 2.776 * 1.5811 / 5 ** 0.5
    assert (ci.mean, ci.low, ci.high) == pytest.approx((3.0, 3 - half_width, 3 + half_width),
                                                       rel=1e-4)
    assert permutation_p(x, y, pearson, 200, seed=0) == permutation_p(x, y, pearson, 200, seed=0)


def test_measure_c1_on_rollouts_of_a_small_policy():
    tok = WordTokenizer()
    torch.manual_seed(0)
    policy = TinyCausalLM(tok.vocab_size, d_model=32, n_layers=1)
    make = lambda: make_env("frozenlake", random_start=True, max_turns=3)  # noqa: E731
    warm_start(policy, tok, make, steps=15, batch_size=8, reasoning="templated")
    reference = TinyCausalLM(tok.vocab_size, d_model=32, n_layers=1)
    episodes = collect(policy, tok, make, list(range(8)), group_size=4, generator=torch.Generator().manual_seed(0))
    for i, episode in enumerate(episodes):  # a reward spread that differs between prompts
        episode.turns[-1].reward += (i % 4) * (episode.group % 3) / 4
    cfg = C1Config(prompts=8, group_size=4, resamples=50, permutations=50, min_prompts=2)
    report = measure_c1(policy, reference, tok, episodes, "turn", ActFocusConfig(redistribution=0.0), cfg).to_dict()
    assert report["zero_variance_prompts"] == 8 - report["spread_prompts"] and report["spread_prompts"] >= 4
    assert set(report["correlations"]["action"]) == {"energy_policy", "entropy_policy", "energy_reference",
                                                     "entropy_reference", "grad_unit"}
    # a different reference model gives different statistics; weight 1 on actions, 0.5 elsewhere
    # moves the unit-advantage signal toward the actions
    assert report["means_spread"]["action"]["energy_policy"] != report["means_spread"]["action"]["energy_reference"]
    assert report["signal_share_action"]["actfocus"] > report["signal_share_action"]["vanilla"]
    assert 0 < report["action_token_share"] < 0.5
