"""Benchmarks of actfocus_kernels against the naive torch losses trainers run today, torch.compile
of them, and peer libraries (Liger-Kernel, cut-cross-entropy) when importable.

``python -m benchmarks.compare`` prints the comparison tables and writes JSON + PNG plots;
``pytest benchmarks/ --benchmark-only`` runs the same cases under pytest-benchmark (test_bench.py).

Modules, one job each: compare.py (the CLI), runner.py (the plan of a run, its rows and JSON),
harness.py (timing, memory, check, machine ceilings, budget), bench_policy_loss.py,
bench_token_stats.py, bench_linear.py (each op's cases, variants and peers), registry.py (all ops
in table order), case.py (the case records and their shared pieces), inputs.py (sizes and
batches), report.py (tables and plots from the results), targets.py (SPEC section 7 checks),
naive.py (the naive torch loss, the repository's only one), peers.py (which peers are importable).
"""
