"""Smoke test of the benchmark suite (benchmarks/): ``python -m benchmarks.compare`` at the smoke
size on CPU writes every expected row, its tables and its plots; every variant that ran computes
the same loss, gradient and statistics as the naive torch baseline; and the naive ActFocus weights
the benchmarks feed every variant agree with the library's."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import actfocus_kernels as ak
from actfocus_kernels import ActFocusConfig, TokenStats, native
from benchmarks import naive, peers

BENCH_ROOT = Path(naive.__file__).resolve().parents[1]  # the directory holding the benchmarks package
MAIN = (64, 1000)  # SIZES["smoke"].main
SWEEP_POINTS = [(64, 500), (64, 1000), (32, 1000)]


def _liger_ok() -> bool:
    return peers.version("liger-kernel") is not None


def expected_main_rows() -> dict[tuple[str, str], str]:
    """``(op, variant) -> status`` at the smoke main point on a CPU machine."""
    cpu = "ok" if native.has_backend("cpu") else "skipped"
    logit_loss = {"naive": "ok", "torch.compile": "skipped", "reference": "ok", "cpu": cpu, "cpu inplace": cpu,
                  "triton": "skipped", "triton inplace": "skipped", "cuda": "skipped", "cuda inplace": "skipped",
                  "liger": "skipped", "liger inplace": "skipped"}
    expected = {("policy_loss", name): status for name, status in logit_loss.items()}
    expected.update({("policy_loss_full", name): status for name, status in logit_loss.items()})
    expected.update({("token_stats", name): status for name, status in {
        "naive": "ok", "torch.compile": "skipped", "reference": "ok", "cpu": cpu, "triton": "skipped",
        "cuda": "skipped", "liger logp": "skipped"}.items()})
    if hasattr(ak, "linear_policy_loss"):
        expected.update({("linear_policy_loss", name): status for name, status in {
            "naive": "ok", "reference": "ok", "cpu": cpu, "triton": "skipped", "cuda": "skipped",
            "liger fused-linear": "ok" if _liger_ok() else "skipped", "cce": "skipped",
            "cce exact": "skipped"}.items()})
    if hasattr(ak, "linear_token_stats"):
        expected.update({("linear_token_stats", name): status for name, status in {
            "naive": "ok", "reference": "ok", "cpu": cpu, "triton": "skipped", "cuda": "skipped",
            "cce": "skipped"}.items()})
    return expected


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    command = [sys.executable, "-m", "benchmarks.compare", "--device", "cpu", "--sizes", "smoke", "--no-compile",
               "--out", str(out)]
    result = subprocess.run(command, cwd=BENCH_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return json.loads((out / "results_cpu_smoke.json").read_text()), out, result.stdout


def test_compare_writes_every_expected_row(smoke_run):
    data, _, _ = smoke_run
    rows = {(row["op"], row["tokens"], row["vocab"], row["hidden"], row["variant"]): row for row in data["rows"]}
    for (op, variant), status in expected_main_rows().items():
        hidden = 32 if op.startswith("linear") else 0
        row = rows.get((op, *MAIN, hidden, variant))
        assert row is not None, f"no row for {op} / {variant}"
        assert row["status"] == status, f"{op} / {variant}: {row['status']} ({row['reason']})"
        if status == "skipped":
            assert row["reason"], f"{op} / {variant} skipped without a reason"
    sweep_variants = ["naive"] + (["cpu", "cpu inplace"] if native.has_backend("cpu") else [])
    for op in ("policy_loss", "token_stats"):
        for tokens, vocab in SWEEP_POINTS:
            for variant in sweep_variants:
                if op == "token_stats" and variant == "cpu inplace":
                    continue
                assert rows[(op, tokens, vocab, 0, variant)]["status"] == "ok", (op, tokens, vocab, variant)


def test_measured_rows_are_sane_and_agree_with_naive(smoke_run):
    data, _, _ = smoke_run
    measured = [row for row in data["rows"] if row["status"] == "ok"]
    assert measured
    for row in measured:
        name = f"{row['op']} / {row['variant']} at N={row['tokens']}, V={row['vocab']}"
        assert row["time_ms"] > 0 and row["extra_bytes"] >= 0, name
        assert row["GBps"] > 0 and row["speedup_vs_naive"] > 0, name
        assert row["check_error"] is not None and row["check_ok"], f"{name}: relative error {row['check_error']}"
    meta = data["meta"]
    assert meta["copy_bandwidth_Bps"] > 0 and meta["matmul_flops"] > 0
    assert {"torch", "triton", "date", "device_name"} <= set(meta)


def test_compare_writes_tables_and_plots(smoke_run):
    _, out, stdout = smoke_run
    table = (out / "results_cpu_smoke.md").read_text()
    assert "### policy loss fwd+bwd from logits" in table and "### token stats" in table
    assert "| naive |" in table and table in stdout
    for op in ("policy_loss", "token_stats"):
        assert (out / f"{op}_cpu_smoke.png").stat().st_size > 0


@pytest.mark.parametrize("cfg", [ActFocusConfig(), ActFocusConfig(preserve_total=True, max_weight=2.0),
                                 ActFocusConfig(reasoning_weight=1.0, redistribution=0.0)])
def test_naive_actfocus_weights_match_the_library(cfg):
    gen = torch.Generator().manual_seed(0)
    energy = torch.randn(5, 40, generator=gen)
    loss_mask = torch.rand(5, 40, generator=gen) > 0.2
    action_mask = torch.rand(5, 40, generator=gen) > 0.6
    action_mask[3] = False  # a sequence without action tokens
    action_mask[4] = False
    action_mask[4, 7] = True  # a sequence with one
    loss_mask[4, 7] = True
    stats = TokenStats(torch.zeros_like(energy), energy, torch.zeros_like(energy))
    expected = ak.actfocus_weights(stats, loss_mask, action_mask, cfg)
    torch.testing.assert_close(naive.actfocus_weights(energy, loss_mask, action_mask, cfg), expected)
