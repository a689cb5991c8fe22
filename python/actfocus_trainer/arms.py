"""The study's arms by name, and an ablation pair's results picked out of a study summary.

Data selection only: the study (``study.py``) and its figures (``plots.py``) both read it.
"""
from __future__ import annotations

# (algo, ActFocus on) of the main arms
ARMS = (("grpo", False), ("grpo", True), ("ppo", False), ("ppo", True))


def arm_label(algo: str, actfocus: bool, lam: float | None = None, gamma: float | None = None) -> str:
    """``GRPO``, ``PPO+ActFocus``, ...; an ablation arm adds its ``λ=<lam> γ=<gamma>``."""
    label = f"{algo.upper()}{'+ActFocus' if actfocus else ''}"
    return label if lam is None else f"{label} λ={lam:g} γ={gamma:g}"


def ablation_finals(cell: dict, lam: float, gamma: float, main: list[float]) -> list[float]:
    """Final successes of GRPO+ActFocus at ``(lam, gamma)`` (GRPO at (1, 0), the main arm at ``main``)."""
    if (lam, gamma) == (1.0, 0.0):
        return cell["arms"]["GRPO"]["final"]
    if [lam, gamma] == list(main):
        return cell["arms"]["GRPO+ActFocus"]["final"]
    return cell["arms"][arm_label("grpo", True, lam, gamma)]["final"]
