"""OpenRLHF 0.11.2's actor forward + policy loss + backward, stock against ``actfocus_kernels``' drop-in,
side by side in one run: time and peak extra memory, as ratios.

Stock: ``openrlhf.models.actor.Actor.forward`` (full fp32 logits ``[B, L, V]``, then the log-probs) and
``openrlhf.models.loss.PolicyLoss``; ours: the same ``Actor`` patched with
``integrations.openrlhf.patch_actor_with_actfocus`` (log-probs from the hidden states and the LM head,
no logits) and ``ActFocusPolicyLoss``. One rollout batch of a randomly initialised Qwen2 (left-padded
prompts, right-padded responses), PPO token-level loss, best of ``--repeats`` after a warm-up, the two
interleaved. Peak memory: above the inputs and the model, gradients included (GPU:
``max_memory_allocated``; CPU: the profiler's allocation events, ``harness.memory_case``).

OpenRLHF's package needs deepspeed and peft to import: ``load_openrlhf`` loads ``models/utils.py``,
``loss.py``, ``ring_attn_utils.py`` and ``actor.py`` from the installed files, with stand-ins for the
modules they import but do not use on this path (deepspeed, peft), and flash-attn's ``bert_padding``
written in torch (the packed-sample path's unpad / pad).

    python -m benchmarks.bench_openrlhf --device cpu
    python -m benchmarks.bench_openrlhf --device cuda --vocab 151936 --batch 8 --response 1024
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path
from typing import Optional

import torch

from .case import Case
from .harness import device_name, git_commit, memory_case, timed_call

PEER_PACKAGE = "_openrlhf_models"


def _bert_padding() -> types.ModuleType:
    """flash-attn's ``bert_padding`` helpers OpenRLHF's packed path calls, in torch."""
    module = types.ModuleType("flash_attn.bert_padding")

    def unpad_input(hidden, attention_mask):
        seqlens = attention_mask.sum(-1, dtype=torch.int32)
        indices = attention_mask.flatten().nonzero().flatten()
        cu_seqlens = torch.nn.functional.pad(torch.cumsum(seqlens, 0, dtype=torch.int32), (1, 0))
        return hidden.reshape(-1, *hidden.shape[2:])[indices], indices, cu_seqlens, int(seqlens.max()), seqlens

    def pad_input(hidden, indices, batch, seqlen):
        out = hidden.new_zeros(batch * seqlen, *hidden.shape[1:])
        out[indices] = hidden
        return out.view(batch, seqlen, *hidden.shape[1:])

    def rearrange(x, pattern):
        assert pattern == "b s ... -> (b s) ...", pattern
        return x.reshape(-1, *x.shape[2:])

    module.unpad_input, module.pad_input, module.rearrange = unpad_input, pad_input, rearrange
    module.index_first_axis = lambda x, indices: x[indices]
    return module


def _stand_ins() -> dict[str, types.ModuleType]:
    """Modules OpenRLHF's model files import that are not installed (only names, never called here)."""
    def module(name: str, **names) -> types.ModuleType:
        made = types.ModuleType(name)
        made.__dict__.update(names)
        return made

    def unused(*_, **__):
        raise RuntimeError("a stand-in for a module OpenRLHF's loaded files do not use in this path was called")

    candidates = {
        "deepspeed": module("deepspeed", utils=types.SimpleNamespace(set_z3_leaf_modules=unused)),
        "peft": module("peft", LoraConfig=unused, TaskType=types.SimpleNamespace(CAUSAL_LM="CAUSAL_LM"),
                       get_peft_model=unused),
        "peft.tuners": module("peft.tuners"),
        "peft.tuners.lora": module("peft.tuners.lora", LoraLayer=type("LoraLayer", (), {})),
        "flash_attn": module("flash_attn"),
        "flash_attn.bert_padding": _bert_padding(),
        "flash_attn.utils": module("flash_attn.utils"),
        "flash_attn.utils.distributed": module("flash_attn.utils.distributed", all_gather=unused),
    }
    missing = {name.split(".")[0] for name in candidates if importlib.util.find_spec(name.split(".")[0]) is None}
    return {name: mod for name, mod in candidates.items() if name.split(".")[0] in missing}


def load_openrlhf() -> types.SimpleNamespace:
    """OpenRLHF's installed ``models/{utils,ring_attn_utils,loss,actor}.py`` as ``(utils, loss, actor)``;
    ``ImportError`` when OpenRLHF is not installed. The stand-ins live in ``sys.modules`` only while the
    files load; ``compute_entropy`` (``@torch.compile``) is the uncompiled function, the same math."""
    if PEER_PACKAGE in sys.modules:
        return sys.modules[PEER_PACKAGE].loaded
    spec = importlib.util.find_spec("openrlhf")
    if spec is None:
        raise ImportError("openrlhf is not installed (pip install --no-deps openrlhf==0.11.2)")
    root = Path(next(iter(spec.submodule_search_locations))) / "models"
    package = types.ModuleType(PEER_PACKAGE)
    package.__path__ = [str(root)]
    import transformers.integrations.deepspeed  # noqa: F401  (it asks importlib about deepspeed: before the stand-in)

    stand_ins = _stand_ins()
    sys.modules.update(stand_ins)
    loaded = {}
    try:
        sys.modules[PEER_PACKAGE] = package
        for name in ("utils", "ring_attn_utils", "loss", "actor"):
            module_spec = importlib.util.spec_from_file_location(f"{PEER_PACKAGE}.{name}", root / f"{name}.py")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_spec.name] = module
            module_spec.loader.exec_module(module)
            loaded[name] = module
    except BaseException:
        sys.modules.pop(PEER_PACKAGE, None)
        raise
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
    actor = loaded["actor"]
    actor.compute_entropy = getattr(actor.compute_entropy, "_torchdynamo_orig_callable", actor.compute_entropy)
    package.loaded = types.SimpleNamespace(utils=loaded["utils"], loss=loaded["loss"], actor=actor)
    return package.loaded


def rollout_batch(batch: int, prompt: int, response: int, vocab: int, seed: int = 0) -> dict:
    """Left-padded prompts and right-padded responses of random token ids (ids 0-2 are special)."""
    g = torch.Generator().manual_seed(seed)
    prompt_lengths = torch.randint(prompt // 2, prompt + 1, (batch,), generator=g)
    response_lengths = torch.randint(max(response // 2, 1), response + 1, (batch,), generator=g)
    prompt_mask = torch.arange(prompt)[None, :] >= (prompt - prompt_lengths)[:, None]
    action_mask = torch.arange(response)[None, :] < response_lengths[:, None]
    attention_mask = torch.cat([prompt_mask, action_mask], dim=1).long()
    sequences = torch.randint(3, vocab, (batch, prompt + response), generator=g) * attention_mask
    old = -torch.rand(batch, response, generator=g) * 4
    return dict(sequences=sequences, attention_mask=attention_mask, action_mask=action_mask,
                old_log_probs=old, advantages=torch.randn(batch, 1, generator=g).expand(batch, response).contiguous())


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--response", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    from transformers import Qwen2Config, Qwen2ForCausalLM

    from actfocus_kernels.integrations.openrlhf import ActFocusPolicyLoss, patch_actor_with_actfocus

    peer = load_openrlhf()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=args.prompt + args.response, tie_word_embeddings=False,
                         pad_token_id=0, eos_token_id=1, bos_token_id=1)
    model = Qwen2ForCausalLM(config).to(device)
    stock, ours = peer.actor.Actor(model), peer.actor.Actor(model)
    stock.packing_samples = ours.packing_samples = False
    patch_actor_with_actfocus(ours)
    data = {k: v.to(device) for k, v in rollout_batch(args.batch, args.prompt, args.response, args.vocab).items()}
    old = data["old_log_probs"]

    def step(actor, loss_fn):
        def run():
            model.zero_grad(set_to_none=True)
            log_probs = actor(data["sequences"], data["action_mask"], attention_mask=data["attention_mask"])
            loss = loss_fn(log_probs, old, data["advantages"], action_mask=data["action_mask"])[0]
            loss.backward()
            return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])
        return run

    cases = {"OpenRLHF": step(stock, peer.loss.PolicyLoss()), "actfocus_kernels": step(ours, ActFocusPolicyLoss())}
    results = {name: run() for name, run in cases.items()}  # warm-up, and the values compared
    best = {name: float("inf") for name in cases}
    for _ in range(args.repeats):  # interleaved, so that a change of the machine's load hits both
        for name, run in cases.items():
            best[name] = min(best[name], timed_call(run, device))
    peaks = {name: memory_case(Case(run=run), device) for name, run in cases.items()}
    tokens = int(data["attention_mask"].sum())
    print(f"OpenRLHF actor forward + PolicyLoss + backward: B={args.batch}, prompt {args.prompt}, response "
          f"{args.response} ({tokens} tokens), V={args.vocab}, H={args.hidden}, {args.layers} layers, float32; "
          f"{device_name(device)}; commit {git_commit()}")
    print("| | fwd + loss + bwd | time vs OpenRLHF | peak extra memory | memory vs OpenRLHF | loss rel. diff | "
          "grad rel. diff |")
    print("|---|---|---|---|---|---|---|")
    stock_loss, stock_grad = results["OpenRLHF"]
    for name in cases:
        loss, grad = results[name]
        loss_diff = abs(float(loss - stock_loss)) / max(abs(float(stock_loss)), 1e-12)
        grad_diff = float((grad - stock_grad).norm() / stock_grad.norm())
        print(f"| {name} | {best[name] * 1e3:.0f} ms | {best[name] / best['OpenRLHF']:.2f}× | "
              f"{peaks[name] / 2**20:.0f} MiB | {peaks[name] / peaks['OpenRLHF']:.2f}× | {loss_diff:.1e} | "
              f"{grad_diff:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
