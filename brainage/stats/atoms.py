"""Summaries of PID atoms across cross-validation folds and repeats.

The atoms themselves (unique, redundant, synergistic information, in bits)
come from :mod:`brainage.pid`, one estimate per fitted model. Across the
folds and repeats of a cross-validation, :func:`pid_summary` reports each
atom's mean with a percentile bootstrap interval of that mean, its standard
deviation and its range.

What the interval is not: fold estimates share most of their training
participants, so they are not independent draws and the bootstrap over folds
understates the sampling uncertainty of the atoms for a new cohort. It
describes how stable the decomposition is across the refits of one cohort;
each fold's own sampling interval comes from :func:`brainage.pid.gaussian_pid`
(``n_boot``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..exceptions import StatsInputError

__all__ = ["PID_QUANTITIES", "pid_summary"]

#: The quantities summarised when present: the four atoms, then the three
#: mutual informations they are built from (names as in :mod:`brainage.pid`).
PID_QUANTITIES = ("U1", "U2", "R", "S", "I1", "I2", "I12")
_ATOMS = PID_QUANTITIES[:4]


def _as_table(atoms_per_fold) -> pd.DataFrame:
    if isinstance(atoms_per_fold, pd.DataFrame):
        table = atoms_per_fold
    elif isinstance(atoms_per_fold, Sequence) and not isinstance(atoms_per_fold, str):
        rows = []
        for i, item in enumerate(atoms_per_fold):
            if hasattr(item, "as_dict"):
                item = item.as_dict()
            if not isinstance(item, Mapping):
                raise StatsInputError(
                    f"atoms_per_fold[{i}]: expected a mapping of atom name to bits or a PIDResult, "
                    f"got {type(item).__name__}"
                )
            rows.append(dict(item))
        table = pd.DataFrame(rows)
    else:
        raise StatsInputError(
            "atoms_per_fold: expected a list of per-fold atoms (mappings or PIDResult) or a "
            f"DataFrame, got {type(atoms_per_fold).__name__}"
        )
    if len(table) == 0:
        raise StatsInputError("atoms_per_fold: no folds given")
    missing = [a for a in _ATOMS if a not in table.columns]
    if missing:
        raise StatsInputError(
            f"atoms_per_fold: every fold needs the atoms {', '.join(_ATOMS)}; missing "
            f"{', '.join(missing)}"
        )
    return table


def pid_summary(
    atoms_per_fold, *, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> dict:
    """Summarise PID atoms estimated in each fold (and repeat) of a cross-validation.

    Parameters
    ----------
    atoms_per_fold : sequence of mapping or PIDResult, or pandas.DataFrame
        One entry per fitted model, with at least ``U1``, ``U2``, ``R``, ``S``
        (bits); ``I1``, ``I2``, ``I12`` are summarised too when present.
        Other keys (``fold``, ``repeat``) are ignored.
    n_boot : int
        Number of bootstrap resamples of the folds.
    seed : int
        Seed of the resampling.
    confidence : float
        Coverage of the intervals, in (0, 1).

    Returns
    -------
    dict
        ``n_folds``, ``confidence``, ``n_boot`` and, per quantity, a dict with
        ``mean``, ``sd`` (ddof=1; NaN for one fold), ``min``, ``max``,
        ``ci_low``, ``ci_high`` (bits), plus ``fraction``: the mean atoms as
        fractions of their sum (the share of the joint information).

    Raises
    ------
    StatsInputError
        On no folds, a missing atom, or NaN / infinite values.

    Examples
    --------
    >>> folds = [{"U1": 0.5, "U2": 0.1, "R": 0.3, "S": 0.1},
    ...          {"U1": 0.7, "U2": 0.1, "R": 0.3, "S": 0.1}]
    >>> s = pid_summary(folds, n_boot=200)
    >>> round(s["U1"]["mean"], 3), s["n_folds"]
    (0.6, 2)
    """
    if not 0.0 < confidence < 1.0:
        raise StatsInputError(f"confidence: expected a value in (0, 1), got {confidence!r}")
    if int(n_boot) != n_boot or n_boot < 100:
        raise StatsInputError(f"n_boot: expected an integer of at least 100, got {n_boot!r}")
    table = _as_table(atoms_per_fold)
    names = [q for q in PID_QUANTITIES if q in table.columns]
    try:
        values = table[names].to_numpy(dtype=float)
    except (TypeError, ValueError):
        raise StatsInputError("atoms_per_fold: atom values must be numbers (bits)") from None
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise StatsInputError(
            f"atoms_per_fold[{int(row)}]: {names[col]} is not a finite number; drop that fold or "
            "recompute its atoms"
        )
    n = values.shape[0]
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, n, size=(int(n_boot), n))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha], axis=0)
    out: dict = {"n_folds": int(n), "confidence": float(confidence), "n_boot": int(n_boot)}
    for j, name in enumerate(names):
        col = values[:, j]
        out[name] = {
            "mean": float(col.mean()),
            "sd": float(col.std(ddof=1)) if n > 1 else float("nan"),
            "min": float(col.min()),
            "max": float(col.max()),
            "ci_low": float(lo[j]),
            "ci_high": float(hi[j]),
        }
    total = sum(out[a]["mean"] for a in _ATOMS)
    out["fraction"] = {a: (out[a]["mean"] / total if total > 0 else float("nan")) for a in _ATOMS}
    return out
