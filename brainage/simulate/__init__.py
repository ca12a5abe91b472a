"""Simulated BIDS cohorts with ground truth: the project's embedded default dataset.

:func:`simulate_cohort` writes T1w and resting-state BOLD images built from the
MNI ICBM152 2009a templates that nilearn ships, with known aging effects, and
the truth under ``sourcedata/brainage-truth/``. Imports are lazy so that
``brainage --help`` stays instant.
"""

from __future__ import annotations

__all__ = ["PRESETS", "SimulationParams", "resolve_params", "simulate_cohort"]


def __getattr__(name):
    if name == "simulate_cohort":
        from .cohort import simulate_cohort

        return simulate_cohort
    if name in ("PRESETS", "SimulationParams", "resolve_params"):
        from . import params

        return getattr(params, name)
    raise AttributeError(f"module 'brainage.simulate' has no attribute {name!r}")
