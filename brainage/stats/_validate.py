"""Input checks shared by the :mod:`brainage.stats` modules.

Every check raises :class:`~brainage.exceptions.StatsInputError` with a
message that names the argument, what was expected and what was found.
"""

from __future__ import annotations

import numpy as np

from ..exceptions import StatsInputError

__all__ = ["as_1d_float", "as_labels", "check_same_length"]


def as_1d_float(name: str, x, *, allow_nan: bool = False) -> np.ndarray:
    """Return ``x`` as a 1-D float64 array, or raise naming ``name``.

    Parameters
    ----------
    name : str
        The argument's name, used in the error message.
    x : array-like
        Values (a list, array or pandas Series).
    allow_nan : bool
        Accept NaN values (infinite values are always refused).

    Returns
    -------
    numpy.ndarray of shape (n,)

    Raises
    ------
    StatsInputError
        If ``x`` is not one-dimensional, not numeric, empty, or holds NaN
        (unless allowed) or infinite values.

    Examples
    --------
    >>> as_1d_float("age", [20, 30.5]).tolist()
    [20.0, 30.5]
    """
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as exc:
        raise StatsInputError(
            f"{name}: expected numbers, got values that cannot be read as numbers ({exc})"
        ) from None
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise StatsInputError(f"{name}: expected a one-dimensional array, got shape {arr.shape}")
    if arr.size == 0:
        raise StatsInputError(f"{name}: expected at least one value, got an empty array")
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if bad.any():
        idx = np.flatnonzero(bad)
        what = "infinite" if allow_nan else "NaN or infinite"
        raise StatsInputError(
            f"{name}: {idx.size} {what} value(s), first at position {int(idx[0])}; "
            "drop those participants or fill the values before calling"
        )
    return arr


def as_labels(name: str, x) -> np.ndarray:
    """Return ``x`` as a 1-D array of strings, refusing missing labels.

    Parameters
    ----------
    name : str
        The argument's name, used in the error message.
    x : array-like
        Labels (site, batch or group names; numbers are converted to strings).

    Returns
    -------
    numpy.ndarray of str, shape (n,)

    Raises
    ------
    StatsInputError
        If ``x`` is not one-dimensional or holds missing values.

    Examples
    --------
    >>> as_labels("site", ["a", 1]).tolist()
    ['a', '1']
    """
    arr = np.asarray(x, dtype=object)
    if arr.ndim != 1:
        raise StatsInputError(f"{name}: expected a one-dimensional array, got shape {arr.shape}")
    missing = np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in arr], dtype=bool)
    if missing.any():
        raise StatsInputError(
            f"{name}: {int(missing.sum())} missing label(s), first at position "
            f"{int(np.flatnonzero(missing)[0])}; every participant needs one"
        )
    return np.array([str(v) for v in arr], dtype=object)


def check_same_length(**arrays) -> int:
    """Check that every array has the same length and return it.

    Parameters
    ----------
    **arrays
        ``name=array`` pairs; ``None`` values are skipped.

    Returns
    -------
    int
        The common length.

    Raises
    ------
    StatsInputError
        Naming the arguments and their lengths when they differ.

    Examples
    --------
    >>> check_same_length(age=[1, 2], predicted_age=[3, 4])
    2
    """
    lengths = {k: len(v) for k, v in arrays.items() if v is not None}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise StatsInputError(f"length mismatch: {listed}; pass one value per participant to each")
    return next(iter(lengths.values()))
