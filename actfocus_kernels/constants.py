"""Numerical constants of the math (SPEC sections 3-4): one home for each, imported by every
backend, the benchmarks' naive loss and the tests' judge.

``RATIO_LOG_CLAMP``: the log-ratio is clamped to ``[-20, 20]`` before ``r = exp(.)`` (SPEC 4).
``STD_EPS``: ActFocus standardises the action uncertainty by ``std_A u + 1e-6`` (SPEC 3).
"""
RATIO_LOG_CLAMP = 20.0
STD_EPS = 1e-6
