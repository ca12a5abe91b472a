"""Denoising with nilearn: detrending, band-pass, confound regression, scrubbing.

Scrubbed volumes are passed to nilearn as a ``sample_mask``: nilearn
interpolates them before filtering and drops them from the output, so a
motion spike neither enters the regression nor smears through the filter.
"""

from __future__ import annotations

import numpy as np

__all__ = ["clean_signals", "clean_voxels", "interpolate_censored", "regress_out"]


def clean_signals(signals: np.ndarray, confounds, sample_mask, *, tr: float,
                  high_pass: float | None, low_pass: float | None,
                  standardize: bool = True) -> np.ndarray:
    """Clean time series (T, n) with :func:`nilearn.signal.clean`.

    Parameters
    ----------
    signals : array of shape (T, n)
    confounds : array-like of shape (T, k) or None
    sample_mask : array of int
        Indices of the volumes kept.
    tr : float
    high_pass, low_pass : float or None
        Band edges (Hz); ``None`` skips that edge.
    standardize : bool
        Z-score the cleaned series.

    Returns
    -------
    numpy.ndarray of shape (len(sample_mask), n)
    """
    from nilearn.signal import clean

    return clean(
        np.asarray(signals, np.float64),
        detrend=True,
        standardize="zscore_sample" if standardize else None,
        confounds=None if confounds is None else np.asarray(confounds, np.float64),
        standardize_confounds=True,
        filter="butterworth" if (high_pass or low_pass) else False,
        low_pass=low_pass or None,
        high_pass=high_pass or None,
        t_r=tr,
        sample_mask=np.asarray(sample_mask),
    )


def interpolate_censored(cleaned: np.ndarray, sample_mask, n_volumes: int) -> np.ndarray:
    """Put cleaned volumes back on the full time axis, censored ones linearly interpolated.

    Used only where a method needs an evenly sampled series (the ALFF spectrum).
    """
    kept = np.asarray(sample_mask)
    if len(kept) == n_volumes:
        return np.asarray(cleaned)
    out = np.empty((n_volumes, cleaned.shape[1]), np.asarray(cleaned).dtype)
    out[kept] = cleaned
    t = np.arange(n_volumes)
    missing = np.setdiff1d(t, kept)
    # linear interpolation (constant beyond the ends), vectorised over columns
    right = np.clip(np.searchsorted(kept, missing), 1, len(kept) - 1)
    left = right - 1
    t0, t1 = kept[left], kept[right]
    w = np.clip((missing - t0) / (t1 - t0), 0.0, 1.0)[:, None]
    out[missing] = (1 - w) * cleaned[left] + w * cleaned[right]
    return out


def regress_out(signals: np.ndarray, confounds: np.ndarray | None) -> np.ndarray:
    """Residuals of ``signals`` (T, n) after least squares on standardised ``confounds`` (T, k).

    What :func:`nilearn.signal.clean` does with ``standardize_confounds=True`` on
    series that are already detrended and censored: an orthonormal basis of the
    confounds (with the constant) is projected out, in float32 for whole-brain arrays.
    """
    out = np.asarray(signals)
    if confounds is None or not np.asarray(confounds).shape[1]:
        return out
    conf = np.asarray(confounds, np.float64)
    sd = conf.std(axis=0)
    keep = sd > 1e-12 * max(1.0, float(np.abs(conf).max()))
    conf = (conf[:, keep] - conf[:, keep].mean(axis=0)) / sd[keep]
    basis = np.c_[np.ones(len(conf)) / np.sqrt(len(conf)), conf]
    q, r = np.linalg.qr(basis)
    q = q[:, np.abs(np.diag(r)) > 1e-8 * np.abs(np.diag(r)).max()].astype(out.dtype)
    return out - q @ (q.T @ out)


def clean_voxels(signals: np.ndarray, confounds, sample_mask, *, tr: float,
                 high_pass: float | None, low_pass: float | None,
                 unfiltered: bool = False):
    """Band-pass and confound-clean many voxel series quickly (same order as nilearn).

    nilearn's :func:`~nilearn.signal.clean` with a ``sample_mask`` interpolates
    censored volumes voxel by voxel, which takes minutes for a whole brain. Here
    the censored volumes of the detrended signals and of the confounds are
    interpolated linearly and vectorised, both are filtered with
    :func:`nilearn.signal.butterworth`, and the filtered confounds are regressed
    from the filtered signals on the kept volumes only (filtering signals and
    confounds alike, as nilearn does). Float32 in, float32 out.

    Parameters
    ----------
    unfiltered : bool
        Also return the detrended, confound-regressed series without the band-pass
        (what ALFF needs), from the same detrending.

    Returns
    -------
    numpy.ndarray of shape (len(sample_mask), n), or a pair of them with ``unfiltered``
        Not standardised.
    """
    from nilearn.signal import butterworth
    from scipy.signal import detrend

    kept = np.asarray(sample_mask)
    n_vol = signals.shape[0]
    dtype = np.float32 if np.asarray(signals).dtype == np.float32 else np.float64
    sig = detrend(np.asarray(signals, dtype)[kept], axis=0, type="linear").astype(dtype)
    conf = None
    if confounds is not None and np.asarray(confounds).shape[1]:
        conf = detrend(np.asarray(confounds, np.float64)[kept], axis=0, type="linear")
    raw = regress_out(sig, conf) if unfiltered else None
    sig = interpolate_censored(sig, kept, n_vol)
    conf_full = None if conf is None else interpolate_censored(conf, kept, n_vol)
    if high_pass or low_pass:
        low_pass, high_pass = low_pass or None, high_pass or None
        # copy=True: nilearn filters the whole array at once; in place it loops over
        # columns (20x slower for a brain, measured)
        sig = butterworth(sig, 1.0 / tr, low_pass=low_pass, high_pass=high_pass,
                          copy=True).astype(dtype, copy=False)
        if conf_full is not None:
            conf_full = butterworth(conf_full, 1.0 / tr, low_pass=low_pass,
                                    high_pass=high_pass, copy=True)
    sig = sig[kept]
    sig -= sig.mean(axis=0)
    out = regress_out(sig, None if conf_full is None else conf_full[kept])
    return (out, raw) if unfiltered else out
