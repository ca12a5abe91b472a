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

from ..antsutils import ants_random_seed, resampled, to_ants
from ..exceptions import InputFileError

__all__ = ["check_overlap", "register_epi_to_t1", "resample_to_mni"]

logger = logging.getLogger(__name__)


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


def register_epi_to_t1(epi_ref, t1w, brain_mask, work_dir, *, seed: int = 1) -> dict:
    """Rigidly register the EPI reference to the T1w (ANTs, Mattes MI).

    The skull-stripped T1w is matched on a copy at the EPI's voxel size (when that is
    coarser): detail finer than the EPI cannot guide a rigid fit of it, and the metric
    costs a fraction. On a demo participant (T1w 2.5 mm, EPI 4 mm) the fit takes 0.7 s
    instead of 3.2 s and moves no point within 70 mm of the centre by more than 0.2 mm.

    Parameters
    ----------
    epi_ref : nibabel.Nifti1Image
        3D EPI reference (e.g. the motion reference or the run's mean).
    t1w, brain_mask : nibabel.Nifti1Image
        The participant's preprocessed T1w and brain mask.
    work_dir : path-like
        Where the transform is written.
    seed : int
        ANTs random seed for the metric's sample positions: reruns give the same
        transform.

    Returns
    -------
    dict
        ``transform`` (ANTs file mapping T1w points → EPI points), ``mutual_information``
        (ANTs MI of the registered pair in the brain on the registration grid, lower is
        better) and ``epi_in_t1`` (ANTs image on that grid).
    """
    import ants

    moving = to_ants(epi_ref)
    fixed = resampled(to_ants(t1w) * to_ants(brain_mask), min(moving.spacing))
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    with ants_random_seed(seed):
        reg = ants.registration(
            fixed, moving, type_of_transform="Rigid", aff_metric="mattes",
            aff_iterations=(100, 50, 20), aff_shrink_factors=(4, 2, 1),
            aff_smoothing_sigmas=(2, 1, 0), aff_random_sampling_rate=0.25,
            outprefix=str(work / "epi2t1_"),
        )
    warped = reg["warpedmovout"]
    mi = float(ants.image_mutual_information(fixed, warped))
    return {"transform": reg["fwdtransforms"][0], "mutual_information": mi, "epi_in_t1": warped}


def resample_to_mni(bold_img, motion_affines, epi_to_t1, t1_to_mni, mni_template, work_dir,
                    mask=None):
    """Resample every volume onto the MNI grid in one interpolation.

    The spatial chain MNI ← T1w ← EPI reference is composed once by ANTs into a
    displacement field (:func:`ants.apply_transforms` with ``compose``), turned
    into the EPI-reference position of every MNI voxel; each volume then adds
    its own rigid motion (a 4x4 product) and is sampled with trilinear
    interpolation (:func:`scipy.ndimage.map_coordinates`). This equals
    ``ants.apply_transforms`` with the three transforms (tested) and avoids
    re-reading the composite transform for every volume.

    Parameters
    ----------
    bold_img : nibabel.Nifti1Image
        4D native BOLD.
    motion_affines : numpy.ndarray of shape (T, 4, 4)
        RAS maps reference → volume *k* (:attr:`MotionResult.affines`).
    epi_to_t1 : str
        ANTs transform mapping T1w points → EPI reference points.
    t1_to_mni : str
        Structural composite transform (MNI points → T1w points, the one that
        resamples the T1w into MNI).
    mni_template : nibabel.Nifti1Image
        Target grid.
    work_dir : path-like
        Scratch folder for the composed displacement field.
    mask : numpy.ndarray of bool, shape grid, optional
        Only these MNI voxels are sampled (the others are 0 and not covered); the
        template brain mask in the stage, about a third of the grid.

    Returns
    -------
    data : numpy.ndarray of float32, shape (*grid, T)
    coverage : numpy.ndarray of bool, shape grid
        MNI voxels inside the BOLD field of view in every volume.
    """
    from scipy import ndimage

    grid = mni_template.shape[:3]
    points = mni_to_epi_points(epi_to_t1, t1_to_mni, mni_template, bold_img, work_dir)
    where = np.flatnonzero(np.ones(int(np.prod(grid)), bool) if mask is None
                           else np.asarray(mask, bool).ravel())
    points = points[:, where]
    # volumes first, each one contiguous for map_coordinates
    volumes = np.moveaxis(np.asarray(bold_img.dataobj, dtype=np.float32), -1, 0).copy()
    shape = np.array(volumes.shape[1:])
    to_vox = np.linalg.inv(bold_img.affine)
    n_vol = volumes.shape[0]
    sampled = np.empty((len(where), n_vol), np.float32)
    covered = np.ones(len(where), bool)
    for k in range(n_vol):
        m = to_vox @ motion_affines[k]
        vox = m[:3, :3] @ points + m[:3, 3:4]
        covered &= np.all((vox >= 0.0) & (vox <= shape[:, None] - 1.0), axis=0)
        sampled[:, k] = ndimage.map_coordinates(volumes[k], vox, order=1, mode="nearest",
                                                prefilter=False)
    del volumes
    sampled[~covered] = 0.0  # outside the field of view in some volume
    out = np.zeros((int(np.prod(grid)), n_vol), np.float32)
    out[where] = sampled
    coverage = np.zeros(int(np.prod(grid)), bool)
    coverage[where] = covered
    return out.reshape(*grid, n_vol), coverage.reshape(grid)


def mni_to_epi_points(epi_to_t1, t1_to_mni, mni_template, bold_img, work_dir) -> np.ndarray:
    """EPI-reference RAS position (mm) of every MNI grid voxel, shape (3, n_voxels).

    ANTs lists transforms from the fixed side to the moving side (MNI ← T1w ← EPI
    reference); the chain is composed into one displacement field on the MNI grid.
    """
    import ants

    fixed = to_ants(mni_template)
    epi_ref = to_ants(bold_img.slicer[..., 0])
    composed = ants.apply_transforms(
        fixed=fixed, moving=epi_ref, transformlist=[t1_to_mni, epi_to_t1],
        compose=str(Path(work_dir) / "mni2epi_"),
    )
    field = ants.image_read(composed).numpy()  # (X, Y, Z, 3) LPS displacement, mm
    grid = mni_template.shape[:3]
    ijk = np.indices(grid).reshape(3, -1).astype(np.float64)
    ras = mni_template.affine[:3, :3] @ ijk + mni_template.affine[:3, 3:4]
    disp = field.reshape(-1, 3).T.astype(np.float64)
    disp[:2] *= -1.0  # LPS → RAS
    return ras + disp
