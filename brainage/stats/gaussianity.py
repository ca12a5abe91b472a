"""How Gaussian a sample of latent vectors is: :func:`latent_gaussianity`.

The closed-form PID (:mod:`brainage.pid`) is exact only for jointly Gaussian
variables; applied to the latents of a fitted model (``PIDRegressor.gaussianity_``),
these numbers say how far from that the latents are.
"""

from __future__ import annotations

import numpy as np

__all__ = ["latent_gaussianity"]


def latent_gaussianity(latent: np.ndarray, *, max_samples: int = 5000, seed: int = 0) -> dict:
    """Measure how Gaussian a sample of latent vectors is.

    Parameters
    ----------
    latent : numpy.ndarray
        Shape (n, d).
    max_samples : int
        Subsample size (Shapiro–Wilk is defined up to 5000 samples).
    seed : int
        Seed of the subsample.

    Returns
    -------
    dict
        ``shapiro_w_mean`` / ``shapiro_w_min``: Shapiro–Wilk W over the latent
        units (1 for perfectly Gaussian marginals); ``mardia_kurtosis_ratio``:
        Mardia's multivariate kurtosis divided by its Gaussian value d(d + 2)
        (1 for a Gaussian; > 1 heavy tails, < 1 light tails); ``n``.
        The closed-form PID is exact only for jointly Gaussian latents; these
        numbers say how far from that the fitted latents are, not how wrong the
        atoms are.
    """
    from scipy import stats

    x = np.asarray(latent, dtype=float)
    if x.ndim != 2 or x.shape[0] < 3:
        raise ValueError(f"latent_gaussianity needs an (n ≥ 3, d) array, got {x.shape}.")
    rng = np.random.default_rng(seed)
    if x.shape[0] > max_samples:
        x = x[rng.choice(x.shape[0], max_samples, replace=False)]
    ws = [float(stats.shapiro(col).statistic) for col in x.T if np.std(col) > 0]
    xc = x - x.mean(0)
    cov = np.cov(xc, rowvar=False).reshape(x.shape[1], x.shape[1])
    inv = np.linalg.pinv(cov)
    d2 = np.einsum("ij,jk,ik->i", xc, inv, xc)
    d = x.shape[1]
    return {
        "shapiro_w_mean": float(np.mean(ws)) if ws else float("nan"),
        "shapiro_w_min": float(np.min(ws)) if ws else float("nan"),
        "mardia_kurtosis_ratio": float(np.mean(d2**2) / (d * (d + 2))),
        "n": int(x.shape[0]),
    }
