"""Numerical constants of the math (SPEC sections 3-4): one home for each, imported by every
backend, the benchmarks' naive loss and the tests' judge.

``RATIO_LOG_CLAMP``: the log-ratio is clamped to ``[-20, 20]`` before ``r = exp(.)`` (SPEC 4).
``STD_EPS``: ActFocus standardises the action uncertainty by ``std_A u + 1e-6`` (SPEC 3).
``FLOAT32_MAX``: the reciprocal temperature is clamped to it (SPEC 2: every finite T > 0 works).
"""
RATIO_LOG_CLAMP = 20.0
STD_EPS = 1e-6
# the largest finite float32: kernels clamp 1 / T to it, so a tiny T keeps its one-hot limit
FLOAT32_MAX = 3.4028234663852886e38
