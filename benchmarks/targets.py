"""SPEC section 7's performance targets: one Markdown bullet per target, saying the ceiling, the
measured ratio and whether it is met. On CPU the ratios come from the side-by-side measurements of
benchmarks/ceilings.py (``meta["cpu_targets"]``); on GPU from the rows of the run."""
from __future__ import annotations

from typing import Optional


def _find(rows: list[dict], op: str, tokens: int, vocab: int, variant: str) -> Optional[dict]:
    return next((row for row in rows if row["op"] == op and row["tokens"] == tokens and row["vocab"] == vocab
                 and row["variant"] == variant and row["status"] == "ok"), None)


def _found(rows: list[dict], op: str, tokens: int, vocab: int, variants: tuple[str, ...]) -> list[dict]:
    return [row for row in (_find(rows, op, tokens, vocab, name) for name in variants) if row]


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"



# SPEC section 7 on CPU: ratios against ceilings measured in the same run (benchmarks/ceilings.py)
TOKEN_STATS_MIN_READ_SHARE = 0.80
INPLACE_MIN_COPY_SHARE = 0.70
NOT_INPLACE_MAX_RATIO = 1.2  # over in-place + allocating and first-touching the gradient buffer
LINEAR_MAX_GEMM_RATIO = 1.15  # over its three GEMMs alone
TINY_TOKENS = 64
TINY_FLOOR_MS = 0.5  # allowed fixed cost per call (Python, dispatch) above the per-token share ...
TINY_PER_TOKEN_FACTOR = 2.0  # ... and this multiple of the per-token time at N=1024


def _ms(entry: dict) -> float:
    return entry["best_ms"]


def cpu_target_results(measured: dict) -> list[dict]:
    """One record per target: ``name``, ``value`` (the ratio), ``limit``, ``met`` and ``text``."""
    results = []

    def add(name: str, value: float, limit: float, met: bool, text: str) -> None:
        results.append({"name": name, "value": value, "limit": limit, "met": met, "text": text})

    for dtype, entry in measured.get("token_stats", {}).items():
        read_bw = entry["bytes"] / (_ms(entry["read"]) / 1e3)
        ours_bw = entry["bytes"] / (_ms(entry["token_stats"]) / 1e3)
        share = ours_bw / read_bw
        add(f"token_stats {dtype}", share, TOKEN_STATS_MIN_READ_SHARE, share >= TOKEN_STATS_MIN_READ_SHARE,
            f"token_stats N=1024, V=32000 {dtype}: {_ms(entry['token_stats']):.2f} ms = {ours_bw / 1e9:.1f} GB/s; "
            f"read ceiling (x.sum()) {_ms(entry['read']):.2f} ms = {read_bw / 1e9:.1f} GB/s; "
            f"**{100 * share:.0f}%** of read (target ≥ {100 * TOKEN_STATS_MIN_READ_SHARE:.0f}%)")
    loss = measured.get("loss")
    if loss:
        copy_bw = loss["bytes"] / (_ms(loss["copy"]) / 1e3)
        inplace_bw = loss["bytes"] / (_ms(loss["inplace"]) / 1e3)
        share = inplace_bw / copy_bw
        add("loss in place", share, INPLACE_MIN_COPY_SHARE, share >= INPLACE_MIN_COPY_SHARE,
            f"policy loss fwd+bwd in place, N=1024, V=32000 fp32: {_ms(loss['inplace']):.2f} ms = "
            f"{inplace_bw / 1e9:.1f} GB/s read + write; copy ceiling {_ms(loss['copy']):.2f} ms = "
            f"{copy_bw / 1e9:.1f} GB/s; **{100 * share:.0f}%** of copy (target ≥ {100 * INPLACE_MIN_COPY_SHARE:.0f}%)")
        bound = _ms(loss["inplace"]) + _ms(loss["alloc_touch"])
        ratio = _ms(loss["not_inplace"]) / bound
        add("loss not in place", ratio, NOT_INPLACE_MAX_RATIO, ratio <= NOT_INPLACE_MAX_RATIO,
            f"policy loss fwd+bwd not in place: {_ms(loss['not_inplace']):.2f} ms; in place "
            f"{_ms(loss['inplace']):.2f} ms + gradient buffer alloc + first touch {_ms(loss['alloc_touch']):.2f} ms "
            f"= {bound:.2f} ms; **{ratio:.2f}×** (target ≤ {NOT_INPLACE_MAX_RATIO}×)")
    linear = measured.get("linear")
    if linear:
        ratio = _ms(linear["fused"]) / _ms(linear["three_gemms"])
        faster = _ms(linear["fused"]) < _ms(linear["naive"])
        add("linear time", ratio, LINEAR_MAX_GEMM_RATIO, ratio <= LINEAR_MAX_GEMM_RATIO and faster,
            f"linear policy loss fwd+bwd N=512, H=512, V=32000 fp32: fused {_ms(linear['fused']):.0f} ms, its three "
            f"GEMMs alone {_ms(linear['three_gemms']):.0f} ms (into preallocated outputs "
            f"{_ms(linear['three_gemms_preallocated']):.0f} ms), naive {_ms(linear['naive']):.0f} ms; "
            f"**{ratio:.2f}×** the GEMMs (target ≤ {LINEAR_MAX_GEMM_RATIO}× and faster than naive: "
            f"{'yes' if faster else 'no'})")
        bound = linear["chunk_bytes"] + linear["gradient_bytes"] + linear.get("per_token_bytes", 0)
        share = linear["extra_bytes"] / bound
        add("linear memory", share, 1.0, linear["extra_bytes"] <= bound,
            f"linear extra memory {linear['extra_bytes'] / 2**20:.2f} MiB; one chunk ({linear['chunk_rows']} rows, "
            f"{linear['chunk_bytes'] / 2**20:.2f} MiB) + gradients ({linear['gradient_bytes'] / 2**20:.2f} MiB) + "
            f"per-token values and scalars ({linear.get('per_token_bytes', 0) / 2**10:.0f} KiB) = "
            f"{bound / 2**20:.2f} MiB; "
            f"**{share:.3f}×** (target ≤ 1×)")
    tiny, big_stats, big_loss = measured.get("tiny"), measured.get("token_stats", {}).get("float32"), loss
    if tiny and big_stats and big_loss:
        for name, big in (("token_stats", _ms(big_stats["token_stats"])), ("loss", _ms(big_loss["not_inplace"]))):
            times = {int(tokens): entry[name]["median_ms"] for tokens, entry in tiny.items()}
            bound = TINY_FLOOR_MS + TINY_PER_TOKEN_FACTOR * big * TINY_TOKENS / 1024
            worst = max(value for tokens, value in times.items() if tokens <= TINY_TOKENS)
            cells = ", ".join(f"N={tokens}: {value:.3f} ms" for tokens, value in sorted(times.items()))
            sums = ", ".join(f"N={tokens}: {entry['sum']['median_ms']:.2f} ms" for tokens, entry in sorted(
                tiny.items(), key=lambda item: int(item[0])) if "sum" in entry)
            if sums:
                cells += f" (median after a 10 ms pause; torch's own x.sum() of the same logits: {sums})"
            add(f"tiny {name}", worst, bound, worst <= bound,
                f"{'token_stats' if name == 'token_stats' else 'policy loss fwd+bwd (not in place)'} at V=32000, "
                f"{cells}; bound {TINY_FLOOR_MS} ms + {TINY_PER_TOKEN_FACTOR:.0f}× the per-token time at N=1024 "
                f"({big:.2f} ms / 1024 per token) = **{bound:.2f} ms** at N={TINY_TOKENS}")
    return results


def _legacy_cpu_lines(rows: list[dict], meta: dict) -> list[str]:
    """Without the side-by-side measurements (an old JSON): the loss rows' share of the copy."""
    lines = []
    for variant in ("cpu", "cpu inplace"):
        ours = _find(rows, "policy_loss", 1024, 32000, variant)
        if ours and meta["dtype"] == "float32" and "copy_share" in ours:
            lines.append(f"- policy loss fwd+bwd, N=1024, V=32000 fp32, `{variant}`: {100 * ours['copy_share']:.0f}% "
                         "of the copy bandwidth (side-by-side target measurements not in this run)")
    return lines


def cpu_targets(rows: list[dict], meta: dict) -> list[str]:
    measured = meta.get("cpu_targets")
    if not measured:
        return _legacy_cpu_lines(rows, meta)
    return [f"- {_met(result['met'])}: {result['text']}" for result in cpu_target_results(measured)]


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
