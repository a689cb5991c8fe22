"""``--model PATH``: a local Hugging Face causal LM (skipped when transformers is not installed)."""
import pytest
import torch

from actfocus_kernels import token_stats
from actfocus_trainer.envs import FrozenLake, make_env
from actfocus_trainer.masks import build_batch, policy_forward
from actfocus_trainer.policy import load_hf_policy
from actfocus_trainer.rollout import collect
from actfocus_trainer.tokenizer import WordTokenizer
from actfocus_trainer.train import TrainConfig, train

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def tiny_hf_model(tmp_path_factory):
    """A randomly initialised 1-layer GPT-2 and a word-level tokenizer, saved like a downloaded model."""
    path = tmp_path_factory.mktemp("tiny-hf")
    words = WordTokenizer().words + ["<|endoftext|>"]
    words += sorted(set(FrozenLake.instructions.split()) - set(words))
    model = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    model.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    model.decoder = tokenizers.decoders.WordPiece(cleanup=False)
    transformers.PreTrainedTokenizerFast(tokenizer_object=model, eos_token="<|endoftext|>", pad_token="<pad>",
                                         unk_token="<unk>").save_pretrained(path)
    config = transformers.GPT2Config(vocab_size=len(words), n_positions=1024, n_embd=32, n_layer=1, n_head=2,
                                     bos_token_id=len(words) - 1, eos_token_id=len(words) - 1)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("context", ["turn", "full"])
def test_hf_policy_logp_alignment(tiny_hf_model, context):
    policy, tok = load_hf_policy(tiny_hf_model, torch.device("cpu"))
    episodes = collect(policy, tok, lambda: make_env("frozenlake", max_turns=2), [0, 1], group_size=2,
                       context=context, max_response_tokens=5, instructions=True,
                       generator=torch.Generator().manual_seed(0))
    batch = build_batch(episodes, tok.pad_id)
    with torch.no_grad():
        logits, _ = policy_forward(policy, batch, context)
    mask = batch.loss_mask.bool()
    logp = token_stats(logits.float(), batch.targets).logp
    torch.testing.assert_close(logp[mask], batch.sample_logp[mask], atol=1e-4, rtol=0)


def test_hf_policy_trains(tiny_hf_model):
    cfg = TrainConfig(model=tiny_hf_model, steps=2, prompts=2, group_size=2, warmstart_steps=3, eval_episodes=2,
                      algo="ppo", actfocus=True)
    result = train(cfg, progress=False)
    assert len(result.records) == 2
