"""Differentiable Gaussian PID in torch.

The same closed form as :mod:`brainage.pid` (minimum-mutual-information PID,
which equals the Gaussian BROJA PID for a scalar target), written with torch
operations so that it runs on the device of the latent batch, under autocast,
and can be differentiated. Results are in bits.

Numerics: inputs are cast to float64 and autocast is disabled inside, so the
result does not depend on the precision of the surrounding computation
(bf16/fp16 autocast is fine). The sample covariance of ``[y, z1, z2]`` is
normalised to a correlation matrix (the PID is invariant to the scale of each
dimension) and a ridge ``eps`` is added to its diagonal, i.e. ``eps`` times
the mean variance of the standardised variables. This keeps the Cholesky
factorisation defined when a batch is nearly singular (e.g. a collapsed
latent dimension) while changing the mutual informations by less than
``1e-5`` bits on well-conditioned batches at the default ``eps = 1e-8`` (a
ridge of ``1e-6`` already shifts them by about ``2e-5`` bits at
``d1 = d2 = 64`` and 2 bits of information, which is why the default is
smaller). Pass a larger ``eps`` for batches that are rank-deficient.
"""

from __future__ import annotations

import math

import torch

from brainage.pid import mi_bias_bits

__all__ = ["PID_KEYS", "gaussian_pid_torch", "gaussian_pid_torch_from_cov"]

#: Keys of the dictionaries returned here.
PID_KEYS = ("U1", "U2", "R", "S", "I1", "I2", "I12")

_LN2 = math.log(2.0)


def _mi_bits(corr: torch.Tensor, idx: slice) -> torch.Tensor:
    """I(y; Z_idx) in bits from a (ridged) correlation matrix with y at index 0."""
    czz = corr[idx, idx]
    r = corr[idx, 0:1]
    chol, info = torch.linalg.cholesky_ex(czz)
    if int(info) != 0:
        raise ValueError(
            "singular covariance: the latent covariance is not positive definite even with "
            "the ridge; increase eps, use a larger batch, or check for NaN latents."
        )
    sol = torch.cholesky_solve(r, chol)
    r2 = (r * sol).sum()
    resid = corr[0, 0] - r2
    # The ridge keeps resid > 0 in exact arithmetic; guard against round-off.
    resid = torch.clamp(resid, min=1e-12 * corr[0, 0].detach())
    return 0.5 * (torch.log(corr[0, 0]) - torch.log(resid)) / _LN2


def _atoms(i1: torch.Tensor, i2: torch.Tensor, i12: torch.Tensor) -> dict[str, torch.Tensor]:
    r = torch.minimum(i1, i2)
    return {
        "U1": i1 - r,
        "U2": i2 - r,
        "R": r,
        "S": i12 - torch.maximum(i1, i2),
        "I1": i1,
        "I2": i2,
        "I12": i12,
    }


def _pid_from_corr(corr: torch.Tensor, d1: int, d2: int, n: int | None) -> dict[str, torch.Tensor]:
    i1 = _mi_bits(corr, slice(1, 1 + d1))
    i2 = _mi_bits(corr, slice(1 + d1, 1 + d1 + d2))
    i12 = _mi_bits(corr, slice(1, 1 + d1 + d2))
    if n is not None:
        i1 = torch.clamp(i1 - mi_bias_bits(1, d1, n), min=0.0)
        i2 = torch.clamp(i2 - mi_bias_bits(1, d2, n), min=0.0)
        i12 = torch.clamp(i12 - mi_bias_bits(1, d1 + d2, n), min=0.0)
    return _atoms(i1, i2, i12)


def _standardise_cov(cov: torch.Tensor, eps: float) -> torch.Tensor:
    var = torch.diagonal(cov)
    if bool((var <= 0).any()):
        idx = torch.nonzero(var <= 0).flatten().tolist()
        raise ValueError(
            f"singular covariance: zero variance at index/indices {idx} of [y, z1, z2] "
            "(a constant target or latent dimension in this batch)."
        )
    scale = torch.rsqrt(var)
    corr = cov * scale[:, None] * scale[None, :]
    corr = 0.5 * (corr + corr.T)
    eye = torch.eye(corr.shape[0], dtype=corr.dtype, device=corr.device)
    return corr + eps * eye


def _check_2d(name: str, x: torch.Tensor, n: int | None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}.")
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"{name}: expected shape (n,) or (n, d), got {tuple(x.shape)}.")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name}: expected {n} rows (one per sample, as in y), got {x.shape[0]}.")
    return x


def gaussian_pid_torch(
    y: torch.Tensor,
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    bias_correction: bool = True,
    eps: float = 1e-8,
) -> dict[str, torch.Tensor]:
    """Differentiable Gaussian PID of a scalar target from a batch of samples.

    Same definition and bias correction as :func:`brainage.pid.gaussian_pid`:
    ``I1``, ``I2``, ``I12`` from the sample covariance, the Cai et al. (2015)
    bias subtracted and clipped at 0 when ``bias_correction`` is true, then
    ``R = min(I1, I2)``, ``U1 = I1 - R``, ``U2 = I2 - R``,
    ``S = I12 - max(I1, I2)``.

    Parameters
    ----------
    y : torch.Tensor of shape (n,) or (n, 1)
        Scalar target (e.g. inverse-normal-transformed age).
    z1 : torch.Tensor of shape (n, d1)
        Latent of modality 1.
    z2 : torch.Tensor of shape (n, d2)
        Latent of modality 2.
    bias_correction : bool, default=True
        Subtract the finite-sample bias of the log-det estimates.
    eps : float, default=1e-8
        Ridge added to the diagonal of the correlation matrix of
        ``[y, z1, z2]`` (relative to the unit variances).

    Returns
    -------
    dict of str to torch.Tensor
        Keys ``"U1", "U2", "R", "S", "I1", "I2", "I12"``; 0-dim float64
        tensors in bits, on the device of the inputs, differentiable with
        respect to the inputs.

    Raises
    ------
    ValueError
        On shape mismatches, non-finite values, too few samples
        (``n <= 1 + d1 + d2``) or a zero-variance column.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.randn(4000, generator=g)
    >>> z1 = (y[:, None] + torch.randn(4000, 2, generator=g)).requires_grad_()
    >>> z2 = torch.randn(4000, 3, generator=g)
    >>> out = gaussian_pid_torch(y, z1, z2)
    >>> sorted(out)
    ['I1', 'I12', 'I2', 'R', 'S', 'U1', 'U2']
    >>> out["U1"].backward()
    >>> bool(torch.isfinite(z1.grad).all())
    True
    """
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y: expected a torch.Tensor, got {type(y).__name__}.")
    if not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
        raise ValueError(f"y: expected a scalar target of shape (n,) or (n, 1), got {tuple(y.shape)}.")
    n = y.shape[0]
    y2 = _check_2d("y", y, n)
    z1 = _check_2d("z1", z1, n)
    z2 = _check_2d("z2", z2, n)
    d1, d2 = z1.shape[1], z2.shape[1]
    d = 1 + d1 + d2
    if n <= d:
        raise ValueError(
            f"too few samples for a Gaussian PID: batch of n={n}, but [y, z1, z2] has {d} "
            f"dimensions (1 + {d1} + {d2}) and needs n > {d}. Use a larger batch or fewer "
            "latent dimensions."
        )
    with torch.autocast(device_type=y.device.type, enabled=False):
        x = torch.cat([y2.to(torch.float64), z1.to(torch.float64), z2.to(torch.float64)], dim=1)
        if not bool(torch.isfinite(x).all()):
            raise ValueError(
                "y, z1 or z2 contains non-finite values (NaN or inf); check the encoder "
                "outputs (exploding activations) or the targets."
            )
        xc = x - x.mean(dim=0, keepdim=True)
        cov = xc.T @ xc / (n - 1)
        corr = _standardise_cov(cov, eps)
        return _pid_from_corr(corr, d1, d2, n if bias_correction else None)


def gaussian_pid_torch_from_cov(
    cov: torch.Tensor, d1: int, d2: int, *, n: int | None = None, eps: float = 0.0
) -> dict[str, torch.Tensor]:
    """Differentiable closed-form Gaussian PID from a covariance matrix.

    Parameters
    ----------
    cov : torch.Tensor of shape (1 + d1 + d2, 1 + d1 + d2)
        Covariance of ``[y, Z1, Z2]``, scalar target first.
    d1, d2 : int
        Dimensions of the sources.
    n : int, optional
        Sample size; when given the Cai et al. (2015) bias is subtracted.
    eps : float, default=0.0
        Ridge on the diagonal of the correlation matrix.

    Returns
    -------
    dict of str to torch.Tensor
        Same keys as :func:`gaussian_pid_torch`, float64, in bits.

    Raises
    ------
    ValueError
        If the shape does not match ``d1`` and ``d2`` or the matrix is singular.

    Examples
    --------
    >>> cov = torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 1.0], [1.0, 1.0, 2.0]])
    >>> out = gaussian_pid_torch_from_cov(cov, 1, 1)
    >>> round(float(out["R"]), 6), round(float(out["S"]), 6)
    (0.5, 0.292481)
    """
    d = 1 + int(d1) + int(d2)
    if cov.shape != (d, d):
        raise ValueError(
            f"cov: expected the ({d}, {d}) covariance of [y, z1, z2] (d1={d1}, d2={d2}), "
            f"got shape {tuple(cov.shape)}."
        )
    if n is not None and int(n) <= d:
        raise ValueError(f"too few samples for a Gaussian PID: n={n}, need n > {d}.")
    with torch.autocast(device_type=cov.device.type, enabled=False):
        c64 = cov.to(torch.float64)
        if not bool(torch.isfinite(c64).all()):
            raise ValueError("cov contains non-finite values (NaN or inf).")
        corr = _standardise_cov(c64, eps)
        return _pid_from_corr(corr, int(d1), int(d2), None if n is None else int(n))
