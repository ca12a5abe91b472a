"""Gaussian partial information decomposition (PID).

For a target ``y`` and two sources ``Z1`` and ``Z2`` that are jointly Gaussian,
the mutual information the sources carry about the target splits into four
atoms (Williams & Beer 2010), non-negative in the population:

* ``U1``: unique to ``Z1``;  ``U2``: unique to ``Z2``;
* ``R``: redundant (carried by either source alone);
* ``S``: synergistic (only available from both sources together);

with ``U1 + R = I(y; Z1)``, ``U2 + R = I(y; Z2)`` and
``U1 + U2 + R + S = I(y; Z1, Z2)``.

For a **scalar** target the Gaussian BROJA PID (~G-PID, Venkatesh et al.,
NeurIPS 2023) equals the minimum-mutual-information PID (Barrett 2015,
Phys. Rev. E 91:052802), which has a closed form::

    R = min(I1, I2),  U1 = I1 - R,  U2 = I2 - R,  S = I12 - max(I1, I2)

:func:`gaussian_pid` and :func:`gaussian_pid_from_cov` compute it, with the
finite-sample bias correction of Cai et al. (J. Multivariate Anal. 2015) and
bootstrap confidence intervals. The bias-corrected estimates are not clipped: a
unique or synergistic atom near zero can come out slightly negative on a finite
sample (``docs/pid.md``), which says "indistinguishable from zero", not "less than
none". :func:`brainage.pid_general.gaussian_pid_general` solves the general ~G-PID
(vector targets) iteratively; it is the cross-check of the closed form and the
baseline of ``bench/bench_pid.py``.

Everything is reported in bits (log base 2). This module is pure numpy/scipy:
it must not import torch or imaging libraries (an import-linter contract
checks it); the differentiable version lives in
:mod:`brainage.models.pid_torch`.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg

from .gaussianize import inverse_normal_transform

logger = logging.getLogger(__name__)

__all__ = [
    "ATOMS",
    "PIDResult",
    "gaussian_pid",
    "gaussian_pid_from_cov",
    "inverse_normal_transform",
    "mi_bias_bits",
]

#: Names of the four PID atoms, in the order used everywhere in brainage.
ATOMS = ("U1", "U2", "R", "S")
#: Names of the three mutual informations the atoms are built from.
MIS = ("I1", "I2", "I12")

_LN2 = math.log(2.0)
# Smallest eigenvalue of the correlation matrix of [y, Z1, Z2], relative to the
# largest, below which the covariance is treated as singular.
_SINGULAR_RTOL = 1e-12


@dataclass(frozen=True)
class PIDResult:
    """Result of a Gaussian PID, in bits.

    Attributes
    ----------
    U1, U2, R, S : float
        The four atoms: unique information of source 1 and 2, redundancy,
        synergy.
    I1, I2, I12 : float
        ``I(y; Z1)``, ``I(y; Z2)``, ``I(y; Z1, Z2)`` (bias-corrected when
        ``bias_corrected`` is true).
    ci : dict or None
        Bootstrap confidence interval per atom and mutual information
        (``name -> (lo, hi)``), or None when no bootstrap was run.
    n : int or None
        Number of samples the estimate comes from (None for a population
        covariance).
    bias_corrected : bool
        Whether the Cai et al. (2015) bias correction was applied.
    bias : dict or None
        The bias subtracted from ``I1``, ``I2`` and ``I12`` (bits), or None.
    """

    U1: float
    U2: float
    R: float
    S: float
    I1: float
    I2: float
    I12: float
    ci: dict | None = field(default=None, compare=False)
    n: int | None = None
    bias_corrected: bool = False
    bias: dict | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, float]:
        """Return the atoms and mutual informations as a plain dictionary.

        Returns
        -------
        dict
            ``{"U1", "U2", "R", "S", "I1", "I2", "I12"} -> float`` (bits).
        """
        return {name: float(getattr(self, name)) for name in (*ATOMS, *MIS)}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def mi_bias_bits(d_u: int, d_v: int, n: int) -> float:
    """Finite-sample bias of the Gaussian (log-det) mutual-information estimate.

    Cai, Liang & Zhou (J. Multivariate Anal. 2015) give the bias of the
    log-determinant of a sample covariance of dimension ``d`` from ``n``
    samples as ``b(d, n) = (1 / (2 ln 2)) * sum_{k=1..d} ln(1 - k / n)`` bits.
    The plug-in estimate of
    ``I(U; V) = 1/2 (log det S_U + log det S_V - log det S_UV)`` is then biased
    upward by ``b(d_u, n) + b(d_v, n) - b(d_u + d_v, n)``.

    Parameters
    ----------
    d_u, d_v : int
        Dimensions of ``U`` and ``V``.
    n : int
        Number of samples.

    Returns
    -------
    float
        The (positive) bias in bits, to subtract from the plug-in estimate.

    Raises
    ------
    ValueError
        If the dimensions are not positive or ``n <= d_u + d_v``.

    Examples
    --------
    >>> round(mi_bias_bits(1, 64, 256), 2)
    0.21
    """
    d_u, d_v, n = int(d_u), int(d_v), int(n)
    if d_u < 1 or d_v < 1:
        raise ValueError(f"mi_bias_bits: dimensions must be >= 1, got d_u={d_u}, d_v={d_v}.")
    if n <= d_u + d_v:
        raise ValueError(
            f"mi_bias_bits: need more samples than dimensions (n > d_u + d_v = {d_u + d_v}), "
            f"got n={n}. Use a larger batch or fewer latent dimensions."
        )

    def b(d: int) -> float:
        k = np.arange(1, d + 1, dtype=float)
        return float(np.sum(np.log1p(-k / n)) / (2.0 * _LN2))

    return b(d_u) + b(d_v) - b(d_u + d_v)


_SINGULAR_MSG = (
    "singular covariance: some columns of [y, z1, z2] are (nearly) linear combinations "
    "of others (e.g. duplicated or collapsed latent dimensions, or y predicted exactly). "
    "Remove redundant columns or use more samples."
)


def _as_2d(name: str, x, n_expected: int | None = None) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected an array of shape (n,) or (n, d), got shape {arr.shape}.")
    if n_expected is not None and arr.shape[0] != n_expected:
        raise ValueError(
            f"{name}: expected {n_expected} rows (one per sample, as in y), got {arr.shape[0]}. "
            "y, z1 and z2 must hold the same samples in the same order."
        )
    if arr.shape[1] < 1:
        raise ValueError(f"{name}: expected at least one column, got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(
            f"{name} contains {bad} non-finite value(s) (NaN or inf); drop or impute them first."
        )
    return arr


def _validate_samples(y, z1, z2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y_arr = np.asarray(y, dtype=float)
    if not (y_arr.ndim == 1 or (y_arr.ndim == 2 and y_arr.shape[1] == 1)):
        raise ValueError(
            f"y: expected a scalar target of shape (n,) or (n, 1), got shape {y_arr.shape}. "
            "For a vector target use gaussian_pid_general on the covariance."
        )
    y2 = _as_2d("y", y_arr)
    n = y2.shape[0]
    z1a = _as_2d("z1", z1, n)
    z2a = _as_2d("z2", z2, n)
    d = 1 + z1a.shape[1] + z2a.shape[1]
    if n <= d:
        raise ValueError(
            f"too few samples for a Gaussian PID: n={n}, but the joint [y, z1, z2] has "
            f"{d} dimensions (1 + {z1a.shape[1]} + {z2a.shape[1]}) and needs n > {d} "
            "(better n >> d). Use a larger batch or fewer latent dimensions."
        )
    return y2, z1a, z2a


def _positive_variances(var: np.ndarray, what: str = "cov") -> np.ndarray:
    """Return the variances ``var`` (in [y, z1, z2] order), refusing zero or negative ones."""
    if not np.all(var > 0):
        idx = np.flatnonzero(~(var > 0)).tolist()
        raise ValueError(
            f"singular covariance: {what} has zero (or negative) variance at index/indices {idx} "
            "of [y, z1, z2]; remove constant columns."
        )
    return var


def _correlation(cov: np.ndarray, what: str = "cov") -> np.ndarray:
    """Normalise a covariance to a correlation matrix (checks for zero variances)."""
    var = _positive_variances(np.diag(cov), what)
    scale = 1.0 / np.sqrt(var)
    corr = cov * scale[:, None] * scale[None, :]
    return 0.5 * (corr + corr.T)


def _cholesky_checked(corr: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of a correlation matrix, refusing (nearly) singular ones.

    The squared diagonal of the factor holds the conditional variance of each
    variable given the ones before it (in correlation units); a value below
    ``_SINGULAR_RTOL`` means that variable is (nearly) a linear combination of
    the others.
    """
    try:
        chol = linalg.cholesky(corr, lower=True, check_finite=False)
    except linalg.LinAlgError as err:
        raise ValueError(_SINGULAR_MSG) from err
    cond_var = np.diag(chol) ** 2
    if cond_var.min() <= _SINGULAR_RTOL:
        raise ValueError(
            f"{_SINGULAR_MSG} (smallest conditional variance {cond_var.min():.3g} at index "
            f"{int(np.argmin(cond_var))} of the reordered matrix)"
        )
    return chol


_DPOTRF = linalg.lapack.dpotrf
_DSYRK = linalg.blas.dsyrk


def _mis_from_joint(m: np.ndarray, d1: int) -> tuple[float, float, float]:
    """Return I(y; Z1), I(y; Z2), I(y; Z1, Z2) in bits from ``M = Cov([Z1, Z2, y])``.

    The target comes **last**, and only the lower triangle of ``M`` is read;
    ``M`` (Fortran order) is overwritten. With ``L`` the Cholesky factor of
    ``M`` and ``d = d1 + d2``:

    * ``L[d, d]**2 = Var(y | Z1, Z2)``;
    * the leading ``d1`` block of ``L`` is the factor of ``Cov(Z1)``, so
      ``Var(y | Z1) = L[d, d]**2 + sum(L[d, d1:d]**2)``;
    * the trailing block ``M[d1:, d1:] = Cov([Z2, y])`` gives ``Var(y | Z2)``
      the same way (its own factor, the only other factorisation).

    ``I(y; Z) = -1/2 log2(Var(y | Z) / Var(y))``: ratios of variances, so the
    covariance needs no normalisation (``n - 1`` times it gives the same
    numbers). One factorisation of size ``d + 1`` and one of ``d2 + 1``, no
    triangular solves, no subtraction of nearly equal numbers.

    Refuses a (nearly) singular ``Cov(Z)``: a conditional variance below
    ``_SINGULAR_RTOL`` times the variable's own variance.
    """
    d = m.shape[0] - 1
    var_y = float(m[d, d])
    var = m.diagonal().copy()  # overwritten by the in-place factorisation
    chol2, info2 = _DPOTRF(m[d1:, d1:], lower=1, clean=0)  # copies the block
    chol, info = _DPOTRF(m, lower=1, clean=0, overwrite_a=1)
    if info == d + 1 and info2 in (0, d - d1 + 1):  # only the last pivot, y's, failed
        raise ValueError(f"{_SINGULAR_MSG} (y is a linear function of z1 and z2)")
    if info != 0 or info2 != 0:
        raise ValueError(f"{_SINGULAR_MSG} (no Cholesky factor: pivot {max(info, info2)})")
    diag = chol.diagonal()
    cond = diag[:d] ** 2 / var[:d]
    if cond.min() <= _SINGULAR_RTOL:
        raise ValueError(
            f"{_SINGULAR_MSG} (smallest relative conditional variance {cond.min():.3g} at "
            f"index {int(np.argmin(cond))} of [z1, z2])"
        )
    last = chol[d, d1:d]
    resid12 = float(diag[d]) ** 2 / var_y
    if resid12 <= _SINGULAR_RTOL:
        raise ValueError(f"{_SINGULAR_MSG} (y is a linear function of z1 and z2)")
    resid = (
        resid12 + float(np.dot(last, last)) / var_y,
        float(chol2[-1, -1]) ** 2 / var_y,
        resid12,
    )
    return tuple(-0.5 * math.log(r) / _LN2 for r in resid)  # type: ignore[return-value]


def _joint_target_last(cov: np.ndarray) -> np.ndarray:
    """Reorder a symmetric ``Cov([y, Z])`` into ``Cov([Z, y])``, in Fortran order."""
    d = cov.shape[0] - 1
    m = np.empty((d + 1, d + 1), order="F")
    mt = m.T  # C-order view; the matrix is symmetric, so filling it row-wise is exact
    mt[:d, :d] = cov[1:, 1:]
    mt[:d, d] = cov[1:, 0]
    mt[d, :d] = cov[0, 1:]
    mt[d, d] = cov[0, 0]
    return m


def _atoms_mmi(i1: float, i2: float, i12: float) -> dict[str, float]:
    r = min(i1, i2)
    return {
        "U1": i1 - r,
        "U2": i2 - r,
        "R": r,
        "S": i12 - max(i1, i2),
        "I1": i1,
        "I2": i2,
        "I12": i12,
    }


def _bias_terms(n: int, d1: int, d2: int) -> dict[str, float]:
    return {
        "I1": mi_bias_bits(1, d1, n),
        "I2": mi_bias_bits(1, d2, n),
        "I12": mi_bias_bits(1, d1 + d2, n),
    }


def _corrected_mis(
    mis: tuple[float, float, float], bias: dict[str, float] | None
) -> tuple[float, float, float]:
    if bias is None:
        return mis
    return tuple(max(v - bias[k], 0.0) for v, k in zip(mis, MIS))  # type: ignore[return-value]


def _check_cov(cov, d1: int, d2: int, dy: int = 1, *, symmetrize: bool = True) -> np.ndarray:
    arr = np.asarray(cov, dtype=float)
    d1, d2, dy = int(d1), int(d2), int(dy)
    if d1 < 1 or d2 < 1 or dy < 1:
        raise ValueError(f"dimensions must be >= 1, got dy={dy}, d1={d1}, d2={d2}.")
    d = dy + d1 + d2
    if arr.shape != (d, d):
        raise ValueError(
            f"cov: expected the ({d}, {d}) covariance of [y, z1, z2] "
            f"(dy={dy}, d1={d1}, d2={d2}), got shape {arr.shape}."
        )
    # One check for both: arr - arr.T is antisymmetric, so its maximum is its
    # largest absolute entry, and it is NaN or inf when any entry is (inf - inf and
    # NaN - NaN are NaN on the diagonal). numpy copies the transpose in cache-friendly
    # blocks, after which the subtraction reads both operands contiguously: 13 us
    # instead of 19 us for ``(arr - arr.T).max()`` at 129 x 129.
    diff = arr.T.copy()
    with np.errstate(invalid="ignore"):
        asym = float(np.subtract(arr, diff, out=diff).max())
    if not math.isfinite(asym):
        raise ValueError("cov contains non-finite values (NaN or inf).")
    diag = arr.diagonal()
    if not diag.min() > 0:
        _positive_variances(diag)  # raises, naming the zero-variance indices
    # For a covariance every |entry| is at most the largest variance (Cauchy-Schwarz).
    scale = float(diag.max())
    if asym > 1e-8 * scale + 1e-12 * max(1.0, scale):
        raise ValueError("cov: expected a symmetric matrix; pass the covariance of [y, z1, z2].")
    return 0.5 * (arr + arr.T) if symmetrize else arr


# --------------------------------------------------------------------------
# closed form (scalar target)
# --------------------------------------------------------------------------


def gaussian_pid_from_cov(cov, d1: int, d2: int, *, n: int | None = None) -> PIDResult:
    """Closed-form Gaussian PID of a scalar target from a covariance matrix.

    Parameters
    ----------
    cov : array-like of shape (1 + d1 + d2, 1 + d1 + d2)
        Covariance of ``[y, Z1, Z2]`` with the scalar target first.
    d1, d2 : int
        Dimensions of the two sources.
    n : int, optional
        Number of samples the covariance was estimated from. When given, the
        Cai et al. (2015) bias correction is applied (see :func:`gaussian_pid`);
        when omitted the covariance is treated as exact.

    Returns
    -------
    PIDResult
        Atoms and mutual informations in bits.

    Raises
    ------
    ValueError
        If the shape does not match ``d1`` and ``d2``, the matrix is not
        symmetric and finite, or it is singular.

    Examples
    --------
    Redundancy plus synergy: ``Z1 = y + N1``, ``Z2 = y + N2``, independent
    unit noises (``rho = 0``):

    >>> cov = [[1.0, 1.0, 1.0], [1.0, 2.0, 1.0], [1.0, 1.0, 2.0]]
    >>> res = gaussian_pid_from_cov(cov, 1, 1)
    >>> round(res.R, 6), round(res.S, 6)
    (0.5, 0.292481)
    """
    arr = _check_cov(cov, d1, d2, symmetrize=False)  # checked symmetric: one triangle is read
    mis = _mis_from_joint(_joint_target_last(arr), int(d1))
    bias = None
    if n is not None:
        if int(n) <= 1 + int(d1) + int(d2):
            raise ValueError(
                f"too few samples for a Gaussian PID: n={n}, need n > 1 + d1 + d2 = {1 + int(d1) + int(d2)}."
            )
        bias = _bias_terms(int(n), int(d1), int(d2))
    i1, i2, i12 = _corrected_mis(mis, bias)
    return PIDResult(
        **_atoms_mmi(i1, i2, i12),
        n=None if n is None else int(n),
        bias_corrected=bias is not None,
        bias=bias,
    )


def _pid_samples(y2, z1a, z2a, bias_correction: bool) -> dict[str, float]:
    n, d1, d2 = y2.shape[0], z1a.shape[1], z2a.shape[1]
    d = d1 + d2
    # [Z1, Z2, y] in Fortran order: columns contiguous for the centring and for BLAS.
    data = np.empty((n, d + 1), order="F")
    data[:, :d1], data[:, d1:d], data[:, d:] = z1a, z2a, y2
    data -= data.mean(axis=0)
    # Lower triangle of n - 1 times Cov([Z1, Z2, y]) (the factor cancels in every ratio).
    m = _DSYRK(1.0, data, trans=1, lower=1)
    var = m.diagonal()
    if not var.min() > 0:  # name the indices in [y, z1, z2] order
        _positive_variances(np.r_[var[d], var[:d]], "the sample covariance")
    mis = _mis_from_joint(m, d1)
    bias = _bias_terms(n, d1, d2) if bias_correction else None
    return _atoms_mmi(*_corrected_mis(mis, bias))


def gaussian_pid(
    y,
    z1,
    z2,
    *,
    bias_correction: bool = True,
    n_boot: int = 0,
    ci: float = 0.95,
    random_state=None,
) -> PIDResult:
    """Gaussian PID of a scalar target and two multivariate sources from samples.

    The joint ``[y, z1, z2]`` is treated as Gaussian; the sample covariance
    gives ``I1 = I(y; Z1)``, ``I2 = I(y; Z2)`` and ``I12 = I(y; Z1, Z2)``, and
    the atoms follow the closed form of the module docstring.

    Bias correction (default): the plug-in log-det estimates are biased upward
    (by about 0.21 bits for ``I(y; Z1)`` and 0.50 bits for ``I(y; Z1, Z2)`` at
    ``d1 = d2 = 64`` and ``n = 256``). The bias of each mutual information
    (:func:`mi_bias_bits`) is subtracted from ``I1``, ``I2`` and ``I12``,
    each is clipped at 0, and the atoms are then formed from the corrected
    mutual informations, so that the identities ``U1 + R = I1``,
    ``U2 + R = I2`` and ``U1 + U2 + R + S = I12`` still hold exactly. After
    the correction ``S`` can come out slightly negative when the true synergy
    is near zero; it is not clipped, so that averages over batches stay
    unbiased.

    Parameters
    ----------
    y : array-like of shape (n,) or (n, 1)
        Scalar target (e.g. the inverse-normal-transformed age).
    z1 : array-like of shape (n,) or (n, d1)
        Source 1.
    z2 : array-like of shape (n,) or (n, d2)
        Source 2.
    bias_correction : bool, default=True
        Subtract the Cai et al. (2015) finite-sample bias.
    n_boot : int, default=0
        Number of bootstrap resamples (rows drawn with replacement) for
        percentile confidence intervals; 0 for none. Resamples whose covariance
        is singular are skipped (and counted in a log message). Resampling
        duplicates rows, which inflates log-det estimates a little further, so
        the intervals describe sampling variability and are approximate.
    ci : float, default=0.95
        Coverage of the confidence intervals.
    random_state : int, numpy.random.Generator or None
        Seed for the bootstrap.

    Returns
    -------
    PIDResult
        Atoms and mutual informations in bits, with ``ci`` filled when
        ``n_boot > 0``.

    Raises
    ------
    ValueError
        On shape mismatches, non-finite values, too few samples
        (``n <= 1 + d1 + d2``), a singular covariance, or bad ``n_boot``/``ci``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = rng.standard_normal(5000)
    >>> z1 = y + rng.standard_normal(5000)   # I(y; Z1) = 0.5 bit
    >>> z2 = rng.standard_normal(5000)       # no information about y
    >>> res = gaussian_pid(y, z1, z2)
    >>> abs(res.U1 - 0.5) < 0.05 and abs(res.R) < 0.01
    True
    """
    y2, z1a, z2a = _validate_samples(y, z1, z2)
    if int(n_boot) < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}.")
    if not 0.0 < float(ci) < 1.0:
        raise ValueError(f"ci must be in (0, 1), e.g. 0.95, got {ci}.")
    n = y2.shape[0]
    d1, d2 = z1a.shape[1], z2a.shape[1]
    point = _pid_samples(y2, z1a, z2a, bias_correction)
    intervals = None
    if int(n_boot) > 0:
        rng = np.random.default_rng(random_state)
        draws = []
        skipped = 0
        for _ in range(int(n_boot)):
            idx = rng.integers(0, n, size=n)
            try:
                draws.append(_pid_samples(y2[idx], z1a[idx], z2a[idx], bias_correction))
            except (ValueError, linalg.LinAlgError):
                skipped += 1
        if skipped:
            logger.info("gaussian_pid: skipped %d of %d singular bootstrap resamples", skipped, int(n_boot))
        if len(draws) < max(2, int(n_boot) // 2):
            raise ValueError(
                f"bootstrap failed: {skipped} of {n_boot} resamples had a singular covariance "
                f"(n={n}, dimensions 1 + {d1} + {d2}). Use more samples or fewer dimensions."
            )
        alpha = (1.0 - float(ci)) / 2.0
        intervals = {}
        for name in (*ATOMS, *MIS):
            vals = np.array([dr[name] for dr in draws])
            lo, hi = np.quantile(vals, [alpha, 1.0 - alpha])
            intervals[name] = (float(lo), float(hi))
    return PIDResult(
        **point,
        ci=intervals,
        n=n,
        bias_corrected=bool(bias_correction),
        bias=_bias_terms(n, d1, d2) if bias_correction else None,
    )
