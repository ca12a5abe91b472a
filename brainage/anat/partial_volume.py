"""Partial-volume tissue fractions from the segmentation posteriors and the intensity.

:func:`tissue_levels` measures the intensity of pure CSF, GM and WM, :func:`noise_sd`
the image noise, and :func:`partial_volume` unmixes each voxel between its two most
probable classes (the FSL FAST / SPM model; with noise, the mixel model).
"""

from __future__ import annotations

import numpy as np

from ..exceptions import ProcessingError

__all__ = ["noise_sd", "partial_volume", "tissue_levels"]


def tissue_levels(intensity: np.ndarray, posteriors: dict, region: np.ndarray, *,
                  csf_level: float | None = None) -> dict:
    """Intensity of pure CSF, GM and WM, from the voxels least mixed with other tissue.

    The class *means* of a Gaussian mixture are pulled towards their neighbours by the
    many partial-volume voxels of a low-resolution image, and atrophy that thins the
    cortex from its CSF side makes a cortical voxel a GM/CSF mixture; pure tissue is
    where a class is far from the others:

    - WM: median intensity where the WM posterior exceeds 0.95;
    - GM: median intensity of the GM core (GM posterior > 0.5, eroded by one voxel, so
      no voxel touches CSF or WM);
    - CSF: ``csf_level`` when given (the CSF around the brain, see
      :func:`.segmentation.extracerebral_csf`, where CSF is not mixed with GM), else the
      peak of the CSF posterior-weighted histogram.

    Parameters
    ----------
    intensity : numpy.ndarray
        Bias-corrected T1w.
    posteriors : dict of numpy.ndarray
        ``csf``, ``gm``, ``wm`` posteriors (same grid).
    region : numpy.ndarray of bool
        The brain mask.
    csf_level : float, optional
        Pure CSF intensity measured elsewhere.

    Returns
    -------
    dict
        ``csf``, ``gm``, ``wm`` → intensity.

    Raises
    ------
    ProcessingError
        If a class has too few voxels to measure its intensity.
    """
    from scipy import ndimage

    def median(where, name):
        if where.sum() < 20:
            raise ProcessingError(
                f"too few {name} voxels to measure its intensity for partial-volume fractions; "
                "check the registration in the QC mosaic or set anat.tissue_fractions: posterior"
            )
        return float(np.median(intensity[where]))

    out = {"wm": median(region & (posteriors["wm"] > 0.95), "white-matter")}
    core = ndimage.binary_erosion(posteriors["gm"] > 0.5) & region
    if core.sum() < 100:
        core = region & (posteriors["gm"] > 0.95)
    out["gm"] = median(core, "grey-matter")
    if csf_level is None:
        values = intensity[region]
        hist, edges = np.histogram(values, bins=200, weights=posteriors["csf"][region] ** 2,
                                   range=(float(values.min()), out["gm"]))
        hist = ndimage.gaussian_filter1d(hist.astype(np.float64), 2.0)
        csf_level = float(0.5 * (edges[:-1] + edges[1:])[int(np.argmax(hist))])
    out["csf"] = float(csf_level)
    return {k: out[k] for k in ("csf", "gm", "wm")}


def noise_sd(intensity: np.ndarray, wm_posterior: np.ndarray, region: np.ndarray) -> float:
    """Noise standard deviation of a T1w: robust SD (1.4826 MAD) in the white-matter core.

    The core is where the WM posterior exceeds 0.95, eroded by one voxel so that no
    voxel of it touches another tissue (a partial-volume voxel would widen the spread).

    Parameters
    ----------
    intensity : numpy.ndarray
        Bias-corrected T1w.
    wm_posterior : numpy.ndarray
        WM posterior (same grid).
    region : numpy.ndarray of bool
        The brain mask.

    Returns
    -------
    float
        The noise SD in intensity units; 0 when the core has fewer than 50 voxels.
    """
    from scipy import ndimage

    core = ndimage.binary_erosion(wm_posterior > 0.95) & region
    if core.sum() < 50:
        return 0.0
    values = intensity[core]
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def _mixel_fraction(value: np.ndarray, low: float, high: float, sigma: float,
                    iterations: int = 5) -> np.ndarray:
    """Return the expected fraction of the brighter class under the mixel model.

    A voxel of the pair is pure ``low``, pure ``high`` or a mixture with a fraction uniform
    on [0, 1], observed with Gaussian noise ``sigma``; the weights of the three cases are
    fitted by EM over the voxels of the pair. The posterior mean of the fraction keeps noisy
    pure tissue (nearly) pure, which clipped linear unmixing does not (noise beyond a pure
    level is cut off, noise on the other side becomes the neighbouring class).
    """
    from scipy.special import ndtr

    span = max(high - low, 1e-6)
    t = (value - low) / span
    s = sigma / span
    like_low = np.exp(-0.5 * (t / s) ** 2)
    like_high = np.exp(-0.5 * ((t - 1.0) / s) ** 2)
    # mixture: N(y; low + a * span, sigma) integrated over a in [0, 1], on the scale of the pure terms
    lower, upper = -t / s, (1.0 - t) / s
    mass = np.maximum(ndtr(upper) - ndtr(lower), 1e-12)
    like_mix = np.sqrt(2 * np.pi) * s * mass

    def density(z):
        return np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)

    mean_mix = np.clip(t + s * (density(lower) - density(upper)) / mass, 0.0, 1.0)
    weights = np.full(3, 1.0 / 3.0)
    for _ in range(max(int(iterations), 1)):
        joint = np.stack([weights[0] * like_low, weights[1] * like_high, weights[2] * like_mix])
        resp = joint / np.maximum(joint.sum(axis=0), 1e-300)
        weights = resp.mean(axis=1)
    return resp[1] + resp[2] * mean_mix


def partial_volume(intensity: np.ndarray, posteriors: dict, levels: dict,
                   region: np.ndarray, *, sigma: float = 0.0,
                   excluded: dict | None = None) -> dict:
    """Tissue fractions per voxel by unmixing the two most probable classes.

    A voxel whose intensity lies between the pure intensities of its two most probable
    classes is a mixture of them in proportion to where it lies (the partial-volume model
    of FSL FAST and SPM). The posteriors choose *which* classes mix; the intensity says
    *how much* of each. With ``sigma`` > 0 (the image noise, :func:`noise_sd`) the fraction
    is the posterior mean under the mixel model (a voxel is pure or a uniform mixture, seen
    through Gaussian noise; :func:`_mixel_fraction`), which does not turn noise around a
    pure level into the neighbouring class; with ``sigma`` 0 it is the clipped linear
    unmixing.

    Parameters
    ----------
    intensity : numpy.ndarray
        Bias-corrected T1w.
    posteriors : dict of numpy.ndarray
        Class posteriors (e.g. Atropos).
    levels : dict
        Pure intensity per class (:func:`tissue_levels`).
    region : numpy.ndarray of bool
        Voxels to unmix; fractions are 0 elsewhere.
    sigma : float
        Noise SD of the intensity (0: linear unmixing).
    excluded : dict of numpy.ndarray of bool, optional
        Class name → voxels where that class cannot be one of the pair (e.g. GM where the
        template has no grey matter: a CSF/WM wall of a ventricle has GM-like intensity).

    Returns
    -------
    dict
        Class name → fraction (float32, summing to 1 inside ``region``).
    """
    names = list(posteriors)
    stack = np.stack([posteriors[n][region] for n in names])
    for name, where in (excluded or {}).items():
        k = names.index(name)
        stack[k] = np.where(where[region], -1.0, stack[k])
    order = np.argsort(-stack, axis=0)
    first, second = order[0], order[1]
    mu = np.asarray([levels[n] for n in names], dtype=np.float64)
    value = intensity[region].astype(np.float64)
    low = np.where(mu[first] <= mu[second], first, second)
    high = np.where(mu[first] <= mu[second], second, first)
    frac_high = np.zeros(value.size)
    pair = low * len(names) + high
    for code in np.unique(pair):
        sel = pair == code
        a, b = divmod(int(code), len(names))
        span = mu[b] - mu[a]
        if span <= 1e-6:
            continue
        if sigma > 0:
            frac_high[sel] = _mixel_fraction(value[sel], mu[a], mu[b], float(sigma))
        else:
            frac_high[sel] = np.clip((value[sel] - mu[a]) / span, 0.0, 1.0)
    fractions = np.zeros_like(stack, dtype=np.float32)
    cols = np.arange(value.size)
    fractions[high, cols] = frac_high
    fractions[low, cols] += 1.0 - frac_high
    out = {}
    for k, n in enumerate(names):
        full = np.zeros(intensity.shape, np.float32)
        full[region] = fractions[k]
        out[n] = full
    return out
