"""SPEC section 7's performance targets, checked on the rows of one run wherever it has the rows
they need: one Markdown bullet per target, saying the measured ratio and whether it is met."""
from __future__ import annotations

from typing import Optional


def _find(rows: list[dict], op: str, tokens: int, vocab: int, variant: str) -> Optional[dict]:
    return next((row for row in rows if row["op"] == op and row["tokens"] == tokens and row["vocab"] == vocab
                 and row["variant"] == variant and row["status"] == "ok"), None)


def _found(rows: list[dict], op: str, tokens: int, vocab: int, variants: tuple[str, ...]) -> list[dict]:
    return [row for row in (_find(rows, op, tokens, vocab, name) for name in variants) if row]


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def cpu_targets(rows: list[dict], meta: dict) -> list[str]:
    lines = []
    naive_row = _find(rows, "policy_loss", 1024, 32000, "naive")
    for variant in ("cpu", "cpu inplace"):
        ours = _find(rows, "policy_loss", 1024, 32000, variant)
        if naive_row and ours and meta["dtype"] == "float32":
            speedup = naive_row["time_ms"] / ours["time_ms"]
            memory = ours["extra_bytes"] / max(naive_row["extra_bytes"], 1)
            lines.append(f"- policy loss fwd+bwd, N=1024, V=32000 fp32, `{variant}` vs eager naive: "
                         f"**{speedup:.1f}×** faster (target ≥ 4×: {_met(speedup >= 4)}); "
                         f"extra memory {100 * memory:.1f}% of naive (target ≤ 10%: {_met(memory <= 0.10)})")
    return lines


def gpu_targets(rows: list[dict], meta: dict) -> list[str]:
    lines = []
    vocab = 151936
    ours_loss = _found(rows, "policy_loss", 16384, vocab, ("cuda", "cuda inplace", "triton", "triton inplace"))
    liger = _found(rows, "policy_loss", 16384, vocab, ("liger", "liger inplace"))
    if ours_loss and liger:
        best, peer = min(ours_loss, key=lambda r: r["time_ms"]), min(liger, key=lambda r: r["time_ms"])
        ratio = best["time_ms"] / peer["time_ms"]
        lines.append(f"- policy loss fwd+bwd, N=16384, V={vocab} bf16: best ours (`{best['variant']}`, "
                     f"{best['time_ms']:.2f} ms) = **{ratio:.2f}×** Liger `{peer['variant']}` "
                     f"({peer['time_ms']:.2f} ms); target ≤ 0.7×: {_met(ratio <= 0.7)}")
    for row in _found(rows, "policy_loss", 16384, vocab, ("cuda inplace", "triton inplace")):
        lines.append(f"- `{row['variant']}` extra memory: {row['extra_bytes'] / 2**30:.3f} GiB (target ≈ 0)")
    stats = _found(rows, "token_stats", 16384, vocab, ("cuda", "triton"))
    liger_logp = _find(rows, "token_stats", 16384, vocab, "liger logp")
    if stats:
        best = min(stats, key=lambda r: r["time_ms"])
        share = best["bytes"] / (best["time_ms"] / 1e3) / meta["copy_bandwidth_Bps"]
        versus = f" = {best['time_ms'] / liger_logp['time_ms']:.2f}× Liger logp (target ≤ 1.0×)" if liger_logp else ""
        lines.append(f"- token stats, N=16384, V={vocab}: best ours (`{best['variant']}`) {best['time_ms']:.3f} ms"
                     f"{versus}, **{100 * share:.0f}%** of copy bandwidth (target ≥ 90%)")
    linear_naive = next((row for row in rows if row["op"] == "linear_policy_loss" and row["variant"] == "naive"
                         and row["status"] == "ok"), None)
    linear_ours = [row for row in rows if row["op"] == "linear_policy_loss" and row["family"] == "ours"
                   and row["status"] == "ok"]
    if linear_naive and linear_ours:
        best = min(linear_ours, key=lambda r: r["time_ms"])
        ratio = best["time_ms"] / linear_naive["time_ms"]
        lines.append(f"- linear policy loss fwd+bwd: best ours (`{best['variant']}`) = **{ratio:.2f}×** naive "
                     f"time (target ≤ 0.8×: {_met(ratio <= 0.8)})")
    return lines


def targets(rows: list[dict], meta: dict) -> list[str]:
    """SPEC section 7's targets for the run's device, wherever this run has the rows they need."""
    return cpu_targets(rows, meta) if meta["device"] == "cpu" else gpu_targets(rows, meta)
