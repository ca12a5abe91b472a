"""T1w processing with ANTs (antspyx): N4, registration to MNI, Atropos tissue classes.

The template is the MNI ICBM152 2009a nonlinear symmetric T1 that nilearn ships
(brain-extracted, 1 mm), with its GM and WM probability maps; nothing is
downloaded. The steps:

1. N4 bias-field correction (:func:`n4`): ITK's N4 estimates the field on a
   copy shrunk by ``n4_shrink_factor`` and applies it at full resolution.
2. Registration (:func:`register`): rigid → affine → SyN to the template at
   ``registration.template_resolution``, each step starting from the previous
   one (``ants.registration``; linear steps use Mattes mutual information, SyN
   uses Mattes MI too, which is robust to the missing skull of the template).
   The forward and inverse transforms are saved as ANTs composite HDF5 files.
3. Brain mask: the template brain mask carried back to the T1w (linear
   interpolation, > 0.5).
4. Tissue classes (:func:`segment`): Atropos initialised with the template's
   GM/WM/CSF priors carried back to the T1w, prior weight 0.25, MRF smoothing.
5. MNI-space maps (:func:`to_template`): T1w, mask and tissue probabilities
   resampled to the output grid; GM (and CSF) modulated by the Jacobian
   determinant of the T1w → MNI mapping so that the sum of a modulated map
   times the voxel volume is the native tissue volume.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..antsutils import ants_random_seed
from ..exceptions import ProcessingError

__all__ = [
    "Registration",
    "extracerebral_csf",
    "head_mask",
    "jacobian_determinant",
    "n4",
    "noise_sd",
    "partial_volume",
    "register",
    "resampled",
    "segment",
    "template",
    "tissue_levels",
    "to_ants",
    "to_nibabel",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- conversions
def to_ants(img):
    """Convert a 3D nibabel image to an ANTsImage (float32; units mm and s, as antspyx wants)."""
    import ants
    import nibabel as nib

    out = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    out.header.set_xyzt_units("mm", "sec")  # else antspyx prints two warnings per conversion
    return ants.from_nibabel_nifti(out)


def to_nibabel(image, dtype=np.float32):
    """Convert an ANTsImage to a nibabel image of ``dtype``."""
    import ants
    import nibabel as nib

    out = ants.to_nibabel_nifti(image)
    data = np.asarray(out.dataobj).astype(dtype)
    img = nib.Nifti1Image(data, out.affine)
    img.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm", "sec")
    return img


# --------------------------------------------------------------------------- template
@functools.lru_cache(maxsize=8)
def template(resolution: float) -> dict:
    """Load the nilearn MNI152 2009a template on a grid of ``resolution`` mm.

    Parameters
    ----------
    resolution : float
        Voxel size in mm (1 gives the shipped 197 x 233 x 189 grid).

    Returns
    -------
    dict
        ``t1``, ``mask``, ``gm``, ``wm``, ``csf`` as nibabel images (float32) on the
        same grid; ``csf`` is the brain mask minus GM and WM (clipped at 0).
    """
    import nibabel as nib
    from nilearn import datasets

    res = float(resolution)
    loaders = {
        "t1": datasets.load_mni152_template,
        "gm": datasets.load_mni152_gm_template,
        "wm": datasets.load_mni152_wm_template,
        "mask": datasets.load_mni152_brain_mask,
    }
    out = {}
    if res.is_integer():
        for name, load in loaders.items():
            img = load(resolution=int(res))
            out[name] = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    else:
        from nilearn.image import resample_img

        ref = datasets.load_mni152_template(resolution=1)
        shape = tuple(int(np.ceil(s / res)) for s in ref.shape)
        affine = ref.affine.copy()
        affine[:3, :3] = np.diag([res] * 3)
        for name, load in loaders.items():
            img = resample_img(
                load(resolution=1), target_affine=affine, target_shape=shape,
                interpolation="continuous", force_resample=True, copy_header=True,
            )
            out[name] = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), affine)
        out["mask"] = nib.Nifti1Image((out["mask"].get_fdata() > 0.5).astype(np.float32), affine)
    t1 = out["t1"]
    g = out["gm"].get_fdata(dtype=np.float32)
    w = out["wm"].get_fdata(dtype=np.float32)
    m = out["mask"].get_fdata(dtype=np.float32)
    total = g + w
    scale = np.where(total > 1, 1 / np.maximum(total, 1e-6), 1.0)
    g, w = g * scale, w * scale
    csf = np.clip(m - g - w, 0, 1) * (m > 0)
    out["gm"] = nib.Nifti1Image(g, t1.affine)
    out["wm"] = nib.Nifti1Image(w, t1.affine)
    out["csf"] = nib.Nifti1Image(csf.astype(np.float32), t1.affine)
    return out


# --------------------------------------------------------------------------- N4
def resampled(image, resolution: float | None):
    """Return a copy of ``image`` on an isotropic ``resolution`` mm grid, or ``image`` itself.

    Only resamples when ``resolution`` is coarser than the finest voxel size, so a
    T1w that is already at or below that resolution is used as it is.
    """
    import ants

    if resolution is None or min(image.spacing) >= float(resolution) - 1e-6:
        return image
    return ants.resample_image(image, (float(resolution),) * 3, use_voxels=False, interp_type=0)


def head_mask(image, shrink_factor: int = 4):
    """Head (foreground) mask for N4: ``ants.get_mask`` on a shrunk copy, brought back.

    ``get_mask``'s morphological clean-up costs ~20 s on a 1 mm full-head image; N4
    estimates on the shrunk grid anyway, so the mask is computed there.
    """
    import ants

    factor = max(int(shrink_factor), 1)
    if factor == 1:
        return ants.get_mask(image, cleanup=2)
    small = ants.resample_image(image, [s * factor for s in image.spacing], use_voxels=False,
                                interp_type=0)
    mask = ants.get_mask(small, cleanup=2)
    return ants.resample_image_to_target(mask, image, interp_type="nearestNeighbor")


def n4(image, *, shrink_factor: int = 4, iterations=(50, 50, 30)):
    """N4 bias-field correction (estimated on a shrunk copy, applied at full resolution).

    Parameters
    ----------
    image : ants.ANTsImage
        The T1w.
    shrink_factor : int
        Shrink factor of the estimation grid.
    iterations : sequence of int
        Iterations per fitting level.

    Returns
    -------
    corrected : ants.ANTsImage
    bias : ants.ANTsImage
        The estimated multiplicative field.
    """
    import ants

    head = head_mask(image, shrink_factor)
    bias = ants.n4_bias_field_correction(
        image,
        mask=head,
        shrink_factor=int(shrink_factor),
        convergence={"iters": list(iterations), "tol": 1e-6},
        return_bias_field=True,
    )
    bias_arr = bias.numpy()
    corrected = image.new_image_like(image.numpy() / np.maximum(bias_arr, 1e-6))
    return corrected, bias


# --------------------------------------------------------------------------- registration
@dataclass(frozen=True)
class Registration:
    """Result of :func:`register`.

    Attributes
    ----------
    forward : list of str
        Transform files mapping T1w → template (``ants.apply_transforms`` order,
        fixed = template).
    inverse : list of str
        Transform files mapping template → T1w (fixed = T1w).
    forward_composite, inverse_composite : str
        The same as single ANTs composite HDF5 files.
    """

    forward: list
    inverse: list
    forward_composite: str
    inverse_composite: str


def _linear_params(level_iters: int, shrink_factors=(8, 4, 2, 1)) -> dict:
    shrink = tuple(int(f) for f in shrink_factors)
    n = len(shrink)
    iters = [level_iters] * max(n - 2, 0) + [max(level_iters // 2, 1)] * (n >= 2) + [0]
    iters = tuple(iters[-n:]) if n > 1 else (level_iters,)
    return {
        "aff_iterations": iters,
        "aff_shrink_factors": shrink,
        "aff_smoothing_sigmas": tuple(max(int(np.log2(f)), 0) if f > 1 else 0 for f in shrink),
        "aff_sampling": 32,
        "aff_random_sampling_rate": 0.25,
    }


def register(
    moving,
    fixed,
    *,
    steps=("rigid", "affine", "syn"),
    syn_iterations=(40, 20, 0),
    linear_iterations: int = 200,
    linear_shrink_factors=(8, 4, 2, 1),
    work_dir,
    fixed_mask=None,
    seed: int = 1,
):
    """Register a T1w to the template: rigid → affine → SyN, each step configurable.

    Parameters
    ----------
    moving : ants.ANTsImage
        The (bias-corrected) T1w.
    fixed : ants.ANTsImage
        The template.
    steps : sequence of {"rigid", "affine", "syn"}
        Steps run in order, each initialised by the previous one.
    syn_iterations : sequence of int
        SyN iterations per level (shrink factors 4, 2, 1 … from coarse to fine).
    linear_iterations : int
        Iterations of the rigid and affine steps at the coarse levels (half at the
        second-finest level, none at the finest).
    linear_shrink_factors : sequence of int
        Shrink factor per rigid/affine level (smoothing sigma log2 of it, in voxels).
    work_dir : path-like
        Where the transform files are written.
    fixed_mask : ants.ANTsImage, optional
        Metric mask in template space (a dilated brain mask).
    seed : int
        Random sampling seed (deterministic results).

    Returns
    -------
    Registration

    Raises
    ------
    ProcessingError
        If no step is given or ANTs fails.
    """
    steps = list(steps)
    if not steps:
        raise ProcessingError("anat.registration.steps is empty; give at least ['rigid']")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    with ants_random_seed(seed):
        result, initial = _run_steps(steps, fixed, moving, work, fixed_mask, syn_iterations,
                                     linear_iterations, linear_shrink_factors)
    forward = list(result["fwdtransforms"])
    inverse = list(result["invtransforms"])
    if steps[-1] == "syn" and initial is None:
        # SyNOnly without a linear initialisation: the warp alone
        forward = [f for f in forward if f.endswith(".nii.gz")]
        inverse = [f for f in inverse if f.endswith(".nii.gz")]
    fwd_h5 = str(work / "T1w_to_template.h5")
    inv_h5 = str(work / "template_to_T1w.h5")
    _write_composite(forward, fixed, fwd_h5)
    _write_composite(inverse, moving, inv_h5)
    return Registration(forward, inverse, fwd_h5, inv_h5)


def _run_steps(steps, fixed, moving, work, fixed_mask, syn_iterations, linear_iterations,
               linear_shrink_factors):
    """Run the registration steps in order; return the last result and the linear transform."""
    import ants

    initial = None
    result = None
    common = {"verbose": False}
    for step in steps:
        prefix = str(work / f"{step}_")
        if step in ("rigid", "affine"):
            kind = "Rigid" if step == "rigid" else "Affine"
            result = ants.registration(
                fixed, moving, type_of_transform=kind, initial_transform=initial,
                outprefix=prefix, mask=fixed_mask,
                **_linear_params(linear_iterations, linear_shrink_factors), **common,
            )
            initial = result["fwdtransforms"][0]
        elif step == "syn":
            iters = tuple(int(i) for i in syn_iterations)
            result = ants.registration(
                fixed, moving, type_of_transform="SyNOnly", initial_transform=initial,
                outprefix=prefix, mask=fixed_mask, reg_iterations=iters,
                syn_metric="mattes", syn_sampling=32, grad_step=0.2, flow_sigma=3,
                total_sigma=0, **common,
            )
        else:  # pragma: no cover - the config only allows the three names
            raise ProcessingError(f"unknown registration step {step!r}")
    return result, initial


def _write_composite(transforms, reference, path: str) -> None:
    """Write a transform chain as one ANTs composite HDF5 file (``antsApplyTransforms``)."""
    import ants

    ants.apply_transforms(reference, reference, list(transforms), compose=path)
    if not Path(path).is_file():
        raise ProcessingError(f"ANTs did not write the composite transform {path}")


# --------------------------------------------------------------------------- segmentation
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
      :func:`extracerebral_csf`, where CSF is not mixed with GM), else the peak of the
      CSF posterior-weighted histogram.

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


# --------------------------------------------------------------------------- jacobian
def jacobian_determinant(forward, fixed, moving):
    """Jacobian determinant of the T1w → template mapping, on the template grid.

    Computed from the transform chain itself: the physical coordinates of the T1w
    are pulled back onto the template grid with ``ants.apply_transforms`` (exact for
    linear functions), giving the mapping x → T(x) at every template voxel; its
    derivative by finite differences gives |det DT(x)| — the native volume that one
    unit of template volume corresponds to.

    Parameters
    ----------
    forward : list of str
        T1w → template transforms (fixed = template).
    fixed : ants.ANTsImage
        Template grid.
    moving : ants.ANTsImage
        T1w grid.

    Returns
    -------
    numpy.ndarray
        Determinant per template voxel (0 where the T1w does not reach).
    """
    import ants

    coords = []
    idx = np.indices(moving.shape, dtype=np.float64).reshape(3, -1)
    direction = np.asarray(moving.direction) * np.asarray(moving.spacing)[None, :]
    phys = direction @ idx + np.asarray(moving.origin)[:, None]
    inside = moving.new_image_like(np.ones(moving.shape, dtype=np.float32))
    for axis in range(3):
        cmap = moving.new_image_like(phys[axis].reshape(moving.shape).astype(np.float32))
        coords.append(ants.apply_transforms(fixed, cmap, forward, interpolator="linear").numpy())
    cover = ants.apply_transforms(fixed, inside, forward, interpolator="linear").numpy() > 0.999
    spacing = np.asarray(fixed.spacing, dtype=float)
    jac = np.empty((*fixed.shape, 3, 3), dtype=np.float64)
    for i, c in enumerate(coords):
        grads = np.gradient(c.astype(np.float64), *spacing)
        for j in range(3):
            jac[..., i, j] = grads[j]
    det = np.abs(np.linalg.det(jac))
    # the grid's own direction cosines have |det| 1, so no correction is needed
    det[~cover] = 0.0
    return det.astype(np.float32)
