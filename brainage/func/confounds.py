"""The confounds table (fMRIPrep column names) and reading fMRIPrep's.

Columns written: ``trans_x … rot_z`` with ``*_derivative1``, ``*_power2`` and
``*_derivative1_power2`` (the 24-parameter model of Friston et al. 1996),
``framewise_displacement`` (Power et al. 2012), ``dvars``, ``std_dvars``,
``csf``, ``white_matter``, ``global_signal``, optional ``a_comp_cor_XX``, and
``motion_outlier`` (1 for a scrubbed volume).

Examples
--------
>>> import numpy as np, pandas as pd
>>> base = pd.DataFrame(np.arange(12.0).reshape(6, 2), columns=["trans_x", "rot_x"])
>>> list(expand_24(base).columns)[:4]
['trans_x', 'trans_x_derivative1', 'trans_x_power2', 'trans_x_derivative1_power2']
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .motion import MOTION_COLUMNS

__all__ = [
    "acompcor",
    "band_dof",
    "expand_24",
    "motion_columns",
    "motion_outliers",
    "regressors",
    "tissue_mask_eroded",
    "tissue_signal",
]


def expand_24(params: pd.DataFrame) -> pd.DataFrame:
    """Add temporal derivatives and squares (Friston 24-parameter expansion).

    Parameters
    ----------
    params : pandas.DataFrame
        One column per motion parameter.

    Returns
    -------
    pandas.DataFrame
        For each column ``c``: ``c, c_derivative1, c_power2, c_derivative1_power2``;
        the first derivative of the first volume is 0.
    """
    out = {}
    for col in params.columns:
        x = params[col].to_numpy(float)
        d = np.concatenate([[0.0], np.diff(x)])
        out[col] = x
        out[f"{col}_derivative1"] = d
        out[f"{col}_power2"] = x**2
        out[f"{col}_derivative1_power2"] = d**2
    return pd.DataFrame(out, index=params.index)


def tissue_signal(data: np.ndarray, probseg: np.ndarray, threshold: float = 0.9,
                  erode: int = 1, min_voxels: int = 10,
                  fallback: bool = True) -> np.ndarray | None:
    """Mean time series of the confident, eroded voxels of a tissue.

    Parameters
    ----------
    data : array of shape (*grid, T)
    probseg : array of shape grid
        Tissue probability on the same grid.
    threshold : float
    erode : int
        Binary erosions of the tissue mask: they keep the signal away from grey matter.
    min_voxels : int
        Fewest voxels the eroded mask must keep.
    fallback : bool
        When erosion leaves fewer than ``min_voxels`` voxels, use the uneroded mask
        (``True``) or return ``None``. At 3–4 mm one erosion empties the CSF mask and
        every voxel of the uneroded one borders grey matter: its mean then carries some
        cortical signal, but it also carries the physiological noise, and leaving it out
        lowered the parcel accuracy more than it helped (measured on simulated
        participants, docs/func.md), so the stage falls back and records it in QC.

    Returns
    -------
    numpy.ndarray of shape (T,) or None
        ``None`` only without ``fallback``; zeros for an empty mask.
    """
    from scipy import ndimage

    mask = probseg > threshold
    eroded = ndimage.binary_erosion(mask, iterations=erode) if erode else mask
    if eroded.sum() >= min_voxels:
        mask = eroded
    elif not fallback:
        return None
    if mask.sum() == 0:
        return np.zeros(data.shape[-1])
    return data[mask].mean(axis=0)


def tissue_mask_eroded(probseg: np.ndarray, threshold: float = 0.9, erode: int = 1,
                       min_voxels: int = 10) -> bool:
    """Whether :func:`tissue_signal` uses the eroded mask (``False``: it fell back)."""
    from scipy import ndimage

    mask = probseg > threshold
    return bool(ndimage.binary_erosion(mask, iterations=erode).sum() >= min_voxels)


def acompcor(data: np.ndarray, noise_mask: np.ndarray, n_components: int = 5) -> np.ndarray:
    """Anatomical CompCor (Behzadi et al. 2007) components of WM+CSF voxels.

    Uses :func:`nilearn.image.high_variance_confounds`-style SVD on detrended,
    variance-normalised noise-voxel time series.

    Returns
    -------
    numpy.ndarray of shape (T, n_components)
    """
    from nilearn.signal import clean

    series = data[noise_mask].T.astype(np.float64)
    series = clean(series, detrend=True, standardize="zscore_sample", standardize_confounds=False)
    u, _, _ = np.linalg.svd(series, full_matrices=False)
    return u[:, :n_components]


def motion_outliers(fd: np.ndarray, threshold: float) -> np.ndarray:
    """Volumes to scrub: framewise displacement above ``threshold`` (mm)."""
    return np.asarray(fd) > threshold


def band_dof(n_kept: int, tr: float, high_pass: float | None, low_pass: float | None) -> float:
    """Degrees of freedom left in a band-passed run: volumes × band width / Nyquist."""
    nyquist = 0.5 / tr
    high = min(low_pass, nyquist) if low_pass else nyquist
    low = high_pass or 0.0
    return n_kept * max(high - low, 0.0) / nyquist


def motion_columns(model: int) -> list[str]:
    """Motion confound names of the 6-, 12- or 24-parameter model."""
    cols = list(MOTION_COLUMNS)
    if model >= 12:
        cols += [f"{c}_derivative1" for c in MOTION_COLUMNS]
    if model >= 24:
        cols += [f"{c}_power2" for c in MOTION_COLUMNS]
        cols += [f"{c}_derivative1_power2" for c in MOTION_COLUMNS]
    return cols


def regressors(table: pd.DataFrame, *, global_signal: bool, n_acompcor: int = 0,
               tissue: bool = True, motion_model: int = 24) -> pd.DataFrame:
    """Select the columns of a confounds table that are regressed out.

    The 6/12/24 motion parameters, WM and CSF means (or aCompCor components),
    and the global signal when asked.
    """
    cols = [c for c in motion_columns(motion_model) if c in table.columns]
    if tissue:
        cols += [c for c in ("white_matter", "csf") if c in table.columns]
    if n_acompcor:
        comp = sorted(c for c in table.columns if c.startswith("a_comp_cor_"))[:n_acompcor]
        cols += comp
    if global_signal and "global_signal" in table.columns:
        cols.append("global_signal")
    out = table[cols].astype(float)
    return out.fillna(0.0)
