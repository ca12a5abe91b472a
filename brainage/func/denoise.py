"""Denoising with nilearn: detrending, band-pass, confound regression, scrubbing.

Scrubbed volumes are passed to nilearn as a ``sample_mask``: nilearn
interpolates them before filtering and drops them from the output, so a
motion spike neither enters the regression nor smears through the filter.
"""

from __future__ import annotations

import numpy as np

__all__ = ["clean_signals", "interpolate_censored"]


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
    t = np.arange(n_volumes)
    out = np.empty((n_volumes, cleaned.shape[1]), cleaned.dtype)
    for j in range(cleaned.shape[1]):
        out[:, j] = np.interp(t, kept, cleaned[:, j])
    return out
