"""Voxelwise 3D maps in MNI space: ALFF, fALFF, ReHo and seed-based network maps.

- ALFF (Zang et al. 2007): mean FFT amplitude in the band, of each voxel's
  series in percent of its mean (so it is comparable across scanners).
- fALFF (Zou et al. 2008): band amplitude over the amplitude at all
  frequencies above 0.
- ReHo (Zang et al. 2004): Kendall's W of each voxel's series with its 26
  neighbours in the mask (27-voxel cube), vectorised over the volume (ranks by
  a double argsort, neighbourhood rank sums by separable box filters).
- Seed map: Fisher z of the correlation of each voxel with the mean series
  of a seed sphere (default the posterior cingulate, MNI 0, −52, 26, for the
  default-mode network; Fox et al. 2005).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = np.repeat(rng.standard_normal((1, 1, 1, 40)), 3, axis=0).repeat(3, 1).repeat(3, 2)
>>> float(np.round(reho(x, np.ones((3, 3, 3), bool))[1, 1, 1], 6))
1.0
"""

from __future__ import annotations

import numpy as np

__all__ = ["DMN_SEED_MNI", "alff_falff", "reho", "seed_map"]

#: Posterior cingulate seed (MNI mm) for the default-mode network map.
DMN_SEED_MNI = (0.0, -52.0, 26.0)


def alff_falff(series: np.ndarray, tr: float, band: tuple[float, float]):
    """ALFF and fALFF of evenly sampled series.

    Parameters
    ----------
    series : array of shape (T, V)
        Detrended, confound-regressed (not band-passed) series, in percent of the
        voxel's mean.
    tr : float
    band : (low, high) in Hz

    Returns
    -------
    alff, falff : numpy.ndarray of shape (V,)
    """
    n = series.shape[0]
    freqs = np.fft.rfftfreq(n, d=tr)
    amp = np.abs(np.fft.rfft(series - series.mean(axis=0), axis=0)) * (2.0 / n)
    in_band = (freqs >= band[0]) & (freqs <= band[1])
    alff = amp[in_band].mean(axis=0)
    total = amp[1:].sum(axis=0)
    falff = np.divide(amp[in_band].sum(axis=0), total, out=np.zeros_like(total),
                      where=total > 0)
    return alff, falff


def reho(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Regional homogeneity: Kendall's W in the 27-voxel neighbourhood.

    Parameters
    ----------
    data : array of shape (X, Y, Z, T)
    mask : bool array of shape (X, Y, Z)
        Voxels to use (neighbours outside the mask are left out).

    Returns
    -------
    numpy.ndarray of shape (X, Y, Z)
        W in [0, 1] inside the mask, 0 outside.
    """
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    n_t = data.shape[3]
    out = np.zeros(mask.shape, np.float32)
    if not mask.any():
        return out
    # work in the mask's bounding box (+1 voxel): a third of an MNI grid's volume
    lo = np.maximum(np.argwhere(mask).min(axis=0) - 1, 0)
    hi = np.minimum(np.argwhere(mask).max(axis=0) + 2, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    m = mask[box]
    series = np.asarray(data[box][m], np.float32)  # (V, T)
    # ranks 1..T along time (continuous data: no ties), by a double argsort
    order = np.argsort(series, axis=1, kind="stable")
    ranks_v = np.empty(series.shape, np.float32)
    np.put_along_axis(ranks_v, order, np.arange(1, n_t + 1, dtype=np.float32)[None, :], axis=1)
    del order, series
    ranks = np.zeros((*m.shape, n_t), np.float32)
    ranks[m] = ranks_v
    del ranks_v
    # 27-voxel sums as separable box filters (uniform_filter is a mean: times 27)
    count = np.rint(27 * ndimage.uniform_filter(m.astype(np.float64), 3, mode="constant"))
    sums = ndimage.uniform_filter(ranks, size=(3, 3, 3, 1), mode="constant", output=ranks)
    sums *= 27.0
    sum_sq = np.einsum("xyzt,xyzt->xyz", sums, sums, dtype=np.float64)
    k = count.astype(np.float64)
    mean_term = n_t * (k * (n_t + 1) / 2.0) ** 2
    denom = k**2 * (n_t**3 - n_t) / 12.0
    w = np.divide(sum_sq - mean_term, denom, out=np.zeros_like(sum_sq), where=denom > 0)
    w[~m] = 0.0
    out[box] = np.clip(w, 0.0, 1.0)
    return out


def seed_map(series: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Fisher z of the correlation of every column of ``series`` (T, V) with ``seed`` (T,)."""
    x = series - series.mean(axis=0)
    s = seed - seed.mean()
    denom = np.linalg.norm(x, axis=0) * np.linalg.norm(s)
    r = np.divide(x.T @ s, denom, out=np.zeros(x.shape[1]), where=denom > 0)
    return np.arctanh(np.clip(r, -0.999999, 0.999999))
