"""Tissue classes of the T1w: Atropos posteriors and the CSF around the brain.

:func:`segment` runs Atropos inside the brain mask, initialised with the template's
CSF/GM/WM priors carried back to the T1w (prior weight 0.25, MRF smoothing).
:func:`extracerebral_csf` finds the CSF between the brain mask and the skull, which
belongs to the intracranial volume. The posteriors become tissue fractions in
:mod:`.partial_volume`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["extracerebral_csf", "segment"]


def segment(image, mask, priors, *, prior_weight: float = 0.25, iterations: int = 5,
            mrf: float = 0.1):
    """Atropos three-class segmentation with template priors.

    Parameters
    ----------
    image : ants.ANTsImage
        Bias-corrected T1w.
    mask : ants.ANTsImage
        Brain mask (same grid).
    priors : sequence of ants.ANTsImage
        CSF, GM, WM prior probabilities on the same grid (in that order: dark to bright
        on T1w).
    prior_weight : float
        Weight of the priors against the intensity model (0 = ignore priors).
    iterations : int
        Maximum EM iterations.
    mrf : float
        MRF smoothing weight (radius 1 voxel).

    Returns
    -------
    dict
        ``csf``, ``gm``, ``wm`` posterior probability ANTsImages.
    """
    # antspyx writes the priors and posteriors to files named by tempfile.mktemp and never
    # removes them: give it a folder of its own for the call, removed afterwards.
    import tempfile

    import ants

    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="brainage-atropos-") as scratch:
        tempfile.tempdir = scratch
        try:
            out = ants.atropos(
                a=image,
                x=mask,
                i=list(priors),
                m=f"[{float(mrf)},1x1x1]",
                c=f"[{int(iterations)},0.001]",
                priorweight=float(prior_weight),
                # Atropos seeds its random number generator from the clock unless told not
                # to (--use-random-seed 0): a constant seed makes reruns identical
                r=0,
            )
            probs = [p.clone() for p in out["probabilityimages"]]
        finally:
            tempfile.tempdir = previous
    if len(priors) == 4:
        other, csf, gm, wm = probs[:4]
        return {"other": other, "csf": csf, "gm": gm, "wm": wm}
    csf, gm, wm = probs[:3]
    return {"csf": csf, "gm": gm, "wm": wm}


def extracerebral_csf(intensity: np.ndarray, brain: np.ndarray, spacing,
                      max_margin_mm: float) -> tuple[np.ndarray, dict]:
    """CSF between the brain and the skull: fractions in a shell outside the brain mask.

    The brain mask carried back from the template holds brain tissue and the CSF inside
    it, but not the CSF around the brain, which belongs to the intracranial volume. Outside
    the mask, the mean T1w intensity over shells of equal distance falls from CSF to the
    dark inner table of the skull and rises again in the diploë and scalp; the shells
    before the darkest one are intracranial. In them each voxel's CSF fraction is its
    intensity unmixed between bone (the 2nd percentile out to ``max_margin_mm``) and
    CSF (the peak of the shell's histogram below the brain's median intensity).

    Parameters
    ----------
    intensity : numpy.ndarray
        Bias-corrected T1w.
    brain : numpy.ndarray of bool
        Brain mask (same grid).
    spacing : sequence of float
        Voxel size (mm).
    max_margin_mm : float
        Farthest distance (mm) from the brain mask searched for the skull.

    Returns
    -------
    fraction : numpy.ndarray of float32
        CSF fraction (0 inside the brain mask and beyond the skull).
    info : dict
        ``margin_mm`` (distance of the last intracranial shell), ``csf_level``,
        ``bone_level``.
    """
    from scipy import ndimage

    spacing = tuple(float(s) for s in spacing)
    dist = ndimage.distance_transform_edt(~brain, sampling=spacing)
    width = 0.5 * max(spacing)
    search = (dist > 0) & (dist <= max_margin_mm + width)
    if search.sum() < 100 or not brain.any():
        return np.zeros(intensity.shape, np.float32), {"margin_mm": 0.0}
    edges = np.arange(0.0, max_margin_mm + 2 * width, width)
    which = np.digitize(dist[search], edges) - 1
    counts = np.bincount(which, minlength=len(edges))
    sums = np.bincount(which, weights=intensity[search], minlength=len(edges))
    valid = counts >= 20
    profile = np.where(valid, sums / np.maximum(counts, 1), np.inf)
    darkest = int(np.argmin(profile))
    margin = float(edges[darkest])
    shell = (dist > 0) & (dist <= margin)
    bone = float(np.percentile(intensity[search], 2))
    top = float(np.median(intensity[brain]))
    values = intensity[shell]
    values = values[(values > bone) & (values < top)]
    if margin <= 0 or values.size < 50:
        return np.zeros(intensity.shape, np.float32), {"margin_mm": 0.0}
    hist, hist_edges = np.histogram(values, bins=100, range=(bone, top))
    hist = ndimage.gaussian_filter1d(hist.astype(np.float64), 2.0)
    csf = float(0.5 * (hist_edges[:-1] + hist_edges[1:])[int(np.argmax(hist))])
    fraction = np.zeros(intensity.shape, np.float32)
    if csf > bone:
        fraction[shell] = np.clip((intensity[shell] - bone) / (csf - bone), 0.0, 1.0)
    return fraction, {"margin_mm": round(margin, 2), "csf_level": round(csf, 4),
                      "bone_level": round(bone, 4)}
