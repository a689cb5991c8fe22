"""CPU benchmark of the policy loss forward + backward (SPEC section 7, CPU row).

Times, in one run on this machine's CPU threads, at ``N`` tokens x ``V`` vocabulary fp32 logits:

- ``eager``: naive torch — fp32 log_softmax, gather, softmax entropy, logsumexp energy, clipped
  surrogate, token-mean, ``.backward()``;
- ``native op``: ``torch.ops.actfocus_native.policy_loss`` writing the gradient into a buffer;
- ``api``: the public ``actfocus_kernels.policy_loss(..., backend="cpu")`` + ``loss.backward()``;
- ``api inplace``: the same with ``inplace_grad=True`` (the gradient overwrites the logits).

Peak extra memory is the rise of the process's peak RSS over its inputs, measured for each path in
a fresh subprocess. Usage: ``python scripts/bench_cpu.py [--tokens 1024] [--vocab 32000]``.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

TEMPERATURE = 1.0
CLIP = 0.2
ENTROPY_COEF = 0.01
PATHS = ("eager", "native op", "api", "api inplace")


def make_inputs(tokens: int, vocab: int) -> dict[str, torch.Tensor]:
    # built without logits-sized temporaries, so the peak RSS before a step is the inputs
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(tokens, vocab, generator=g).mul_(2)
    targets = torch.randint(0, vocab, (tokens,), generator=g)
    old_logp = torch.cat([
        torch.log_softmax(chunk, -1).gather(-1, chunk_targets[:, None]).squeeze(-1)
        for chunk, chunk_targets in zip(logits.split(64), targets.split(64))
    ])
    old_logp += torch.empty(tokens).uniform_(-0.5, 0.5, generator=g)
    return dict(
        logits=logits,
        targets=targets,
        old_logp=old_logp,
        advantages=torch.randn(tokens, generator=g),
        loss_mask=(torch.rand(tokens, generator=g) > 0.1).float(),
    )


def eager_step(inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive torch: the loss written with ordinary ops and differentiated by autograd."""
    z = inputs["logits"].detach().requires_grad_(True)
    s = z.float() / TEMPERATURE
    log_probs = torch.log_softmax(s, dim=-1)
    logp = log_probs.gather(-1, inputs["targets"][:, None]).squeeze(-1)
    entropy = -(torch.softmax(s, dim=-1) * log_probs).sum(-1)
    energy = -TEMPERATURE * torch.logsumexp(s, dim=-1)
    ratio = torch.exp(torch.clamp(logp - inputs["old_logp"], -20, 20))
    advantages = inputs["advantages"]
    pg = torch.maximum(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - CLIP, 1 + CLIP))
    mask = inputs["loss_mask"]
    loss = ((pg - ENTROPY_COEF * entropy) * mask).sum() / mask.sum().clamp_min(1)
    loss.backward()
    energy.detach()
    return loss.detach(), z.grad


def native_op_step(inputs: dict[str, torch.Tensor], dlogits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The actfocus_native row op: statistics, loss and gradient in one call."""
    mask = inputs["loss_mask"]
    scale = mask / mask.sum().clamp_min(1)
    token_loss, *_ = torch.ops.actfocus_native.policy_loss(
        inputs["logits"], inputs["targets"], inputs["old_logp"], inputs["advantages"], None,
        torch.ones_like(mask), scale, TEMPERATURE, CLIP, CLIP, 0.0, 0.0, 3, ENTROPY_COEF, -100, dlogits)
    return token_loss.sum(), dlogits


def api_step(inputs: dict[str, torch.Tensor], logits: torch.Tensor, inplace: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The public API on the CPU backend, gradient through autograd (``logits``: a leaf)."""
    from actfocus_kernels import PolicyLossConfig, policy_loss

    logits.requires_grad_(True)
    out = policy_loss(logits, inputs["targets"], inputs["old_logp"], inputs["advantages"], inputs["loss_mask"],
                      cfg=PolicyLossConfig(clip_low=CLIP, clip_high=CLIP, entropy_coef=ENTROPY_COEF,
                                           temperature=TEMPERATURE),
                      inplace_grad=inplace, backend="cpu")
    out.loss.backward()
    return out.loss.detach(), logits.grad


def runner(path: str, inputs: dict[str, torch.Tensor]):
    """``(prepare, step)``: ``step(prepare())`` runs ``path`` once; ``prepare`` is not timed (the
    in-place path consumes its logits, so it gets a fresh copy, as a model's LM head would make)."""
    if path == "eager":
        return (lambda: None), (lambda _: eager_step(inputs))
    if path == "native op":
        return (lambda: torch.empty_like(inputs["logits"])), (lambda dlogits: native_op_step(inputs, dlogits))
    if path == "api":
        return (lambda: inputs["logits"].detach()), (lambda logits: api_step(inputs, logits, inplace=False))
    return (lambda: inputs["logits"].clone()), (lambda logits: api_step(inputs, logits, inplace=True))


def time_path(path: str, inputs: dict[str, torch.Tensor], repeats: int) -> float:
    prepare, step = runner(path, inputs)
    step(prepare())  # warm-up
    times = []
    for _ in range(repeats):
        state = prepare()
        start = time.perf_counter()
        step(state)
        times.append(time.perf_counter() - start)
        del state
    return statistics.median(times)


def peak_rss_bytes() -> int:
    """This process's peak RSS (Linux VmHWM: per address space, unlike ru_maxrss which a child
    inherits from its parent)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_memory(path: str, tokens: int, vocab: int) -> int:
    """Peak RSS rise of one ``path`` step over its inputs, in a fresh process (bytes)."""
    # The in-place path consumes the input logits themselves; the gradient buffer of the op path
    # is allocated after the baseline (it is extra memory, like the eager path's logits.grad).
    state = "inputs['logits']" if path == "api inplace" else "prepare()"
    code = (
        "import json, sys; sys.path.insert(0, 'scripts'); import bench_cpu as b; import actfocus_kernels; "
        f"inputs = b.make_inputs({tokens}, {vocab}); prepare, step = b.runner({path!r}, inputs); "
        f"base = b.peak_rss_bytes(); step({state}); "
        "print(json.dumps(b.peak_rss_bytes() - base))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from actfocus_kernels import native

    if not native.has_backend("cpu"):
        sys.exit("the actfocus_kernels extension is not built with the cpu backend")
    inputs = make_inputs(args.tokens, args.vocab)
    info = native.build_info()
    print(f"N={args.tokens} V={args.vocab} fp32 logits ({inputs['logits'].numel() * 4 / 2**20:.0f} MiB), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, cpu kernels {info['cpu_capability']}")

    loss_ref, grad_ref = eager_step(inputs)
    for path in PATHS[1:]:
        prepare, step = runner(path, inputs)
        loss, grad = step(prepare())
        grad_err = ((grad - grad_ref).norm() / grad_ref.norm()).item()
        loss_err = abs(loss.item() - loss_ref.item()) / abs(loss_ref.item())
        print(f"check {path:<12} vs eager: loss rel err {loss_err:.1e}, grad rel err {grad_err:.1e}")

    times = {path: time_path(path, inputs, args.repeats) for path in PATHS}
    times["eager"] = min(times["eager"], time_path("eager", inputs, args.repeats))  # noisy hosts: best of two
    memory = {path: measure_memory(path, args.tokens, args.vocab) for path in PATHS}
    print(f"{'path':<12} {'time ms':>9} {'speedup':>8} {'peak extra MiB':>15} {'vs eager':>9}")
    for path in PATHS:
        print(f"{path:<12} {times[path] * 1e3:9.1f} {times['eager'] / times[path]:7.2f}x "
              f"{memory[path] / 2**20:15.1f} {memory[path] / max(memory['eager'], 1):8.1%}")


if __name__ == "__main__":
    main()
