"""Structural aging of the simulator: aged tissue maps, intensities, bias field, the T1w image."""

from __future__ import annotations

import numpy as np

from .anatomy import Templates
from .geometry import native_points_to_model, warp, warp_coordinates

# Head layers outside the brain envelope: distance (mm) -> T1 intensity relative
# to white matter (CSF rim, inner table, diploe, outer table, scalp, air).
_HEAD_T1_D = (0.0, 2.5, 3.0, 4.5, 5.0, 7.5, 8.0, 9.5, 10.0, 15.0, 16.0)
_HEAD_T1_I = (0.25, 0.25, 0.07, 0.07, 0.35, 0.35, 0.07, 0.07, 0.78, 0.78, 0.0)
# The same layers in a T2*-weighted EPI (relative to CSF).
_HEAD_EPI_I = (1.0, 1.0, 0.05, 0.05, 0.1, 0.1, 0.05, 0.05, 0.3, 0.3, 0.0)


def aged_tissues(tpl: Templates, structural_age: float, params, modulation) -> dict:
    """Tissue probabilities of one participant in MNI space.

    Grey matter is lost in proportion to the structural age above
    ``age_reference`` with regional weights, from the side of the cortex that faces
    CSF (``tpl.gm_exposure``: voxels next to sulci lose more, deep grey matter
    little, the GM-weighted mean is the regional rate); lost grey matter becomes
    (sulcal) CSF. The lateral ventricles grow outwards by
    ``ventricle_growth_mm_per_year`` per year, turning the tissue they reach
    into CSF. An age-independent smooth modulation (±6 %) of grey matter adds
    individual anatomy.

    Parameters
    ----------
    tpl : Templates
    structural_age : float
        Latent structural age (years).
    params : SimulationParams
    modulation : numpy.ndarray
        Individual smooth grey-matter modulation on the model grid (from
        :meth:`Deformation.dense`).

    Returns
    -------
    dict
        ``gm, wm, csf, ventricles`` arrays on the model grid.
    """
    years = max(0.0, structural_age - params.age_reference)
    gm = tpl.gm * (1.0 + 0.06 * np.clip(modulation, -2.5, 2.5)).astype(np.float32)
    gm = np.minimum(gm, tpl.mask - tpl.wm)
    exposure = tpl.weights if tpl.gm_exposure is None else tpl.weights * tpl.gm_exposure
    loss = np.clip(params.gm_loss_per_year * years * exposure, 0.0, 0.9)
    gm_aged = gm * (1.0 - loss)
    growth = params.ventricle_growth_mm_per_year * years
    shell = np.clip(growth - tpl.ventricle_distance + 0.5, 0.0, 1.0) * tpl.mask
    shell *= 1.0 - tpl.ventricles
    gm_out = gm_aged * (1.0 - shell)
    wm_out = tpl.wm * (1.0 - shell)
    csf_out = np.clip(tpl.mask - gm_out - wm_out, 0.0, 1.0)
    ventricles = np.maximum(tpl.ventricles * csf_out, shell)
    return {
        "gm": gm_out.astype(np.float32),
        "wm": wm_out.astype(np.float32),
        "csf": csf_out.astype(np.float32),
        "ventricles": ventricles.astype(np.float32),
    }


def t1_intensity(tpl: Templates, tissues: dict, gm_contrast: float) -> np.ndarray:
    """T1w intensity (relative to white matter) of a head in MNI space."""
    brain = tissues["gm"] * gm_contrast + tissues["wm"] * 1.0 + tissues["csf"] * 0.25
    head = np.interp(tpl.head_distance, _HEAD_T1_D, _HEAD_T1_I).astype(np.float32)
    return np.where(tpl.mask > 0, brain, head).astype(np.float32)


def epi_intensity(tpl: Templates, tissues: dict) -> np.ndarray:
    """T2*-weighted EPI baseline (relative to CSF) of a head in MNI space."""
    brain = tissues["gm"] * 0.72 + tissues["wm"] * 0.55 + tissues["csf"] * 1.0
    head = np.interp(tpl.head_distance, _HEAD_T1_D, _HEAD_EPI_I).astype(np.float32)
    return np.where(tpl.mask > 0, brain, head).astype(np.float32)


def bias_field(coords, coefficients: np.ndarray, strength: float,
               radius: float = 120.0) -> np.ndarray:
    """Smooth multiplicative bias field ``exp(strength · p(x / radius))`` (quadratic p).

    ``coords`` are three broadcastable arrays of scanner x, y, z (mm).
    """
    x, y, z = (c / radius for c in coords)
    terms = (x, y, z, x * y, x * z, y * z, x * x - 0.33, y * y - 0.33, z * z - 0.33)
    poly = sum(c * t for c, t in zip(coefficients, terms))
    return np.exp(strength * poly).astype(np.float32)


def synthesize_t1(tpl: Templates, tissues: dict, *, shape, affine, pose, scale, deformation,
                  gm_contrast, noise, gain, bias_strength, rng) -> np.ndarray:
    """Image a participant's head on the native T1w grid.

    Returns
    -------
    numpy.ndarray of int16
        Intensities (white matter ≈ 700 · gain) with bias field and Rician noise.
    """
    from scipy import ndimage

    idx = native_points_to_model(tpl, affine, shape, pose, scale, deformation)
    value = ndimage.map_coordinates(t1_intensity(tpl, tissues, gm_contrast), idx, order=1,
                                    mode="constant", cval=0.0)
    value *= np.float32(700.0 * gain)
    coefs = rng.standard_normal(9)
    coefs /= np.linalg.norm(coefs) / 1.5
    axes = [affine[i, i] * np.arange(shape[i]) + affine[i, 3] for i in range(3)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    value *= bias_field((x, y, z), coefs, bias_strength)
    sigma = noise * 700.0 * gain
    real = value + sigma * rng.standard_normal(value.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(value.shape, dtype=np.float32)
    return np.clip(np.rint(np.sqrt(real * real + imag * imag)), 0, 32767).astype(np.int16)


def native_volumes(tpl: Templates, tissues: dict, scale: float, displacement) -> dict:
    """Compute the true tissue volumes (ml) and per-label GM volumes of the participant's own head.

    The participant's head point ``h`` shows MNI point ``Φ(h)``; integrating a
    map over the head is ``s³ ∫ map(g + u(g)) dg``, evaluated on the model grid.
    """
    vox_ml = tpl.voxel_size**3 * scale**3 / 1000.0
    idx = warp_coordinates(tpl, displacement)
    warped = {key: warp(tissues[key], tpl, displacement, coordinates=idx) for key in
              ("gm", "wm", "csf", "ventricles")}
    volumes = {k: float(v.sum(dtype=np.float64) * vox_ml) for k, v in warped.items()}
    rim = np.interp(tpl.head_distance, (0.0, 2.5, 3.0), (1.0, 1.0, 0.0)) * (1.0 - tpl.mask)
    volumes["rim_csf"] = float(
        warp(rim.astype(np.float32), tpl, displacement, coordinates=idx).sum() * vox_ml
    )
    labels = warp(tpl.labels, tpl, displacement, order=0, coordinates=idx).astype(np.int64)
    values = tpl.label_table["index"].to_numpy()
    per_label = np.bincount(np.clip(labels, 0, None).ravel(), weights=warped["gm"].ravel(),
                            minlength=int(values.max()) + 1)
    volumes["labels"] = {int(v): float(per_label[v] * vox_ml) for v in values}
    return volumes
