"""The non-generation part of a TRL 1.16 GRPO training step, stock ``GRPOTrainer`` against
``ActFocusGRPOTrainer`` (ActFocus off, and on), side by side in one run.

What is timed, per trainer, on one rollout batch built here (random prompts and completions of a
randomly initialised Qwen2 with vocabulary ``--vocab``, one advantage per sequence, trailing padding):
``trainer._compute_loss(model, batch)`` then ``loss.backward()`` — the policy forward, the loss and the
backward; generation, rewards and the optimizer step (the same for both) are not. Best of
``--repeats`` after a warm-up, the trainers interleaved (the machine may be shared), and the relative
difference of the losses and of the gradients (they compute the same loss).

    python -m benchmarks.bench_trl_step --device cpu            # V=32000, the RESULTS.md row
    python -m benchmarks.bench_trl_step --device cuda --batch 16 --completion 512
"""
from __future__ import annotations

import argparse
import tempfile
from typing import Optional

import torch

from .harness import device_name, git_commit, timed_call


def _tokenizer():
    """A word-level tokenizer: the trainers need one, the batch here is made of token ids directly."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<unk>": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def _batch(args, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    b, p, c = args.batch, args.prompt, args.completion
    lengths = torch.randint(c // 2, c + 1, (b,), generator=g)
    completion_mask = (torch.arange(c)[None, :] < lengths[:, None]).long()
    batch = {
        "prompt_ids": torch.randint(3, args.vocab, (b, p), generator=g),
        "prompt_mask": torch.ones(b, p, dtype=torch.long),
        "completion_ids": torch.randint(3, args.vocab, (b, c), generator=g) * completion_mask,
        "completion_mask": completion_mask,
        "advantages": torch.randn(b, generator=g),
        "num_items_in_batch": completion_mask.sum(),
    }
    return {k: v.to(device) for k, v in batch.items()}


def _trainers(args, model_dir: str, device: torch.device):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from actfocus_kernels.integrations.trl import ActFocusGRPOConfig, ActFocusGRPOTrainer

    common = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch, num_generations=args.batch,
                  max_completion_length=args.completion, report_to=[], use_cpu=device.type == "cpu", bf16=False,
                  loss_type=args.loss_type, disable_tqdm=True)
    data = Dataset.from_dict({"prompt": ["a"] * args.batch})
    built = {}
    for name, trainer_cls, config_cls, extra in (
            ("stock TRL", GRPOTrainer, GRPOConfig, {}),
            ("actfocus", ActFocusGRPOTrainer, ActFocusGRPOConfig, {}),
            ("actfocus + ActFocus", ActFocusGRPOTrainer, ActFocusGRPOConfig, dict(actfocus_enabled=True))):
        trainer = trainer_cls(model=model_dir, reward_funcs=lambda completions, **_: [0.0] * len(completions),
                              args=config_cls(**common, **extra), train_dataset=data, processing_class=_tokenizer())
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        built[name] = trainer
    return built


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--completion", type=int, default=256)
    parser.add_argument("--loss-type", default="dapo")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=args.prompt + args.completion, tie_word_embeddings=False,
                         pad_token_id=0, eos_token_id=1, bos_token_id=1)
    model_dir = tempfile.mkdtemp()
    Qwen2ForCausalLM(config).save_pretrained(model_dir)
    trainers = _trainers(args, model_dir, device)
    batch = _batch(args, device)
    # the ActFocus run needs an action mask: the last quarter of each completion
    action = torch.zeros_like(batch["completion_mask"], dtype=torch.float32)
    action[:, -args.completion // 4:] = 1.0

    def step(trainer, inputs):
        trainer.model.zero_grad(set_to_none=True)
        loss = trainer._compute_loss(trainer.model, inputs)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in trainer.model.parameters()])

    tokens = int(batch["completion_mask"].sum())
    print(f"TRL GRPO step without generation: {args.loss_type}, B={args.batch}, prompt {args.prompt}, completion "
          f"{args.completion} ({tokens} loss tokens), V={args.vocab}, H={args.hidden}, {args.layers} layers, "
          f"float32; {device_name(device)}; commit {git_commit()}")
    print("| trainer | fwd + loss + bwd | vs stock TRL | loss rel. diff | grad rel. diff |")
    print("|---|---|---|---|---|")
    cases = {name: (trainer, dict(batch, actfocus_action_mask=action) if name.endswith("ActFocus") else batch)
             for name, trainer in trainers.items()}
    results = {name: step(*case) for name, case in cases.items()}  # warm-up, and the values compared
    best = {name: float("inf") for name in cases}
    for _ in range(args.repeats):  # interleaved, so that a change of the machine's load hits every trainer
        for name, case in cases.items():
            best[name] = min(best[name], timed_call(lambda: step(*case), device))
    stock_s, (stock_loss, stock_grad) = best["stock TRL"], results["stock TRL"]
    for name, seconds in best.items():
        loss, grad = results[name]
        if name == "stock TRL":
            diffs = "—", "—"
        elif name.endswith("ActFocus"):
            diffs = "(weighted)", "(weighted)"
        else:
            diffs = (f"{abs(float(loss - stock_loss)) / max(abs(float(stock_loss)), 1e-12):.1e}",
                     f"{float((grad - stock_grad).norm() / stock_grad.norm()):.1e}")
        ratio = "1.00×" if name == "stock TRL" else f"{stock_s / seconds:.2f}× faster"
        print(f"| {name} | {seconds * 1e3:.0f} ms | {ratio} | {diffs[0]} | {diffs[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
