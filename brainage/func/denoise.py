"""Denoising with nilearn: detrending, band-pass, confound regression, scrubbing.

Scrubbed volumes are passed to nilearn as a ``sample_mask``: nilearn
interpolates them before filtering and drops them from the output, so a
motion spike neither enters the regression nor smears through the filter.
"""

from __future__ import annotations

import numpy as np

__all__ = ["clean_signals", "clean_voxels", "interpolate_censored"]


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
        low_pass=low_pass,
        high_pass=high_pass,
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


def clean_voxels(signals: np.ndarray, confounds, sample_mask, *, tr: float,
                 high_pass: float | None, low_pass: float | None) -> np.ndarray:
    """Band-pass and confound-clean many voxel series quickly (same order as nilearn).

    nilearn's :func:`~nilearn.signal.clean` with a ``sample_mask`` interpolates
    censored volumes voxel by voxel, which takes minutes for a whole brain. Here
    the censored volumes of the detrended signals and of the confounds are
    interpolated linearly and vectorised, both are filtered with
    :func:`nilearn.signal.butterworth`, and the filtered confounds are regressed
    from the filtered signals on the kept volumes only (filtering signals and
    confounds alike, as nilearn does).

    Returns
    -------
    numpy.ndarray of shape (len(sample_mask), n)
        Not standardised.
    """
    from nilearn.signal import butterworth, clean

    kept = np.asarray(sample_mask)
    n_vol = signals.shape[0]
    sig = clean(np.asarray(signals, np.float64)[kept], detrend=True, standardize=None,
                filter=False)
    sig = interpolate_censored(sig, kept, n_vol)
    conf = None
    if confounds is not None and np.asarray(confounds).shape[1]:
        conf = interpolate_censored(np.asarray(confounds, np.float64)[kept], kept, n_vol)
    if high_pass or low_pass:
        sig = butterworth(sig, 1.0 / tr, low_pass=low_pass, high_pass=high_pass, copy=True)
        if conf is not None:
            conf = butterworth(conf, 1.0 / tr, low_pass=low_pass, high_pass=high_pass,
                               copy=True)
    return clean(sig[kept], detrend=False, standardize=None, filter=False,
                 confounds=None if conf is None else conf[kept], standardize_confounds=True)
