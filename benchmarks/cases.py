"""What the benchmarks run: size sets, inputs, ops and the variants of each op.

Every (op, variant) pair builds a ``Case``: an untimed ``setup`` (reset gradients, restore logits
that an in-place gradient overwrote), the timed ``run``, ``check`` (small CPU tensors taken after a
run, compared with the naive result so that every row computes the same thing) and ``teardown``.
A variant that cannot run here raises ``Skip`` with the reason, which the tables show.

Inputs mimic a GRPO batch: ``B`` sequences of ``L`` tokens (``N = B * L``), logits ``[B, L, V]``
(``randn * 2``), uniform targets, ``old_logp`` = current log-prob + U(-0.3, 0.3) (ratios on both
sides of the clip range), one advantage per sequence, trailing padding (loss mask), action spans
(a quarter of the tokens) and ActFocus weights from the energies (``source="old"``).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

import actfocus_kernels as ak
from actfocus_kernels import ActFocusConfig, PolicyLossConfig, native

from . import naive, peers

# --- sizes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeSet:
    """Where to measure. ``main`` points get every variant; sweeps (vocab at fixed N, tokens at
    fixed V) get the variants that are not ``main_only``. Repeats: at least ``min_repeats``, then
    more until ``target_s`` seconds or ``max_repeats``."""

    dtype: torch.dtype
    seq_len: int  # L; N = B * L
    main: tuple[tuple[int, int], ...]  # (N, V)
    vocab_sweep: tuple[int, tuple[int, ...]]  # (N, Vs)
    token_sweep: tuple[int, tuple[int, ...]]  # (V, Ns)
    linear: tuple[tuple[int, int, int], ...]  # (N, H, V)
    warmup: int
    min_repeats: int
    max_repeats: int
    target_s: float
    budget_s: float  # default wall-clock budget of one compare run
    copy_bytes: int  # size of the device-copy bandwidth measurement
    matmul_n: int  # n of the n^3 matmul-rate measurement


SIZES = {
    "smoke": SizeSet(torch.float32, 16, ((64, 1000),), (64, (500, 1000)), (1000, (32, 64)), ((64, 32, 1000),),
                     warmup=1, min_repeats=2, max_repeats=2, target_s=0.0, budget_s=120,
                     copy_bytes=32 << 20, matmul_n=256),
    "cpu": SizeSet(torch.float32, 128, ((1024, 32000),), (1024, (8000, 32000, 64000)), (32000, (256, 1024, 2048)),
                   ((512, 512, 32000),), warmup=1, min_repeats=3, max_repeats=10, target_s=2.0, budget_s=540,
                   copy_bytes=256 << 20, matmul_n=2048),
    "gpu": SizeSet(torch.bfloat16, 1024, ((16384, 151936), (16384, 262144)),
                   (16384, (32768, 65536, 131072, 151936, 262144)), (151936, (2048, 4096, 8192, 16384)),
                   ((16384, 3584, 151936),), warmup=2, min_repeats=5, max_repeats=20, target_s=0.3, budget_s=600,
                   copy_bytes=2 << 30, matmul_n=8192),
}


@dataclass(frozen=True)
class Point:
    """One problem size: ``tokens`` N, ``vocab`` V, ``hidden`` H (0: logits-level ops)."""

    tokens: int
    vocab: int
    hidden: int = 0

    def batch(self, seq_len: int) -> tuple[int, int]:
        """``(B, L)`` with ``B * L = N``."""
        length = min(seq_len, self.tokens)
        if self.tokens % length:
            raise ValueError(f"N={self.tokens} is not a multiple of the sequence length {length}")
        return self.tokens // length, length

    def label(self) -> str:
        hidden = f", H={self.hidden}" if self.hidden else ""
        return f"N={self.tokens}{hidden}, V={self.vocab}"


# --- ops ---------------------------------------------------------------------------------------

LOSS_CFG = PolicyLossConfig(clip_low=0.2, clip_high=0.28)
FULL_CFG = PolicyLossConfig(clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.04, kl_type="k3",
                            entropy_coef=0.01)
ACTFOCUS_CFG = ActFocusConfig()


@dataclass(frozen=True)
class Op:
    name: str
    title: str
    linear: bool  # inputs are hidden states + LM head
    grad: bool  # timed as forward + backward
    cfg: Optional[PolicyLossConfig] = None
    main_only: bool = False  # no sweeps

    def bytes_moved(self, point: Point, dtype: torch.dtype) -> int:
        """The fewest bytes the op must move: logits read once (and the gradient written once),
        plus about 40 bytes of per-token inputs and outputs. Linear ops: hidden and weight read
        (and their gradients written)."""
        element = torch.tensor([], dtype=dtype).element_size()
        per_token = 40 * point.tokens
        if self.linear:
            operands = (point.tokens + point.vocab) * point.hidden * element
            return operands * (2 if self.grad else 1) + per_token
        return point.tokens * point.vocab * element * (2 if self.grad else 1) + per_token

    def flops(self, point: Point) -> int:
        """Matrix-product flops of linear ops: logits ``2NHV``; with grad also dhidden and dweight."""
        return 2 * point.tokens * point.hidden * point.vocab * (3 if self.grad else 1) if self.linear else 0


OPS = {op.name: op for op in (
    Op("policy_loss", "policy loss fwd+bwd from logits (logp, energy, entropy, weights; clip 0.2/0.28)",
       linear=False, grad=True, cfg=LOSS_CFG),
    Op("token_stats", "token stats: logp + energy + entropy, no grad", linear=False, grad=False),
    Op("policy_loss_full", "policy loss fwd+bwd, all terms (entropy bonus 0.01, k3 KL 0.04, dual clip 3)",
       linear=False, grad=True, cfg=FULL_CFG, main_only=True),
    Op("linear_policy_loss", "policy loss fwd+bwd from hidden states + LM head", linear=True, grad=True, cfg=LOSS_CFG),
    Op("linear_token_stats", "token stats from hidden states + LM head, no grad", linear=True, grad=False),
)}


def available_ops() -> list[str]:
    """The logits-level ops, and the linear ones once ``actfocus_kernels`` has them."""
    return [name for name, op in OPS.items() if not op.linear or hasattr(ak, name)]


# --- inputs ------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """One batch on the benchmark device. ``logits`` (or ``hidden`` and ``weight``) are leaves
    that require grad; ``logp_true`` is the fp32 log-prob the peers' losses are checked against."""

    point: Point
    device: torch.device
    dtype: torch.dtype
    targets: Tensor  # [B, L] int64
    old_logp: Tensor  # [B, L] fp32
    ref_logp: Tensor  # [B, L] fp32
    advantages: Tensor  # [B] fp32
    loss_mask: Tensor  # [B, L] bool
    action_mask: Tensor  # [B, L] bool
    weights: Tensor  # [B, L] fp32
    logp_true: Tensor  # [B, L] fp32
    logits: Optional[Tensor] = None  # [B, L, V]
    hidden: Optional[Tensor] = None  # [B, L, H]
    weight: Optional[Tensor] = None  # [V, H]

    def zero_grads(self) -> None:
        for leaf in (self.logits, self.hidden, self.weight):
            if leaf is not None:
                leaf.grad = None


def _row_stats(rows: Callable[[int, int], Tensor], count: int, vocab: int, targets: Tensor,
               device: torch.device) -> tuple[Tensor, Tensor]:
    """fp32 ``(logp, lse)`` of ``count`` rows, computed in chunks of at most 256 MiB of fp32."""
    chunk = max(1, min(count, (256 << 20) // (4 * vocab)))
    logp = torch.empty(count, dtype=torch.float32, device=device)
    lse = torch.empty(count, dtype=torch.float32, device=device)
    with torch.no_grad():
        for start in range(0, count, chunk):
            stop = min(count, start + chunk)
            block = rows(start, stop).float()
            lse[start:stop] = torch.logsumexp(block, dim=-1)
            logp[start:stop] = block.gather(-1, targets[start:stop, None]).squeeze(-1) - lse[start:stop]
    return logp, lse


def make_inputs(point: Point, sizes: SizeSet, device: torch.device, seed: int = 0) -> Inputs:
    """A reproducible batch of the given size (see the module docstring)."""
    batch, length = point.batch(sizes.seq_len)
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = sizes.dtype
    targets = torch.randint(0, point.vocab, (batch, length), generator=gen, device=device)
    logits = hidden = weight = None
    if point.hidden:
        hidden = torch.randn(batch, length, point.hidden, generator=gen, device=device, dtype=dtype)
        weight = torch.randn(point.vocab, point.hidden, generator=gen, device=device, dtype=dtype)
        weight.mul_(2.0 / math.sqrt(point.hidden))
        flat_hidden = hidden.view(-1, point.hidden)
        logp, lse = _row_stats(lambda a, b: flat_hidden[a:b] @ weight.t(), batch * length, point.vocab,
                               targets.view(-1), device)
        hidden.requires_grad_(True)
        weight.requires_grad_(True)
    else:
        logits = torch.randn(batch, length, point.vocab, generator=gen, device=device, dtype=dtype).mul_(2.0)
        flat = logits.view(-1, point.vocab)
        logp, lse = _row_stats(lambda a, b: flat[a:b], batch * length, point.vocab, targets.view(-1), device)
        logits.requires_grad_(True)
    logp, energy = logp.view(batch, length), -lse.view(batch, length)

    def uniform(low: float, high: float) -> Tensor:
        return torch.rand(batch, length, generator=gen, device=device) * (high - low) + low

    positions = torch.arange(length, device=device)
    lengths = torch.randint(max(1, length // 2), length + 1, (batch, 1), generator=gen, device=device)
    loss_mask = positions < lengths
    span = max(2, length // 32)
    action_mask = ((positions // span) % 4 == 3).expand(batch, length).contiguous()
    return Inputs(
        point=point, device=device, dtype=dtype, targets=targets, old_logp=logp + uniform(-0.3, 0.3),
        ref_logp=logp + uniform(-0.2, 0.2), advantages=torch.randn(batch, generator=gen, device=device),
        loss_mask=loss_mask, action_mask=action_mask,
        weights=naive.actfocus_weights(energy, loss_mask, action_mask, ACTFOCUS_CFG), logp_true=logp,
        logits=logits, hidden=hidden, weight=weight,
    )


# --- cases -------------------------------------------------------------------------------------


class Skip(Exception):
    """The variant cannot run here; the message says why."""


def _nothing() -> None:
    return None


@dataclass
class Case:
    run: Callable[[], None]
    setup: Callable[[], None] = _nothing
    teardown: Callable[[], None] = _nothing
    check: Callable[[], dict[str, Tensor]] = dict
    note: str = ""


CHECK_ROWS = 4  # gradient rows compared: the first tokens of sequence 0 (always on the mask)


def _small(value: Tensor) -> Tensor:
    return value.detach().float().cpu()


def _loss_check(inputs: Inputs, loss: Tensor, logp: Tensor) -> dict[str, Tensor]:
    checks = {"loss": _small(loss), "logp": _small(logp[inputs.loss_mask])}  # kernels may skip masked rows
    if inputs.logits is not None:
        checks["grad"] = _small(inputs.logits.grad[0, :CHECK_ROWS])
    else:
        checks["grad_hidden"] = _small(inputs.hidden.grad[0, :CHECK_ROWS])
        checks["grad_weight"] = _small(inputs.weight.grad[:CHECK_ROWS])
    return checks


def peer_expectations(op: Op, inputs: Inputs) -> dict[str, Tensor]:
    """Values a peer's loss (no weights, entropy or dual clip) must match: the token-mean clipped
    surrogate (+ k3 KL when the op has one) of the fp32 log-probs."""
    if op.cfg is None:
        return {}
    logp = inputs.logp_true
    cfg = dataclasses.replace(op.cfg, dual_clip=None)
    pg_loss, _, _ = naive.surrogate(logp, inputs.old_logp, inputs.advantages.unsqueeze(-1), cfg)
    if op.cfg.kl_coef > 0:
        pg_loss = pg_loss + op.cfg.kl_coef * naive.kl_penalty(logp, inputs.ref_logp, op.cfg.kl_type)
    mask = inputs.loss_mask.float()
    return {"peer_loss": _small((pg_loss * mask).sum() / mask.sum().clamp(min=1))}


_COMPILED: dict[str, Callable] = {}


def compiled_naive(op: Op) -> Callable:
    """``torch.compile`` of the naive op (default mode, static shapes), one per op."""
    if op.name not in _COMPILED:
        fn = naive.token_stats if op.name == "token_stats" else functools.partial(naive.policy_loss, cfg=op.cfg)
        _COMPILED[op.name] = torch.compile(fn, dynamic=False)
    return _COMPILED[op.name]


def _build_naive(op: Op, inputs: Inputs, compiled: bool = False) -> Case:
    if compiled and op.linear:
        raise Skip("not measured for the linear ops")
    out: dict[str, object] = {}
    x = inputs
    if op.name in ("token_stats", "linear_token_stats"):
        stats_fn = compiled_naive(op) if compiled else naive.token_stats

        def run() -> None:
            with torch.no_grad():
                if op.linear:
                    out["stats"] = naive.linear_token_stats(x.hidden, x.weight, x.targets)
                else:
                    out["stats"] = stats_fn(x.logits, x.targets)

        return Case(run=run, check=lambda: dict(zip(("logp", "energy", "entropy"), map(_small, out["stats"]))))

    loss_fn = compiled_naive(op) if compiled else functools.partial(naive.policy_loss, cfg=op.cfg)

    def run_loss() -> None:
        if op.linear:
            result = naive.linear_policy_loss(x.hidden, x.weight, x.targets, x.old_logp, x.advantages, x.loss_mask,
                                              x.weights, x.action_mask, x.ref_logp, cfg=op.cfg)
        else:
            result = loss_fn(x.logits, x.targets, x.old_logp, x.advantages, x.loss_mask, x.weights, x.action_mask,
                             x.ref_logp)
        result.loss.backward()
        out["loss"], out["logp"] = result.loss.detach(), result.logp

    return Case(run=run_loss, setup=x.zero_grads, check=lambda: _loss_check(x, out["loss"], out["logp"]))


def _require_backend(backend: str, device: torch.device) -> None:
    if backend in ("cpu", "cuda"):
        if device.type != backend:
            raise Skip("GPU only" if backend == "cuda" else "CPU only")
        if not native.has_backend(backend):
            raise Skip(f"the extension was built without the {backend} backend")
    elif backend == "triton" and device.type != "cuda":
        raise Skip("GPU only (on CPU only under TRITON_INTERPRET=1: not timed)")
    elif backend == "reference" and device.type == "cuda":
        raise Skip("CPU table only (the fp32 ground truth, not a fast path)")


def _build_ours(op: Op, inputs: Inputs, backend: str, inplace: bool = False) -> Case:
    _require_backend(backend, inputs.device)
    x = inputs
    out: dict[str, object] = {}
    if not op.grad:
        def run_stats() -> None:
            if op.linear:
                out["stats"] = ak.linear_token_stats(x.hidden.detach(), x.weight.detach(), x.targets, backend=backend)
            else:
                out["stats"] = ak.token_stats(x.logits.detach(), x.targets, backend=backend)

        return Case(run=run_stats, check=lambda: dict(zip(("logp", "energy", "entropy"), map(_small, out["stats"]))))

    kwargs = dict(weights=x.weights, action_mask=x.action_mask, ref_logp=x.ref_logp, cfg=op.cfg, backend=backend)

    def run_loss() -> None:
        if op.linear:
            result = ak.linear_policy_loss(x.hidden, x.weight, x.targets, x.old_logp, x.advantages, x.loss_mask,
                                           **kwargs)
        else:
            result = ak.policy_loss(x.logits, x.targets, x.old_logp, x.advantages, x.loss_mask,
                                    inplace_grad=inplace, **kwargs)
        result.loss.backward()
        out["loss"], out["logp"] = result.loss.detach(), result.logp

    if not inplace:
        return Case(run=run_loss, setup=x.zero_grads, check=lambda: _loss_check(x, out["loss"], out["logp"]))
    original = x.logits.detach().clone()

    def restore() -> None:
        x.zero_grads()
        with torch.no_grad():
            x.logits.copy_(original)

    return Case(run=run_loss, setup=restore, teardown=restore,
                check=lambda: _loss_check(x, out["loss"], out["logp"]), note="gradient overwrites the logits")


def _require_peer(distribution: str, device: torch.device, cpu_ok: bool = False) -> None:
    if device.type != "cuda" and not cpu_ok:
        raise Skip("GPU only (Triton kernels)")
    if peers.version(distribution) is None:
        raise Skip(f"{distribution} is not importable")


def _build_liger(op: Op, inputs: Inputs, inplace: bool = False) -> Case:
    _require_peer("liger-kernel", inputs.device)
    x = inputs
    extended = peers.extend_logits(x.logits)
    out: dict[str, Tensor] = {}
    if not op.grad:
        def run_logp() -> None:
            out["logp"] = peers.liger_logp(extended, x.targets, 1.0)

        return Case(run=run_logp, check=lambda: {"logp": _small(out["logp"])}, note="log-prob only")
    extended.requires_grad_(True)
    original = extended.detach().clone() if inplace else None
    mask = x.loss_mask.int()

    def setup() -> None:
        extended.grad = None
        if original is not None:
            with torch.no_grad():
                extended.copy_(original)

    def run() -> None:
        loss = peers.liger_grpo_loss(extended, x.targets, x.old_logp, x.advantages, mask, x.ref_logp, op.cfg,
                                     inplace)
        loss.backward()
        out["loss"] = loss.detach()

    return Case(run=run, setup=setup, check=lambda: {"peer_loss": _small(out["loss"])},
                note="no entropy, energy or weights; logits [B, L+1, V]")


def _build_liger_linear(op: Op, inputs: Inputs) -> Case:
    _require_peer("liger-kernel", inputs.device, cpu_ok=True)
    x = inputs
    compiled = x.device.type == "cuda"
    module = peers.liger_fused_linear_grpo(op.cfg, compiled=compiled)
    mask = x.loss_mask.int()
    out: dict[str, Tensor] = {}

    def run() -> None:
        loss, _ = module(x.hidden, x.weight, x.targets, mask, x.advantages, old_per_token_logps=x.old_logp,
                         ref_per_token_logps=x.ref_logp if op.cfg.kl_coef > 0 else None)
        loss.backward()
        out["loss"] = loss.detach()

    note = "no entropy, energy or weights" + ("" if compiled else "; compiled=False on CPU (eager loss math)")
    return Case(run=run, setup=x.zero_grads, check=lambda: {"peer_loss": _small(out["loss"])}, note=note)


def _build_cce(op: Op, inputs: Inputs, filter_eps: Optional[str]) -> Case:
    _require_peer("cut-cross-entropy", inputs.device)
    x = inputs
    out: dict[str, Tensor] = {}
    if not op.grad:
        def run_logp() -> None:
            with torch.no_grad():
                out["logp"] = peers.cce_logp(x.hidden, x.weight, x.targets, filter_eps)

        return Case(run=run_logp, check=lambda: {"logp": _small(out["logp"])}, note="log-prob only")

    def run() -> None:
        loss, logp = peers.cce_policy_loss(x.hidden, x.weight, x.targets, x.old_logp, x.advantages, x.loss_mask,
                                           x.weights, op.cfg, filter_eps)
        loss.backward()
        out["loss"], out["logp"] = loss.detach(), logp.detach()

    exactness = "exact gradients" if filter_eps is None else f"filter_eps={filter_eps!r}: approximate gradients"
    return Case(run=run, setup=x.zero_grads, check=lambda: _loss_check(x, out["loss"], out["logp"]),
                note=f"weighted surrogate in torch, no entropy/energy; {exactness}")


LOGIT_OPS = ("policy_loss", "token_stats", "policy_loss_full")
LOSS_OPS = ("policy_loss", "policy_loss_full")
ALL_OPS = tuple(OPS)


@dataclass(frozen=True)
class Variant:
    name: str
    family: str  # "naive" | "compile" | "ours" | "peer"
    ops: tuple[str, ...]
    about: str
    build: Callable[[Op, Inputs], Case] = field(compare=False)
    main_only: bool = False  # measured at the main points only (slow, or compiled per shape)
    reserve_s: float = 5.0  # started only with this much of the run's time budget left (compilation)


VARIANTS = (
    Variant("naive", "naive", ALL_OPS, "eager torch as trainers write it: fp32 upcast, log_softmax, gather, "
            "softmax entropy, logsumexp energy, clipped surrogate, autograd (benchmarks/naive.py)", _build_naive),
    Variant("torch.compile", "compile", LOGIT_OPS, "torch.compile(naive), default mode, static shapes; compile "
            "time excluded (warm-up)", functools.partial(_build_naive, compiled=True), main_only=True, reserve_s=60.0),
    Variant("reference", "ours", ALL_OPS, "actfocus_kernels backend='reference' (plain torch, fp32)",
            functools.partial(_build_ours, backend="reference"), main_only=True),
    Variant("cpu", "ours", ALL_OPS, "backend='cpu': C++ extension, OpenMP over rows, at::vec",
            functools.partial(_build_ours, backend="cpu")),
    Variant("cpu inplace", "ours", LOSS_OPS, "backend='cpu', inplace_grad=True",
            functools.partial(_build_ours, backend="cpu", inplace=True)),
    Variant("triton", "ours", ALL_OPS, "backend='triton'", functools.partial(_build_ours, backend="triton")),
    Variant("triton inplace", "ours", LOSS_OPS, "backend='triton', inplace_grad=True",
            functools.partial(_build_ours, backend="triton", inplace=True)),
    Variant("cuda", "ours", ALL_OPS, "backend='cuda': CUDA C++ extension",
            functools.partial(_build_ours, backend="cuda")),
    Variant("cuda inplace", "ours", LOSS_OPS, "backend='cuda', inplace_grad=True",
            functools.partial(_build_ours, backend="cuda", inplace=True)),
    Variant("liger", "peer", LOSS_OPS, "Liger-Kernel triton_grpo_loss (inplace=False); no entropy, energy or "
            "weights", _build_liger),
    Variant("liger inplace", "peer", LOSS_OPS, "Liger-Kernel triton_grpo_loss (inplace=True, its default)",
            functools.partial(_build_liger, inplace=True)),
    Variant("liger logp", "peer", ("token_stats",), "Liger-Kernel fused_selective_log_softmax (log-prob only)",
            _build_liger),
    Variant("liger fused-linear", "peer", ("linear_policy_loss",), "Liger-Kernel LigerFusedLinearGRPOLoss "
            "(chunk_size=1, compiled on GPU)", _build_liger_linear, reserve_s=60.0),
    Variant("cce", "peer", ("linear_policy_loss", "linear_token_stats"), "cut-cross-entropy linear_cross_entropy "
            "(filter_eps='high', its default) + torch surrogate", functools.partial(_build_cce, filter_eps="high")),
    Variant("cce exact", "peer", ("linear_policy_loss",), "cut-cross-entropy with filter_eps=None + torch "
            "surrogate", functools.partial(_build_cce, filter_eps=None)),
)


def variants_for(op_name: str) -> list[Variant]:
    return [variant for variant in VARIANTS if op_name in variant.ops]


def build_case(op_name: str, variant: Variant, inputs: Inputs) -> Case:
    """The case of ``variant`` for ``op_name`` on ``inputs``; raises ``Skip`` when it can't run."""
    return variant.build(OPS[op_name], inputs)
