"""Accuracy metrics of brain-age predictions, with bootstrap intervals.

With ``y`` the chronological age, ``ŷ`` the predicted age and ``δ = ŷ − y``
the brain-age gap:

* ``mae = mean |δ|``, ``rmse = sqrt(mean δ²)`` (years);
* ``r``: Pearson correlation of ``ŷ`` with ``y``;
* ``r2 = 1 − Σδ² / Σ(y − ȳ)²``, the coefficient of determination of ``ŷ`` as a
  prediction of ``y`` (not ``r²``: it is negative when ``ŷ`` is worse than
  predicting the mean age for everyone);
* ``gap_age_slope``: ordinary least-squares slope of ``δ`` on ``y`` and
  ``gap_age_spearman``: Spearman ``ρ(δ, y)``, the two usual measures of the
  regression-to-the-mean bias (a common criterion of a successful bias
  correction is ``|ρ| < 0.1``).

MAE and ``r`` depend on the age range of the sample, so the range is part of
the result. Metrics of *corrected* predictions look spuriously good (de Lange
et al. 2022, Hum. Brain Mapp. 43:3113): report these functions' output on
uncorrected predictions as the accuracy, and on corrected ones only to show
that the correction removed the age dependence.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from ..exceptions import StatsInputError
from ._validate import as_1d_float, check_same_length

__all__ = ["METRICS", "bootstrap_metrics", "brain_age_metrics"]

#: Names of the metrics that :func:`bootstrap_metrics` gives intervals for.
METRICS = ("mae", "rmse", "r", "r2", "gap_age_slope", "gap_age_spearman")


def _checked(age, predicted_age) -> tuple[np.ndarray, np.ndarray]:
    y = as_1d_float("age", age)
    yhat = as_1d_float("predicted_age", predicted_age)
    check_same_length(age=y, predicted_age=yhat)
    if y.size < 3:
        raise StatsInputError(
            f"age: brain-age metrics need at least 3 participants, got {y.size}"
        )
    if np.ptp(y) == 0:
        raise StatsInputError(
            f"age: all {y.size} participants have the same age ({y[0]:g}); the correlation, R² "
            "and the gap-age slope are undefined without age variance"
        )
    return y, yhat


def _rowwise(y: np.ndarray, yhat: np.ndarray) -> dict[str, np.ndarray]:
    """Compute the metrics along the last axis (one row per resample)."""
    gap = yhat - y
    yc = y - y.mean(axis=-1, keepdims=True)
    pc = yhat - yhat.mean(axis=-1, keepdims=True)
    gc = gap - gap.mean(axis=-1, keepdims=True)
    syy = np.sum(yc * yc, axis=-1)
    spp = np.sum(pc * pc, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.sum(yc * pc, axis=-1) / np.sqrt(syy * spp)
        slope = np.sum(yc * gc, axis=-1) / syy
        r2 = 1.0 - np.sum(gap * gap, axis=-1) / syy
        ry = stats.rankdata(y, axis=-1)
        rg = stats.rankdata(gap, axis=-1)
        ryc = ry - ry.mean(axis=-1, keepdims=True)
        rgc = rg - rg.mean(axis=-1, keepdims=True)
        rho = np.sum(ryc * rgc, axis=-1) / np.sqrt(np.sum(ryc**2, axis=-1) * np.sum(rgc**2, axis=-1))
    return {
        "mae": np.mean(np.abs(gap), axis=-1),
        "rmse": np.sqrt(np.mean(gap * gap, axis=-1)),
        "r": r,
        "r2": r2,
        "gap_age_slope": slope,
        "gap_age_spearman": rho,
    }


def brain_age_metrics(age, predicted_age) -> dict:
    """Compute the accuracy and age-bias metrics of brain-age predictions.

    Parameters
    ----------
    age : array-like of shape (n,)
        Chronological ages (years).
    predicted_age : array-like of shape (n,)
        Predicted ages (years), out-of-sample.

    Returns
    -------
    dict
        ``n``, ``age_min``, ``age_max``, ``mae``, ``rmse``, ``r``, ``r2``,
        ``gap_age_slope``, ``gap_age_spearman`` (plain floats; ``r`` and
        ``gap_age_spearman`` are NaN when the predictions or the gaps are
        constant, where a correlation is undefined).

    Raises
    ------
    StatsInputError
        On NaN or infinite values, a length mismatch (both named), fewer than
        3 participants, or a constant age.

    Examples
    --------
    >>> m = brain_age_metrics([20, 40, 60, 80], [30, 40, 50, 60])
    >>> m["mae"], m["gap_age_slope"], m["r"]
    (10.0, -0.5, 1.0)
    """
    y, yhat = _checked(age, predicted_age)
    out = {"n": int(y.size), "age_min": float(y.min()), "age_max": float(y.max())}
    out.update({k: float(v) for k, v in _rowwise(y, yhat).items()})
    return out


def bootstrap_metrics(
    age, predicted_age, *, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> dict:
    """Compute :func:`brain_age_metrics` with percentile bootstrap intervals.

    Participants are resampled with replacement ``n_boot`` times; each
    metric's interval is the ``(1 − confidence)/2`` and ``(1 + confidence)/2``
    percentiles of its resampled values (resamples where a correlation is
    undefined are left out of that metric's interval).

    Parameters
    ----------
    age, predicted_age : array-like of shape (n,)
        As in :func:`brain_age_metrics`.
    n_boot : int
        Number of bootstrap resamples (at least 100).
    seed : int
        Seed of the resampling; the same seed gives the same intervals.
    confidence : float
        Coverage of the intervals, in (0, 1).

    Returns
    -------
    dict
        The point estimates of :func:`brain_age_metrics`, plus
        ``<metric>_ci_low`` and ``<metric>_ci_high`` for every metric in
        :data:`METRICS`, and ``n_boot``, ``confidence``, ``seed``.

    Raises
    ------
    StatsInputError
        As :func:`brain_age_metrics`, or on an invalid ``n_boot`` or
        ``confidence``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> age = rng.uniform(20, 80, 200)
    >>> m = bootstrap_metrics(age, age + rng.normal(0, 5, 200), n_boot=500)
    >>> bool(m["mae_ci_low"] < m["mae"] < m["mae_ci_high"])
    True
    """
    if int(n_boot) != n_boot or n_boot < 100:
        raise StatsInputError(f"n_boot: expected an integer of at least 100, got {n_boot!r}")
    if not 0.0 < confidence < 1.0:
        raise StatsInputError(f"confidence: expected a value in (0, 1), got {confidence!r}")
    out = brain_age_metrics(age, predicted_age)
    y, yhat = _checked(age, predicted_age)
    rng = np.random.default_rng(seed)
    alpha = (1.0 - confidence) / 2.0
    # Resample in chunks so memory stays ~n_boot·n·8 bytes per array at most 64 MB.
    chunk = max(1, int(8_000_000 // y.size))
    draws: dict[str, list[np.ndarray]] = {k: [] for k in METRICS}
    done = 0
    while done < n_boot:
        m = min(chunk, int(n_boot) - done)
        idx = rng.integers(0, y.size, size=(m, y.size))
        for k, v in _rowwise(y[idx], yhat[idx]).items():
            draws[k].append(v)
        done += m
    for k in METRICS:
        values = np.concatenate(draws[k])
        values = values[np.isfinite(values)]
        if values.size == 0:
            lo = hi = float("nan")
        else:
            lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
        out[f"{k}_ci_low"] = float(lo)
        out[f"{k}_ci_high"] = float(hi)
    out.update(n_boot=int(n_boot), confidence=float(confidence), seed=int(seed))
    return out
