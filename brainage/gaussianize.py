"""The rank-based inverse normal transform that Gaussianizes a target before a Gaussian PID.

Pure numerics (numpy, scipy), below :mod:`brainage.pid`, which re-exports it.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["inverse_normal_transform"]


def inverse_normal_transform(y) -> np.ndarray:
    """Rank-based inverse normal transform of a 1-D sample.

    Returns ``Phi^-1((rank + 0.5) / (n + 1))`` with ``rank`` the zero-based
    rank of each value (ties get their average rank), as in the PIDReg method.
    The result is monotone in ``y`` and close to standard normal for large
    ``n``. The grid of probabilities is not symmetric about 0.5 (it is shifted
    down by ``0.5 / (n + 1)``), so for small ``n`` the values are visibly
    skewed (see the example); at a batch of 256 the shift is 0.002 in
    probability and negligible for the PID.

    Parameters
    ----------
    y : array-like of shape (n,) or (n, 1)
        Finite values.

    Returns
    -------
    numpy.ndarray of shape (n,)
        The transformed values.

    Raises
    ------
    ValueError
        If ``y`` is not 1-D (or a single column), has fewer than 2 values, or
        contains non-finite values.

    Examples
    --------
    >>> inverse_normal_transform([3.0, 1.0, 2.0]).round(3)
    array([ 0.319, -1.15 , -0.319])
    """
    arr = np.asarray(y, dtype=float)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(
            f"inverse_normal_transform: expected a 1-D array (n,) or (n, 1), got shape {arr.shape}."
        )
    if arr.size < 2:
        raise ValueError(f"inverse_normal_transform: need at least 2 values, got {arr.size}.")
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(
            f"inverse_normal_transform: y contains {bad} non-finite value(s) (NaN or inf); "
            "drop or impute them first."
        )
    n = arr.size
    rank0 = stats.rankdata(arr, method="average") - 1.0
    return stats.norm.ppf((rank0 + 0.5) / (n + 1.0))
