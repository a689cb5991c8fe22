"""Where a number was measured, and the settings that make a run repeat on that machine.

Runs are deterministic per machine: every random draw comes from a seeded generator (model init
``torch.manual_seed(seed)``, warm-start data ``random.Random(seed)``, sampling and minibatch order
``torch.Generator().manual_seed(seed)``, resampling ``numpy.random.default_rng(seed)``) and torch
runs on a fixed number of intra-op threads (``set_threads``, 1 by default: the reduction order
of a float sum depends on the thread count). Across CPUs the floating-point paths differ (vector
width, library kernels), so a seed's trajectory moves; results are reported as means with 95%
intervals over seeds, with the CPU named.
"""
from __future__ import annotations

import os
import platform

import torch


def cpu_name() -> str:
    """The ``model name`` line of ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def set_threads(threads: int) -> None:
    """Fix torch's intra-op thread count (part of what makes a run repeat)."""
    torch.set_num_threads(threads)


def machine_record() -> dict:
    """CPU model, core count, torch version and thread count, for every output."""
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}
