"""The structural pipeline for one T1w, as a function of images (no file naming here).

:func:`process_t1w` chains the steps below and returns every image and number the
stage writes; :mod:`.stage` names and saves them. The template is the MNI ICBM152
2009a nonlinear symmetric T1 that nilearn ships, with its tissue maps
(:func:`~.template.template`).

1. N4 bias-field correction (:func:`~.bias.n4`).
2. Registration to the template (:func:`~.registration.register`): rigid → affine →
   SyN at ``registration.template_resolution``, each step starting from the previous.
3. Brain mask: the template brain mask carried back to the T1w (linear
   interpolation, > 0.5).
4. Tissue classes (:func:`~.segmentation.segment`): Atropos with the template's
   GM/WM/CSF priors carried back to the T1w; with ``tissue_fractions:
   partial_volume`` the posteriors become fractions (:mod:`.partial_volume`).
5. MNI-space maps (:func:`warp_to_template`): T1w, mask and tissue probabilities
   resampled to the output grid; GM (and CSF) modulated by the Jacobian determinant
   of the T1w → MNI mapping (:func:`~.jacobian.jacobian_determinant`), so that the sum
   of a modulated map times the voxel volume is the native tissue volume.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..antsutils import resampled, to_ants, to_nibabel
from ..exceptions import ProcessingError
from ..templates import template
from .bias import n4
from .jacobian import jacobian_determinant
from .partial_volume import noise_sd, partial_volume, tissue_levels
from .registration import Registration, register
from .segmentation import extracerebral_csf, segment

__all__ = ["AnatResult", "process_t1w", "warp_to_template"]

logger = logging.getLogger(__name__)


@dataclass
class AnatResult:
    """Everything :func:`process_t1w` produces (nibabel images unless noted)."""

    t1w: object
    brain_mask: object
    gm: object
    wm: object
    csf: object
    t1w_mni: object
    brain_mask_mni: object
    gm_mni: object
    wm_mni: object
    csf_mni: object
    gm_modulated_mni: object
    csf_modulated_mni: object
    jacobian_mni: object
    registration: Registration
    metrics: dict = field(default_factory=dict)


def _null_step(name):
    return contextlib.nullcontext()


def warp_to_template(image, reference, transforms, *, interpolator="linear"):
    """Resample a native-space ANTsImage onto ``reference`` (an ANTsImage) through ``transforms``."""
    import ants

    return ants.apply_transforms(reference, image, list(transforms), interpolator=interpolator)


def _segment(t1, tmpl, reg, config):
    """Brain mask and tissue maps of the T1w (native ANTsImages) and segmentation facts.

    Atropos inside the brain mask with the template's priors carried back through
    ``reg.inverse``; with ``config.tissue_fractions == "partial_volume"`` the posteriors
    become tissue fractions (:func:`~brainage.anat.partial_volume.partial_volume`). With
    ``config.intracranial_margin_mm`` > 0 the CSF between brain and skull
    (:func:`~brainage.anat.segmentation.extracerebral_csf`) is added to the CSF map, so it
    counts in CSF and TIV.
    """
    import ants

    grid = resampled(t1, config.segmentation_resolution)

    def back(img):
        return ants.apply_transforms(grid, to_ants(img), reg.inverse, interpolator="linear")

    def full(img):  # from the segmentation grid to the T1w grid
        if grid is t1:
            return img
        return ants.resample_image_to_target(img, t1, interp_type="linear")

    mask_prob = back(tmpl["mask"])
    priors = [back(tmpl[k]) for k in ("csf", "gm", "wm")]
    seg = segment(grid, ants.threshold_image(mask_prob, 0.5, 2.0), priors,
                  iterations=config.atropos_iterations,
                  prior_weight=config.atropos_prior_weight, mrf=config.atropos_mrf)
    mask = ants.threshold_image(full(mask_prob), 0.5, 2.0)
    brain = mask.numpy() > 0
    if grid is not t1:
        seg = {k: t1.new_image_like(full(v).numpy() * brain) for k, v in seg.items()}
        priors = [full(p) for p in priors]
    intensity = t1.numpy()
    info = {}
    shell = None
    if config.intracranial_margin_mm > 0:
        shell, info["extracerebral"] = extracerebral_csf(
            intensity, brain, t1.spacing, config.intracranial_margin_mm)
    if config.tissue_fractions == "partial_volume":
        arrays = {k: v.numpy() for k, v in seg.items()}
        levels = tissue_levels(intensity, arrays, brain,
                               csf_level=info.get("extracerebral", {}).get("csf_level"))
        info["tissue_levels"] = {k: round(v, 4) for k, v in levels.items()}
        sigma = noise_sd(intensity, arrays["wm"], brain)
        info["noise_sd"] = round(sigma, 4)
        no_gm = priors[1].numpy() < config.gm_prior_min
        seg = {k: t1.new_image_like(v) for k, v in
               partial_volume(intensity, arrays, levels, brain, sigma=sigma,
                              excluded={"gm": no_gm}).items()}
    if shell is not None:
        seg["csf"] = t1.new_image_like((seg["csf"].numpy() * brain + shell).astype(np.float32))
    logger.debug("segmentation %s", info)
    return mask, seg, info


def process_t1w(t1w_img, config, work_dir, *, step=_null_step, tissue=None) -> AnatResult:
    """Run N4, registration, segmentation and MNI resampling on one T1w.

    Parameters
    ----------
    t1w_img : nibabel.Nifti1Image
        A checked, RAS-oriented T1w (:func:`brainage.imageio.load_checked`).
    config : brainage.config.AnatConfig
        The ``anat`` section.
    work_dir : path-like
        Scratch folder (transform files).
    step : callable, optional
        ``step(name)`` returns a context manager timing a step (``ctx.step``).
    tissue : dict, optional
        Precomputed native ``brain_mask``, ``gm``, ``wm``, ``csf`` nibabel images (fMRIPrep
        derivatives): N4 and Atropos are skipped and these are used instead.

    Returns
    -------
    AnatResult

    Raises
    ------
    ProcessingError
        When an ANTs step fails.
    """
    import ants

    work = Path(work_dir)
    reg_cfg = config.registration
    tmpl_reg = template(reg_cfg.template_resolution)
    tmpl_out = template(config.output_resolution)
    t1 = to_ants(t1w_img)
    try:
        if tissue is None:
            with step("n4"):
                t1, _ = n4(t1, shrink_factor=config.n4_shrink_factor,
                           iterations=config.n4_iterations)
        # intensity scale: robust 99th percentile of the head to 1 (the template's range)
        arr = t1.numpy()
        scale = float(np.percentile(arr[arr > 0], 99)) if np.any(arr > 0) else 1.0
        t1 = t1.new_image_like(arr / max(scale, 1e-6))
        fixed = to_ants(tmpl_reg["t1"])
        fixed_mask = ants.iMath(to_ants(tmpl_reg["mask"]), "MD", 3)
        with step("registration"):
            reg = register(
                resampled(t1, reg_cfg.moving_resolution), fixed, steps=reg_cfg.steps,
                syn_iterations=reg_cfg.syn_iterations,
                linear_iterations=reg_cfg.linear_iterations,
                linear_shrink_factors=reg_cfg.linear_shrink_factors,
                work_dir=work / "xfm", fixed_mask=fixed_mask,
            )
        with step("segmentation"):
            if tissue is None:
                mask, seg, seg_info = _segment(t1, tmpl_reg, reg, config)
            else:
                seg_info = {}
                mask = to_ants(tissue["brain_mask"])
                seg = {k: to_ants(tissue[k]) for k in ("csf", "gm", "wm")}
        with step("resample"):
            ref = to_ants(tmpl_out["t1"])
            t1_mni = warp_to_template(t1, ref, reg.forward)
            mask_mni = warp_to_template(mask, ref, reg.forward)
            probs_mni = {k: warp_to_template(v, ref, reg.forward) for k, v in seg.items()}
            jac = jacobian_determinant(reg.forward, ref, t1)
    except ProcessingError:
        raise
    except (RuntimeError, ValueError, OSError) as exc:
        raise ProcessingError(f"ANTs failed during structural processing: {exc}") from exc

    def nib(img, dtype=np.float32):
        return to_nibabel(img, dtype)

    probs = {k: np.clip(v.numpy(), 0, 1) for k, v in probs_mni.items()}
    mask_arr = (mask_mni.numpy() > 0.5).astype(np.uint8)
    affine = tmpl_out["t1"].affine

    import nibabel

    def on_grid(arr, dtype=np.float32):
        # ANTs writes LPS; convert through nibabel so the grid equals the template's
        img = to_nibabel(ref.new_image_like(arr.astype(np.float32)), dtype)
        if not np.allclose(img.affine, affine, atol=1e-3):
            raise ProcessingError("internal error: MNI grid mismatch after resampling")
        return nibabel.Nifti1Image(np.asarray(img.dataobj).astype(dtype), affine)

    result = AnatResult(
        t1w=nib(t1),
        brain_mask=nib(mask, np.uint8),
        gm=nib(seg["gm"]),
        wm=nib(seg["wm"]),
        csf=nib(seg["csf"]),
        t1w_mni=on_grid(t1_mni.numpy()),
        brain_mask_mni=on_grid(mask_arr, np.uint8),
        gm_mni=on_grid(probs["gm"]),
        wm_mni=on_grid(probs["wm"]),
        csf_mni=on_grid(probs["csf"]),
        gm_modulated_mni=on_grid(probs["gm"] * jac),
        csf_modulated_mni=on_grid(probs["csf"] * jac),
        jacobian_mni=on_grid(jac),
        registration=reg,
        metrics={"segmentation": seg_info},
    )
    return result
