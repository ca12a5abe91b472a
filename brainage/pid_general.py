"""The general Gaussian PID (~G-PID) of a vector target, solved iteratively.

For a target ``y`` of any dimension and two Gaussian sources, the union
information ``I_union = min over Q of I_Q(y; Z1, Z2)`` (Venkatesh et al., NeurIPS
2023) has no closed form: this module minimises it by projected gradient descent
over the cross-covariance of the two sources' noises. For a scalar target it
agrees with the closed form of :mod:`brainage.pid` (the tests check it), which is
why it serves as the cross-check of that closed form and as the baseline of
``bench/bench_pid.py``. Pure numpy/scipy, in bits.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import linalg

from .pid import _LN2, _SINGULAR_RTOL, PIDResult, _check_cov, _cholesky_checked, _correlation

__all__ = ["gaussian_pid_general"]

logger = logging.getLogger(__name__)


def _inv_sqrt_psd(a: np.ndarray, what: str) -> np.ndarray:
    w, v = np.linalg.eigh(0.5 * (a + a.T))
    if w[0] <= _SINGULAR_RTOL * max(w[-1], 1e-300):
        raise ValueError(
            f"singular covariance: {what} has smallest eigenvalue {w[0]:.3g} "
            f"(largest {w[-1]:.3g}). Remove redundant columns or use more samples."
        )
    return (v / np.sqrt(w)) @ v.T


def _whitened_channels(cov: np.ndarray, dy: int, d1: int, d2: int):
    """Return H1, H2 and the noise cross-covariance of P in whitened coordinates."""
    iy = slice(0, dy)
    i1 = slice(dy, dy + d1)
    i2 = slice(dy + d1, dy + d1 + d2)
    syy = cov[iy, iy]
    wy = _inv_sqrt_psd(syy, "the covariance of y")
    syy_inv = wy @ wy
    h = []
    for sl, name in ((i1, "z1"), (i2, "z2")):
        s_zy = cov[sl, iy]
        s_zz = cov[sl, sl]
        noise = s_zz - s_zy @ syy_inv @ s_zy.T
        wn = _inv_sqrt_psd(noise, f"the noise covariance of {name} given y")
        # Z = A y + N with A = S_zy S_yy^-1; in whitened y (y = S_yy^1/2 y_w):
        h.append(wn @ s_zy @ wy)
    return h[0], h[1]


def _union_objective(sig: np.ndarray, h1: np.ndarray, h2: np.ndarray):
    """Value (nats) and gradient of I_Q(y; Z1, Z2) as a function of Sigma."""
    d1 = h1.shape[0]
    dy = h1.shape[1]
    s = np.eye(d1) - sig @ sig.T
    b = h1 - sig @ h2
    cs = linalg.cho_factor(s, lower=True, check_finite=False)
    p = linalg.cho_solve(cs, b, check_finite=False)  # S^-1 B
    a = np.eye(dy) + h2.T @ h2 + b.T @ p
    ca = linalg.cho_factor(a, lower=True, check_finite=False)
    val = float(np.sum(np.log(np.diag(ca[0]))))  # 1/2 log det A
    g = linalg.cho_solve(ca, np.eye(dy), check_finite=False)  # A^-1
    grad = p @ g @ (p.T @ sig - h2.T)
    return val, grad


def _project_spectral(sig: np.ndarray, max_norm: float) -> np.ndarray:
    u, s, vt = np.linalg.svd(sig, full_matrices=False)
    if s.size and s[0] > max_norm:
        s = np.minimum(s, max_norm)
        return (u * s) @ vt
    return sig


def gaussian_pid_general(
    cov,
    dy: int,
    d1: int,
    d2: int,
    *,
    tol: float = 1e-10,
    max_iter: int = 10_000,
) -> PIDResult:
    """General Gaussian BROJA PID (~G-PID) by projected gradient descent.

    The union information
    ``I_union = min_Q I_Q(y; Z1, Z2)`` over Gaussian ``Q`` that keep the
    pairwise marginals ``P(y, Z1)`` and ``P(y, Z2)`` gives
    ``U1 = I_union - I2``, ``U2 = I_union - I1``, ``R = I1 + I2 - I_union`` and
    ``S = I12 - I_union`` (Venkatesh et al., NeurIPS 2023). After whitening,
    ``y ~ N(0, I)``, ``Z1 = H1 y + N1`` and ``Z2 = H2 y + N2`` with
    ``Cov(N1) = Cov(N2) = I``, the only free variable of ``Q`` is the noise
    cross-covariance ``Sigma`` (``d1 x d2``, spectral norm at most 1), and
    ``I_Q = 1/2 log det(I + H2^T H2 + B^T S^-1 B)`` with ``S = I - Sigma Sigma^T``
    and ``B = H1 - Sigma H2``. This function minimises ``I_Q`` by projected
    gradient descent (analytic gradient, backtracking line search, projection
    of the singular values of ``Sigma`` onto ``[0, 1 - 1e-9]``).

    It handles vector targets; for a scalar target it agrees with the closed
    form of :func:`brainage.pid.gaussian_pid_from_cov` and is much slower, so it serves as
    a cross-check and a benchmark baseline. No bias correction is applied.

    Parameters
    ----------
    cov : array-like of shape (dy + d1 + d2, dy + d1 + d2)
        Covariance of ``[y, Z1, Z2]``.
    dy, d1, d2 : int
        Dimensions of the target and the two sources.
    tol : float, default=1e-10
        Stop when an iteration improves the objective by less than ``tol``
        bits and the projected-gradient step is below ``sqrt(tol)``.
    max_iter : int, default=10000
        Maximum number of gradient steps; a warning is logged when reached.

    Returns
    -------
    PIDResult
        Atoms and mutual informations in bits.

    Raises
    ------
    ValueError
        If the covariance has the wrong shape, is not finite and symmetric, or
        is singular.

    Examples
    --------
    >>> cov = [[1.0, 1.0, 1.0], [1.0, 2.0, 1.0], [1.0, 1.0, 2.0]]
    >>> res = gaussian_pid_general(cov, 1, 1, 1)
    >>> round(res.R, 4), round(res.S, 4)
    (0.5, 0.2925)
    """
    dy, d1, d2 = int(dy), int(d1), int(d2)
    arr = _check_cov(cov, d1, d2, dy)
    # Scale-invariant: work on the correlation matrix (also checks definiteness).
    corr = _correlation(arr)
    _cholesky_checked(corr)
    h1, h2 = _whitened_channels(corr, dy, d1, d2)
    eye_y = np.eye(dy)

    def half_logdet(m: np.ndarray) -> float:
        return 0.5 * float(np.linalg.slogdet(m)[1])

    i1 = half_logdet(eye_y + h1.T @ h1) / _LN2
    i2 = half_logdet(eye_y + h2.T @ h2) / _LN2
    # I12 under P: the true noise cross-covariance enters; compute directly.
    iy = slice(0, dy)
    iz = slice(dy, dy + d1 + d2)
    czz = corr[iz, iz]
    cyz = corr[iy, iz]
    cond = corr[iy, iy] - cyz @ np.linalg.solve(czz, cyz.T)
    i12 = (half_logdet(corr[iy, iy]) - half_logdet(cond)) / _LN2

    max_norm = 1.0 - 1e-9
    sig = np.zeros((d1, d2))
    val, grad = _union_objective(sig, h1, h2)
    step = 1.0
    tol_nats = float(tol) * _LN2
    converged = False
    for _ in range(int(max_iter)):
        while True:
            cand = _project_spectral(sig - step * grad, max_norm)
            try:
                cval, cgrad = _union_objective(cand, h1, h2)
            except (np.linalg.LinAlgError, linalg.LinAlgError):
                cval = math.inf
            diff = cand - sig
            # Armijo condition for projected gradient steps.
            if cval <= val + np.sum(grad * diff) + np.sum(diff * diff) / (2.0 * step):
                break
            step *= 0.5
            if step < 1e-20:
                cand, cval, cgrad = sig, val, grad
                break
        improvement = val - cval
        move = float(np.sqrt(np.sum((cand - sig) ** 2)))
        sig, val, grad = cand, cval, cgrad
        if improvement < tol_nats and move / max(step, 1e-300) < math.sqrt(float(tol)):
            converged = True
            break
        step *= 2.0
    if not converged:
        logger.warning(
            "gaussian_pid_general: no convergence in %d iterations (last step %.3g); "
            "the atoms may be off by more than tol.",
            max_iter,
            step,
        )
    union = val / _LN2
    return PIDResult(
        U1=union - i2,
        U2=union - i1,
        R=i1 + i2 - union,
        S=i12 - union,
        I1=i1,
        I2=i2,
        I12=i12,
    )
