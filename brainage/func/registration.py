"""EPI → T1w → MNI: rigid registration of the EPI reference, then one resampling per volume.

The EPI reference is registered rigidly (ANTs, Mattes mutual information) to
the participant's preprocessed T1w. Its transform is composed with the
structural stage's T1w → MNI composite transform and each volume's motion
transform, so every volume is interpolated once, straight from the native
EPI grid onto the MNI grid.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..exceptions import InputFileError

__all__ = ["check_overlap", "mni_grid", "register_epi_to_t1", "resample_to_mni", "to_ants"]

logger = logging.getLogger(__name__)


def to_ants(img):
    """Convert a nibabel image to an ANTs image (units set to mm and s for antspyx)."""
    import ants
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    img.header.set_xyzt_units("mm", "sec")
    return ants.from_nibabel_nifti(img)


def mni_grid(resolution: float):
    """Load the MNI152NLin2009aSym template that nilearn ships onto a ``resolution`` mm grid.

    Returns
    -------
    template : nibabel.Nifti1Image
        Brain-extracted T1 template resampled to the grid.
    mask : nibabel.Nifti1Image
        Its brain mask on the same grid.
    """
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template
    from nilearn.image import resample_img

    t1 = load_mni152_template(resolution=1)
    target = np.diag([resolution] * 3 + [1.0])
    # the template's bounding box, snapped to the new grid
    corner = t1.affine[:3, 3]
    target[:3, 3] = corner
    extent = np.array(t1.shape[:3]) * np.abs(np.diag(t1.affine)[:3])
    shape = tuple(int(np.ceil(e / resolution)) for e in extent)
    template = resample_img(t1, target_affine=target, target_shape=shape,
                            interpolation="continuous", force_resample=True, copy_header=True)
    mask = resample_img(load_mni152_brain_mask(resolution=1), target_affine=target,
                        target_shape=shape, interpolation="nearest", force_resample=True,
                        copy_header=True)
    return template, mask


def check_overlap(bold_img, brain_mask_img, bold_path, min_fraction: float = 0.5) -> float:
    """Fraction of the T1w brain mask inside the BOLD field of view (header geometry).

    Raises
    ------
    InputFileError
        Less than ``min_fraction`` of the brain lies inside the BOLD field of view.
    """
    mask = np.asarray(brain_mask_img.dataobj) > 0
    ijk = np.argwhere(mask)
    if len(ijk) > 20000:
        ijk = ijk[:: len(ijk) // 20000]
    world = brain_mask_img.affine[:3, :3] @ ijk.T + brain_mask_img.affine[:3, 3:4]
    vox = np.linalg.inv(bold_img.affine)[:3, :3] @ world + np.linalg.inv(bold_img.affine)[:3, 3:4]
    shape = np.array(bold_img.shape[:3])[:, None]
    inside = np.all((vox > -0.5) & (vox < shape - 0.5), axis=0)
    fraction = float(inside.mean()) if inside.size else 0.0
    if fraction < min_fraction:
        raise InputFileError(
            bold_path,
            f"the BOLD field of view covers only {100 * fraction:.0f}% of the brain seen in the "
            "T1w (scanner coordinates of the two headers)",
            "Check the BOLD header's qform/sform (a wrong origin or a conversion error) and that "
            "the run belongs to this participant",
        )
    return fraction


def register_epi_to_t1(epi_ref, t1w, brain_mask, work_dir) -> dict:
    """Rigidly register the EPI reference to the T1w (ANTs, Mattes MI).

    Parameters
    ----------
    epi_ref : nibabel.Nifti1Image
        3D EPI reference (e.g. the motion reference or the run's mean).
    t1w, brain_mask : nibabel.Nifti1Image
        The participant's preprocessed T1w and brain mask.
    work_dir : path-like
        Where the transform is written.

    Returns
    -------
    dict
        ``transform`` (ANTs file mapping T1w points → EPI points), ``mutual_information``
        (ANTs MI of the registered pair in the brain, lower is better) and ``epi_in_t1``
        (ANTs image).
    """
    import ants

    fixed = to_ants(t1w) * to_ants(brain_mask)
    moving = to_ants(epi_ref)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    reg = ants.registration(
        fixed, moving, type_of_transform="Rigid", aff_metric="mattes",
        aff_iterations=(100, 50, 20), aff_shrink_factors=(4, 2, 1),
        aff_smoothing_sigmas=(2, 1, 0), aff_random_sampling_rate=0.25,
        outprefix=str(work / "epi2t1_"),
    )
    warped = reg["warpedmovout"]
    mi = float(ants.image_mutual_information(fixed, warped))
    return {"transform": reg["fwdtransforms"][0], "mutual_information": mi, "epi_in_t1": warped}


def resample_to_mni(bold_img, motion_transforms, epi_to_t1, t1_to_mni, mni_template, work_dir):
    """Resample every volume onto the MNI grid in one interpolation.

    Parameters
    ----------
    bold_img : nibabel.Nifti1Image
        4D native BOLD.
    motion_transforms : list of str
        Per-volume ANTs transforms (reference → volume).
    epi_to_t1 : str
        ANTs transform mapping T1w points → EPI reference points.
    t1_to_mni : str
        Structural composite transform (MNI points → T1w points, the one that
        resamples the T1w into MNI).
    mni_template : nibabel.Nifti1Image
        Target grid.
    work_dir : path-like
        Scratch folder for the composed displacement field.

    Returns
    -------
    data : numpy.ndarray of float32, shape (*grid, T)
    coverage : numpy.ndarray of bool, shape grid
        Voxels inside the BOLD field of view in every volume.
    """
    import ants

    fixed = to_ants(mni_template)
    epi_ref = to_ants(bold_img.slicer[..., 0])
    work = Path(work_dir)
    # ANTs lists transforms from the fixed side to the moving side: MNI ← T1w ← EPI
    # reference ← volume. MNI ← T1w ← EPI reference is composed once into one field.
    composed = ants.apply_transforms(
        fixed=fixed, moving=epi_ref, transformlist=[t1_to_mni, epi_to_t1],
        compose=str(work / "mni2epi_"),
    )
    data = np.asarray(bold_img.dataobj, dtype=np.float32)
    out = np.empty((*mni_template.shape[:3], data.shape[3]), np.float32)
    ones = epi_ref.new_image_like(np.ones(epi_ref.shape, np.float32))
    coverage = np.ones(mni_template.shape[:3], bool)
    for k in range(data.shape[3]):
        vol = epi_ref.new_image_like(np.ascontiguousarray(data[..., k]))
        chain = [composed, motion_transforms[k]]
        out[..., k] = ants.apply_transforms(fixed, vol, chain, interpolator="linear").numpy()
        if k in (0, data.shape[3] // 2, data.shape[3] - 1):
            cov = ants.apply_transforms(fixed, ones, chain, interpolator="linear").numpy()
            coverage &= cov > 0.99
    return out, coverage
