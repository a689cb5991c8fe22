"""Action Bottleneck measurement: shares of the logit-gradient signal and correlations."""
import math

import numpy as np
import pytest
import torch

from actfocus_kernels import ActFocusConfig
from actfocus_trainer.diagnostics import diagnose, pearson
from actfocus_trainer.envs import make_env
from actfocus_trainer.policy import TinyCausalLM
from actfocus_trainer.rollout import collect
from actfocus_trainer.tokenizer import WordTokenizer
from actfocus_trainer.warmstart import warm_start


def test_pearson():
    x, y = [1.0, 2.0, 4.0, 3.0], [0.5, 0.1, 0.9, 0.7]
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert math.isnan(pearson(x, [1.0] * 4))


def test_diagnose_splits_the_signal_between_token_classes():
    tok = WordTokenizer()
    torch.manual_seed(0)
    policy = TinyCausalLM(tok.vocab_size, d_model=32, n_layers=1)
    make = lambda: make_env("frozenlake", random_start=True, max_turns=3)  # noqa: E731
    warm_start(policy, tok, make, steps=15, batch_size=8)

    def collect_fn(seeds, group_size):
        episodes = collect(policy, tok, make, seeds, group_size=group_size,
                           generator=torch.Generator().manual_seed(0))
        for i, episode in enumerate(episodes):  # a reward spread that differs between prompts
            episode.turns[-1].reward += (i % group_size) * (episode.group + 1) / 4
        return episodes

    report = diagnose(policy, tok, collect_fn, [0, 1, 2], 4, "turn",
                      ActFocusConfig(reasoning_weight=0.5, redistribution=0.0))
    assert report["prompts_with_reward_spread"] == 3
    for weights in ("vanilla", "actfocus"):
        rows = report[weights]
        assert rows["action"]["token_share"] + rows["reasoning"]["token_share"] == pytest.approx(1.0)
        assert rows["action"]["signal_share"] + rows["reasoning"]["signal_share"] == pytest.approx(1.0)
        assert 0 < rows["action"]["token_share"] < 0.5
    # weight 1 on actions and 0.5 on reasoning moves signal toward the actions
    assert report["actfocus"]["action"]["signal_share"] > report["vanilla"]["action"]["signal_share"]
    assert report["actfocus"]["reasoning"]["mean_norm"] == pytest.approx(
        0.5 * report["vanilla"]["reasoning"]["mean_norm"], rel=1e-4)
    assert all(math.isfinite(report[w][c][k]) for w in ("vanilla", "actfocus") for c in ("action", "reasoning")
               for k in ("corr_reward_var", "corr_unit_reward_var"))
