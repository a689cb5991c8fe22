"""Rendering a run's results (the ``rows`` and ``meta`` of its JSON): the derived columns
(bandwidth, shares of the measured ceilings, speed-ups), the Markdown report — one table per op and
main point, the sweep tables, the SPEC section 7 targets (targets.py) and the variant legend — and
one PNG per op with sweeps (time and memory against vocabulary size and token count)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .inputs import SIZES, Point, linear_points, main_points
from .registry import OPS, VARIANTS
from .targets import targets


def fmt_error(error: Optional[float]) -> str:
    return "—" if error is None else f"{error:.1e}"


def _fmt_time(ms: float) -> str:
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _fmt_amount(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def _fmt_ratio(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _mem_unit(device: str) -> tuple[str, float]:
    return ("GiB", 2.0**30) if device == "cuda" else ("MiB", 2.0**20)


def enrich(rows: list[dict], meta: dict) -> None:
    """Add bandwidth, shares of the measured ceilings and speed-ups to the ok rows."""
    by_point: dict[tuple, list[dict]] = {}
    for row in rows:
        by_point.setdefault((row["op"], row["tokens"], row["vocab"], row["hidden"]), []).append(row)
    for group in by_point.values():
        ok = [row for row in group if row["status"] == "ok"]
        naive_ms = next((row["time_ms"] for row in ok if row["family"] == "naive"), None)
        peer_ms = min((row["time_ms"] for row in ok if row["family"] == "peer"), default=None)
        for row in ok:
            seconds = row["time_ms"] / 1e3
            row["GBps"] = row["bytes"] / seconds / 1e9
            row["copy_share"] = row["bytes"] / seconds / meta["copy_bandwidth_Bps"]
            if row["flops"]:
                row["TFLOPs"] = row["flops"] / seconds / 1e12
                row["matmul_share"] = row["flops"] / seconds / meta["matmul_flops"]
            row["speedup_vs_naive"] = naive_ms / row["time_ms"] if naive_ms else None
            row["speedup_vs_best_peer"] = peer_ms / row["time_ms"] if peer_ms else None


def _status_text(row: dict) -> str:
    return {"skipped": "skipped", "oom": "out of memory", "error": "error"}[row["status"]] + (
        f": {row['reason']}" if row["reason"] else "")


def main_table(rows: list[dict], op_name: str, point: tuple, meta: dict) -> list[str]:
    unit, scale = _mem_unit(meta["device"])
    op = OPS[op_name]
    selected = [row for row in rows if row["op"] == op_name and (row["tokens"], row["vocab"], row["hidden"]) == point]
    if not selected:
        return []
    tokens, vocab, hidden = point
    label = Point(tokens, vocab, hidden).label()
    rate_columns = "| TFLOP/s | % matmul |" if op.linear else "| GB/s | % copy |"
    lines = [f"### {op.title} — {label}, {meta['dtype']}", "",
             f"| variant | time ms | extra {unit} {rate_columns} vs naive | vs best peer | check | note |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    order = {variant.name: index for index, variant in enumerate(VARIANTS)}
    for row in sorted(selected, key=lambda row: order[row["variant"]]):
        if row["status"] != "ok":
            lines.append(f"| {row['variant']} | | | | | | | | {_status_text(row)} |")
            continue
        rate = f"{_fmt_amount(row['TFLOPs'])} | {100 * row['matmul_share']:.0f}%" if op.linear else \
            f"{_fmt_amount(row['GBps'])} | {100 * row['copy_share']:.0f}%"
        check = fmt_error(row["check_error"]) + ("" if row["check_ok"] else " ✗")
        note = row["reason"]
        if row["family"] == "compile":
            note = (note + "; " if note else "") + f"first call {row['first_call_s']:.1f} s"
        lines.append(f"| {row['variant']} | {_fmt_time(row['time_ms'])} | {_fmt_amount(row['extra_bytes'] / scale)} | "
                     f"{rate} | "
                     f"{_fmt_ratio(row['speedup_vs_naive'])} | {_fmt_ratio(row['speedup_vs_best_peer'])} | "
                     f"{check} | {note} |")
    return lines + [""]


def _sweep_rows(rows: list[dict], op_name: str, axis: str, fixed: int, values: tuple) -> list[dict]:
    """The ok rows of ``op_name`` along the sweep over ``axis`` ("vocab" or "tokens") at ``fixed``."""
    fixed_key = "tokens" if axis == "vocab" else "vocab"
    return [row for row in rows if row["op"] == op_name and row["hidden"] == 0 and row[fixed_key] == fixed
            and row[axis] in values and row["status"] == "ok"]


def _sweep_labels(axis: str, fixed: int) -> tuple[str, str]:
    """``(axis label, fixed label)`` of a sweep, e.g. ``("V", "N=1024")``."""
    return ("V", f"N={fixed}") if axis == "vocab" else ("N", f"V={fixed}")


def sweep_table(rows: list[dict], op_name: str, axis: str, fixed: int, values: tuple, meta: dict) -> list[str]:
    unit, scale = _mem_unit(meta["device"])
    selected = _sweep_rows(rows, op_name, axis, fixed, values)
    if not selected:
        return []
    variants = [variant.name for variant in VARIANTS if sum(row["variant"] == variant.name for row in selected) >= 2]
    if not variants:
        return []
    axis_label, fixed_label = _sweep_labels(axis, fixed)
    lines = [f"#### {op_name}: time ms (extra {unit}) against {axis_label}, {fixed_label}", "",
             "| variant | " + " | ".join(f"{axis_label}={value}" for value in values) + " |",
             "|---|" + "---:|" * len(values)]
    for name in variants:
        cells = []
        for value in values:
            row = next((row for row in selected if row["variant"] == name and row[axis] == value), None)
            cells.append("" if row is None else
                         f"{_fmt_time(row['time_ms'])} ({_fmt_amount(row['extra_bytes'] / scale)})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def report(rows: list[dict], meta: dict) -> str:
    sizes = SIZES[meta["sizes"]]
    unit, _ = _mem_unit(meta["device"])
    lines = [f"## {meta['device_name']} — sizes `{meta['sizes']}`, {meta['dtype']}", "",
             f"{meta['date']}; Python {meta['python']}, torch {meta['torch']}, triton {meta['triton']}, "
             f"actfocus_kernels {meta['actfocus_kernels']} (native backends: "
             f"{', '.join(meta['native']['backends']) or 'none'}); peers: "
             + ", ".join(f"{name} {version or 'not importable'}" for name, version in meta["peers"].items()) + ".",
             f"Measured in this run: device copy {meta['copy_bandwidth_Bps'] / 1e9:.1f} GB/s (read + write), "
             f"{meta['dtype']} matmul {meta['matmul_flops'] / 1e12:.3g} TFLOP/s. Commit {meta['commit']}. "
             f"1-minute load average {meta['load_average_start']:.1f} at the start, "
             f"{meta['load_average_end']:.1f} at the end ({meta['elapsed_s']:.0f} s).", "",
             f"Time: median of repeats after warm-up. Extra {unit}: peak allocated during one call above the "
             "inputs, gradients included. GB/s: the op's minimal bytes (logits read once, gradient written once) "
             "over the time. check: relative error against naive (peers: against the same loss in torch).", ""]
    ops = [name for name in OPS if any(row["op"] == name for row in rows)]
    points = list(dict.fromkeys((row["tokens"], row["vocab"], row["hidden"]) for row in rows))
    table_points = [(point.tokens, point.vocab, point.hidden) for point in main_points(sizes) + linear_points(sizes)]
    for op_name in ops:
        for point in table_points:
            if point in points:
                lines += main_table(rows, op_name, point, meta)
    for op_name in [name for name in ops if not OPS[name].main_only]:
        lines += sweep_table(rows, op_name, "vocab", sizes.vocab_sweep[0], sizes.vocab_sweep[1], meta)
        lines += sweep_table(rows, op_name, "tokens", sizes.token_sweep[0], sizes.token_sweep[1], meta)
    target_lines = targets(rows, meta)
    if target_lines:
        lines += ["### SPEC section 7 targets", ""] + target_lines + [""]
    lines += ["Variants:", ""] + [f"- `{variant.name}`: {variant.about}" for variant in VARIANTS] + [""]
    return "\n".join(lines)


def plot(rows: list[dict], meta: dict, out: Path) -> list[Path]:
    """One PNG per op with sweeps: time and memory against V (fixed N) and against N (fixed V)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = SIZES[meta["sizes"]]
    unit, scale = _mem_unit(meta["device"])
    written = []
    for op_name in [name for name in OPS if not OPS[name].linear and not OPS[name].main_only]:
        sweeps = (("vocab", sizes.vocab_sweep), ("tokens", sizes.token_sweep))
        figure, axes = plt.subplots(2, 2, figsize=(11, 8))
        drawn = False
        for column, (axis_key, (fixed, values)) in enumerate(sweeps):
            selected = _sweep_rows(rows, op_name, axis_key, fixed, values)
            for variant in VARIANTS:
                points = sorted((row[axis_key], row["time_ms"], row["extra_bytes"] / scale) for row in selected
                                if row["variant"] == variant.name)
                if len(points) < 2:
                    continue
                drawn = True
                xs = [p[0] for p in points]
                axes[0][column].plot(xs, [p[1] for p in points], marker="o", label=variant.name)
                axes[1][column].plot(xs, [max(p[2], 1e-3) for p in points], marker="o", label=variant.name)
            axis_label = "vocabulary size V" if axis_key == "vocab" else "tokens N"
            _, fixed_label = _sweep_labels(axis_key, fixed)
            for row_index, quantity in enumerate(("time (ms)", f"peak extra memory ({unit})")):
                axis = axes[row_index][column]
                axis.set_xscale("log")
                axis.set_yscale("log")
                axis.set_xlabel(f"{axis_label} ({fixed_label})")
                axis.set_ylabel(quantity)
                axis.grid(True, which="both", alpha=0.3)
        if not drawn:
            plt.close(figure)
            continue
        axes[0][0].legend(fontsize=8)
        figure.suptitle(f"{OPS[op_name].title}\n{meta['device_name']}, {meta['dtype']}", fontsize=10)
        figure.tight_layout()
        path = out / f"{op_name}_{meta['device']}_{meta['sizes']}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written
