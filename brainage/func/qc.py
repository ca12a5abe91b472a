"""Functional QC: summary metrics, flags with reasons, and the carpet plot."""

from __future__ import annotations

import numpy as np

__all__ = ["carpet_plot", "qc_metrics", "tsnr"]

#: Thresholds of the QC flags (documented in docs/func.md).
FLAG_THRESHOLDS = {"mean_fd_mm": 0.3, "percent_scrubbed": 20.0, "tsnr": 30.0, "coverage": 0.9}


def tsnr(data: np.ndarray, mask: np.ndarray) -> float:
    """Median temporal SNR (mean / SD over time) of the voxels in ``mask``."""
    series = data[mask]
    sd = series.std(axis=1)
    values = np.divide(series.mean(axis=1), sd, out=np.zeros_like(sd), where=sd > 0)
    return float(np.median(values)) if values.size else 0.0


def qc_metrics(fd: np.ndarray, dvars_values: np.ndarray, scrubbed: np.ndarray,
               tsnr_value: float, coverage: float, extra: dict | None = None) -> dict:
    """QC summary of a run, with flags and their reasons.

    Returns
    -------
    dict
        ``mean_fd``, ``max_fd``, ``percent_scrubbed``, ``n_scrubbed``, ``tsnr``,
        ``mean_dvars``, ``coverage`` and ``flags`` (list of reasons).
    """
    out = {
        "mean_fd": float(np.mean(fd[1:])) if len(fd) > 1 else 0.0,
        "max_fd": float(np.max(fd)),
        "n_scrubbed": int(np.sum(scrubbed)),
        "percent_scrubbed": float(100.0 * np.mean(scrubbed)),
        "tsnr": float(tsnr_value),
        "mean_dvars": float(np.mean(dvars_values[1:])) if len(dvars_values) > 1 else 0.0,
        "coverage": float(coverage),
    }
    if extra:
        out.update(extra)
    flags = []
    t = FLAG_THRESHOLDS
    if out["mean_fd"] > t["mean_fd_mm"]:
        flags.append(f"high motion: mean FD {out['mean_fd']:.2f} mm > {t['mean_fd_mm']} mm")
    if out["percent_scrubbed"] > t["percent_scrubbed"]:
        flags.append(f"{out['percent_scrubbed']:.0f}% of volumes scrubbed "
                     f"(> {t['percent_scrubbed']:.0f}%)")
    if out["tsnr"] < t["tsnr"]:
        flags.append(f"low tSNR: {out['tsnr']:.1f} < {t['tsnr']}")
    if out["coverage"] < t["coverage"]:
        flags.append(f"partial brain coverage: {100 * out['coverage']:.0f}% of the MNI brain "
                     f"mask inside the BOLD field of view (< {100 * t['coverage']:.0f}%)")
    out["flags"] = flags
    return out


def _carpet_mask(mask_img, max_voxels: int):
    """Thin the mask to at most ``max_voxels`` voxels, evenly in memory (= spatial) order.

    A carpet plot is drawn at a few hundred pixels in height: plotting every voxel of a
    whole-brain mask only costs time (nilearn detrends and standardises each one).
    """
    import nibabel as nib

    mask = np.asarray(mask_img.dataobj) > 0
    n = int(mask.sum())
    if n <= max_voxels:
        return mask_img
    where = np.flatnonzero(mask.ravel())
    keep = where[np.linspace(0, n - 1, max_voxels).round().astype(int)]
    thin = np.zeros(mask.size, np.uint8)
    thin[keep] = 1
    return nib.Nifti1Image(thin.reshape(mask.shape), mask_img.affine)


def carpet_plot(img, mask_img, tr: float, fd: np.ndarray, scrubbed: np.ndarray, path,
                max_voxels: int = 8000) -> None:
    """Write a carpet plot (nilearn ``plot_carpet``) with FD above it, as SVG.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        4D BOLD in MNI space (before denoising).
    mask_img : nibabel.Nifti1Image
        Brain mask.
    tr : float
    fd : array of shape (T,)
        Framewise displacement.
    scrubbed : bool array of shape (T,)
        Scrubbed volumes (marked in red).
    path : path-like
        Destination (``.svg`` in the pipeline; any matplotlib format by suffix); written
        atomically.
    max_voxels : int
        Voxels drawn (evenly spaced in the mask); a 3 mm brain has about 70,000.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn.plotting import plot_carpet

    from ..writing import atomic_path

    fig = plt.figure(figsize=(10, 6))
    top = fig.add_axes([0.08, 0.72, 0.86, 0.22])
    t = np.arange(len(fd)) * tr
    top.plot(t, fd, color="k", lw=1)
    for k in np.flatnonzero(scrubbed):
        top.axvline(t[k], color="tab:red", alpha=0.4, lw=1)
    top.set_xlim(t[0], t[-1] if len(t) > 1 else 1)
    top.set_ylabel("FD (mm)")
    top.set_xticklabels([])
    top.set_title("Framewise displacement (red: scrubbed volumes) and carpet plot")
    bottom = fig.add_axes([0.08, 0.08, 0.86, 0.6])
    plot_carpet(img, mask_img=_carpet_mask(mask_img, max_voxels), t_r=tr, axes=bottom,
                figure=fig, standardize="zscore_sample")
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp)  # format from the suffix (.svg in the pipeline)
    finally:
        plt.close(fig)
