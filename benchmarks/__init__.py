"""Benchmarks of actfocus_kernels against the naive torch losses trainers run today, torch.compile
of them, and peer libraries (Liger-Kernel, cut-cross-entropy) when importable.

``python -m benchmarks.compare`` prints the comparison tables and writes JSON + PNG plots;
``pytest benchmarks/ --benchmark-only`` runs the same cases under pytest-benchmark.
"""
