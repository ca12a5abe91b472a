"""Quality control of the structural pipeline: numbers, flags with reasons, an SVG mosaic."""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["PLAUSIBLE", "qc_metrics", "save_mosaic"]

logger = logging.getLogger(__name__)

#: Plausible ranges of adult tissue volumes (mL) and fractions of TIV; outside them a
#: participant is flagged (not failed).
PLAUSIBLE = {
    "tiv_ml": (900.0, 2200.0),
    "gm_fraction": (0.25, 0.65),
    "wm_fraction": (0.15, 0.55),
    "csf_fraction": (0.03, 0.45),
}


def qc_metrics(result, template_t1, template_mask, tissue: dict, *, min_similarity: float) -> dict:
    """Registration similarity, tissue plausibility, SNR/CNR and flags.

    Parameters
    ----------
    result : brainage.anat.pipeline.AnatResult
        The processed images.
    template_t1, template_mask : nibabel.Nifti1Image
        The template on the output grid.
    tissue : dict
        Tissue volumes in mL (``gm_ml``, ``wm_ml``, ``csf_ml``, ``tiv_ml``).
    min_similarity : float
        Registration is flagged as failed below this correlation.

    Returns
    -------
    dict
        ``registration_similarity`` (Pearson r of the MNI-space T1w with the template
        inside the template brain mask), ``snr`` (mean WM / SD WM), ``cnr``
        (|mean WM − mean GM| / SD WM), tissue fractions, ``flags`` (list of reasons)
        and ``registration_ok``.
    """
    mask = np.asarray(template_mask.dataobj) > 0.5
    moved = np.asarray(result.t1w_mni.dataobj, dtype=np.float64)[mask]
    ref = np.asarray(template_t1.dataobj, dtype=np.float64)[mask]
    similarity = float(np.corrcoef(moved, ref)[0, 1]) if moved.std() > 0 else 0.0
    t1 = np.asarray(result.t1w.dataobj, dtype=np.float64)
    gm = np.asarray(result.gm.dataobj) > 0.9
    wm = np.asarray(result.wm.dataobj) > 0.9
    flags = []
    snr = cnr = float("nan")
    if gm.sum() > 10 and wm.sum() > 10:
        wm_sd = float(t1[wm].std())
        snr = float(t1[wm].mean() / wm_sd) if wm_sd > 0 else float("inf")
        cnr = float(abs(t1[wm].mean() - t1[gm].mean()) / wm_sd) if wm_sd > 0 else float("inf")
    else:
        flags.append("too few confident GM/WM voxels to measure SNR/CNR")
    ok = bool(np.isfinite(similarity) and similarity >= min_similarity)
    if not ok:
        flags.append(
            f"registration similarity {similarity:.3f} below anat.registration.min_similarity "
            f"{min_similarity:.3f}"
        )
    tiv = tissue["tiv_ml"]
    fractions = {k: tissue[f"{k}_ml"] / tiv if tiv > 0 else float("nan") for k in ("gm", "wm", "csf")}
    lo, hi = PLAUSIBLE["tiv_ml"]
    if not lo <= tiv <= hi:
        flags.append(f"TIV {tiv:.0f} mL outside the plausible adult range {lo:.0f}-{hi:.0f} mL")
    for k, value in fractions.items():
        lo, hi = PLAUSIBLE[f"{k}_fraction"]
        if not lo <= value <= hi:
            flags.append(f"{k.upper()} fraction of TIV {value:.2f} outside {lo:.2f}-{hi:.2f}")
    return {
        "registration_similarity": round(similarity, 4),
        "registration_ok": ok,
        "snr": round(snr, 3),
        "cnr": round(cnr, 3),
        **{f"{k}_fraction": round(v, 4) for k, v in fractions.items()},
        "flags": flags,
    }


def save_mosaic(t1_mni, mask_mni, gm_mni, path) -> None:
    """Write an SVG mosaic of the MNI-space T1w with brain-mask (red) and GM (blue) contours.

    Parameters
    ----------
    t1_mni, mask_mni, gm_mni : nibabel.Nifti1Image
        MNI-space images on the same grid.
    path : path-like
        Destination ``.svg`` (written atomically).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import nibabel as nib
    from nilearn import plotting

    from ..writing import atomic_path

    gm_bin = nib.Nifti1Image((np.asarray(gm_mni.dataobj) > 0.5).astype(np.uint8), gm_mni.affine)
    # Grey levels from the brain's own intensity range, so that GM, WM and CSF stay
    # distinguishable (an automatic range saturates the brain once the head is included).
    t1 = np.asarray(t1_mni.dataobj, dtype=np.float32)
    inside = t1[np.asarray(mask_mni.dataobj) > 0.5]
    vmin, vmax = (np.percentile(inside, [0.5, 99.5]) if inside.size else (None, None))
    display = plotting.plot_anat(
        t1_mni, display_mode="z", cut_coords=8, draw_cross=False, annotate=True,
        black_bg=True, dim=0, vmin=vmin, vmax=vmax,
    )
    try:
        display.add_contours(mask_mni, levels=[0.5], colors="r", linewidths=0.8)
        display.add_contours(gm_bin, levels=[0.5], colors="c", linewidths=0.5)
        with atomic_path(path) as tmp:
            display.savefig(str(tmp))
    finally:
        display.close()
        plt.close("all")
