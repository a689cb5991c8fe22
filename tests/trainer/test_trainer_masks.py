"""Token layout: shifted targets, loss/action masks, turn ids, and alignment with the logits."""
import pytest
import torch

from actfocus_kernels import token_stats
from actfocus_trainer.envs import make_env
from actfocus_trainer.masks import IGNORE_INDEX, build_batch, policy_forward
from actfocus_trainer.policy import TinyCausalLM, count_parameters
from actfocus_trainer.rollout import Episode, Turn, action_token_span, collect
from actfocus_trainer.tokenizer import WordTokenizer

TOK = WordTokenizer()


def make_turn(prompt: str, response: str, reward: float) -> Turn:
    ids = TOK.encode(response)
    return Turn(TOK.encode(prompt), ids, [-0.5] * len(ids), action_token_span(TOK, ids), None, reward)


def test_action_token_span():
    ids = TOK.encode("<think> go left </think> <answer> Left </answer>")
    assert action_token_span(TOK, ids) == (5, 6)
    assert action_token_span(TOK, TOK.encode("<think> go </think> <answer> Left")) is None


def test_masks_are_shifted_by_one_token():
    episodes = [
        Episode(0, 0, [make_turn("<obs> P F </obs>", "<think> go </think> <answer> Left </answer>", 0.5),
                       make_turn("<obs> F P </obs>", "<think> </think> <answer> Up </answer>", 1.0)]),
        Episode(1, 0, [make_turn("<obs> P F </obs>", "<think> x y", -0.1)]),
    ]
    batch = build_batch(episodes, TOK.pad_id)
    row = batch.ids[0].tolist()
    assert batch.ids.shape == (2, 10 + 9) and TOK.decode(row[:4]) == "<obs> P F </obs>"
    assert batch.targets[0, :-1].tolist() == row[1:] and batch.targets[0, -1] == IGNORE_INDEX
    # position t predicts token t+1: the loss mask selects exactly the response tokens, in order
    responses = episodes[0].turns[0].response + episodes[0].turns[1].response
    assert batch.targets[0][batch.loss_mask[0].bool()].tolist() == responses
    action_targets = batch.targets[0][batch.action_mask[0].bool()]
    assert TOK.decode(action_targets.tolist()) == "Left Up"
    assert batch.turn_ids[0].tolist() == [0] * 9 + [1] * 10
    assert batch.segments[0].tolist() == [0] * 10 + [1] * 9
    assert batch.sample_logp[0][batch.loss_mask[0].bool()].eq(-0.5).all()
    assert batch.sample_logp[0][~batch.loss_mask[0].bool()].eq(0).all()
    rewards = batch.rewards[0]
    assert rewards[8] == 0.5 and rewards[17] == 1.0 and rewards.sum() == 1.5
    assert TOK.decode(batch.targets[0, [8, 17]].tolist()) == "</answer> </answer>"
    # the truncated second episode: padding after it, no answer span, reward on its last token
    assert batch.valid[1].sum() == 7 and (batch.targets[1, 6:] == IGNORE_INDEX).all()
    assert batch.loss_mask[1].sum() == 3 and batch.action_mask[1].sum() == 0
    assert batch.rewards[1, 5] == pytest.approx(-0.1)


@pytest.mark.parametrize("context", ["turn", "full"])
def test_recomputed_logp_matches_sampling_logp(context):
    """Rollout log-probs (left-padded prompts + KV cache) == token_stats on the training layout."""
    torch.manual_seed(0)
    policy = TinyCausalLM(TOK.vocab_size)
    episodes = collect(policy, TOK, lambda: make_env("frozenlake", max_turns=3), [0, 1, 2], group_size=2,
                       context=context, max_response_tokens=6, generator=torch.Generator().manual_seed(0))
    batch = build_batch(episodes, TOK.pad_id)
    with torch.no_grad():
        logits, _ = policy_forward(policy, batch, context)
    logp = token_stats(logits, batch.targets).logp
    mask = batch.loss_mask.bool()
    assert mask.sum() == sum(len(t.response) for ep in episodes for t in ep.turns)
    torch.testing.assert_close(logp[mask], batch.sample_logp[mask], atol=1e-4, rtol=0)


def test_turn_context_isolates_turns():
    torch.manual_seed(0)
    policy = TinyCausalLM(TOK.vocab_size)
    turns = [make_turn("<obs> P F </obs>", "<think> go </think> <answer> Left </answer>", 0.0),
             make_turn("<obs> F P </obs>", "<think> </think> <answer> Up </answer>", 1.0)]
    changed = [make_turn("<obs> F F </obs>", "<think> go go </think> <answer> Up </answer>", 0.0), turns[1]]
    a, b = (build_batch([Episode(0, 0, t)], TOK.pad_id) for t in (turns, changed))
    with torch.no_grad():
        turn_a, turn_b = (policy_forward(policy, x, "turn")[0][0, -9:] for x in (a, b))
        full_a, full_b = (policy_forward(policy, x, "full")[0][0, -9:] for x in (a, b))
    torch.testing.assert_close(turn_a, turn_b)  # the second turn does not see the first
    assert not torch.allclose(full_a, full_b)


def test_builtin_policy_size():
    """The built-in model has "a few hundred thousand" parameters: quick on a laptop CPU."""
    assert 100_000 < count_parameters(TinyCausalLM(TOK.vocab_size)) < 500_000
