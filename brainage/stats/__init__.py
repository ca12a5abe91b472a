"""Brain-age statistics: pure numerics on arrays and tables.

* :mod:`~brainage.stats.metrics`: accuracy and age-bias metrics with bootstrap
  intervals (:func:`brain_age_metrics`, :func:`bootstrap_metrics`);
* :mod:`~brainage.stats.bias`: age-bias correction (:class:`AgeBiasCorrection`);
* :mod:`~brainage.stats.harmonize`: ComBat site harmonization with a spline
  age term (:class:`ComBat`);
* :mod:`~brainage.stats.groups`: group comparisons of the gap, per site and
  pooled (:func:`cohens_d`, :func:`compare_groups`, :func:`per_site`);
* :mod:`~brainage.stats.atoms`: PID atoms across folds (:func:`pid_summary`);
* :mod:`~brainage.stats.gaussianity`: how Gaussian a sample of latents is
  (:func:`latent_gaussianity`), the assumption of the closed-form PID.

Nothing here reads files, or imports torch or imaging libraries (an
import-linter contract checks it). Names are exported lazily, so importing
this package does not load statsmodels or scikit-learn. The formulas, their
citations and when to use which are in ``docs/stats.md``.
"""

from __future__ import annotations

import importlib

__all__ = [
    "AgeBiasCorrection",
    "ComBat",
    "bootstrap_metrics",
    "brain_age_metrics",
    "cohens_d",
    "compare_groups",
    "latent_gaussianity",
    "per_site",
    "pid_summary",
]

_HOME = {
    "AgeBiasCorrection": "bias",
    "ComBat": "harmonize",
    "bootstrap_metrics": "metrics",
    "brain_age_metrics": "metrics",
    "cohens_d": "groups",
    "compare_groups": "groups",
    "latent_gaussianity": "gaussianity",
    "per_site": "sites",
    "pid_summary": "atoms",
}


def __getattr__(name):
    if name in _HOME:
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module 'brainage.stats' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
