"""Head-motion estimation with ANTs, framewise displacement and DVARS.

Each volume is registered rigidly to a reference volume with ANTs
(``antsRegistration`` through antspyx). The settings were chosen by
measurement (``bench/bench_func.py``; see ``docs/func.md``): antspyx's
``motion_correction`` defaults cost about a second per volume, while a
Mattes-MI rigid registration of copies smoothed and downsampled to about
6 mm, with the metric sampled at 10 % of a head mask, 10 iterations and each
volume started from the identity, costs a tenth of that and recovers the
simulator's true motion to under 0.1 mm (framewise displacement about 10 %
low). A fixed ANTs random seed makes reruns identical; the volumes can be
split over worker processes (antspyx holds the GIL, so threads do not help).
Only the parameters are estimated here; the data are resampled once, later,
together with the EPI → T1w → MNI transforms.

Motion parameters follow the fMRIPrep column names (``trans_x … rot_z``;
millimetres and radians, RAS scanner coordinates): the rigid map
``x' = R x + t`` with ``R = Rz·Ry·Rx`` (rotation about the scanner origin)
that takes a head point's position in the reference volume to its position
in volume *k*.

Examples
--------
>>> import numpy as np
>>> params = np.zeros((3, 6)); params[1, 0] = 0.3; params[2, 3] = 0.01
>>> framewise_displacement(params).round(3).tolist()
[0.0, 0.3, 0.8]
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..antsutils import ants_random_seed

__all__ = [
    "MOTION_COLUMNS",
    "MotionResult",
    "affine_to_params",
    "ants_to_ras",
    "dvars",
    "estimate_motion",
    "framewise_displacement",
    "params_to_affine",
]

logger = logging.getLogger(__name__)

MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class MotionResult:
    """Head-motion estimates of one run.

    Attributes
    ----------
    params : numpy.ndarray of shape (T, 6)
        ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (rad).
    affines : numpy.ndarray of shape (T, 4, 4)
        RAS world maps reference → volume *k*.
    transforms : list of str
        ANTs transform files (reference → volume *k*), for :func:`ants.apply_transforms`.
    reference_index : int
        The volume all others were registered to.
    reference : nibabel.Nifti1Image
        That volume.
    """

    params: np.ndarray
    affines: np.ndarray
    transforms: list
    reference_index: int
    reference: object


def ants_to_ras(transform) -> np.ndarray:
    """Return the 4x4 RAS world matrix of an ANTs affine transform.

    Parameters
    ----------
    transform : ants.ANTsTransform
        A linear transform (ANTs works in LPS physical coordinates).

    Returns
    -------
    numpy.ndarray of shape (4, 4)
        The same point map in RAS coordinates.
    """
    p = np.asarray(transform.parameters, float)
    c = np.asarray(transform.fixed_parameters, float)
    a = p[:9].reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = a
    lps[:3, 3] = p[9:12] + c - a @ c
    return _LPS @ lps @ _LPS


def affine_to_params(affine: np.ndarray) -> np.ndarray:
    """Six rigid parameters (trans mm, rot rad; ``R = Rz·Ry·Rx``) of a 4x4 matrix."""
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_matrix(affine[:3, :3]).as_euler("xyz")
    return np.concatenate([affine[:3, 3], rot])


def params_to_affine(params) -> np.ndarray:
    """4x4 rigid matrix from six parameters (inverse of :func:`affine_to_params`)."""
    from scipy.spatial.transform import Rotation

    params = np.asarray(params, float)
    out = np.eye(4)
    out[:3, :3] = Rotation.from_euler("xyz", params[3:]).as_matrix()
    out[:3, 3] = params[:3]
    return out


def framewise_displacement(params: np.ndarray, radius: float = 50.0) -> np.ndarray:
    """Framewise displacement (Power et al. 2012), mm; the first volume gets 0.

    Parameters
    ----------
    params : array of shape (T, 6)
        Translations (mm) then rotations (rad).
    radius : float
        Head radius (mm) converting rotations to arc length.

    Returns
    -------
    numpy.ndarray of shape (T,)
    """
    params = np.asarray(params, float)
    diff = np.abs(np.diff(params, axis=0))
    fd = diff[:, :3].sum(axis=1) + radius * diff[:, 3:].sum(axis=1)
    return np.concatenate([[0.0], fd])


def dvars(data: np.ndarray, *, standardize: bool = False) -> np.ndarray:
    """DVARS (Power et al. 2012): RMS over voxels of the volume-to-volume signal change.

    Parameters
    ----------
    data : array of shape (T, n_voxels)
        Brain voxels' time series.
    standardize : bool
        Express each voxel's change as percent of its mean (scale-free DVARS).

    Returns
    -------
    numpy.ndarray of shape (T,)
        The first volume gets 0.
    """
    data = np.asarray(data, np.float64)
    if standardize:
        mean = data.mean(axis=0)
        data = 100.0 * data / np.where(mean == 0, 1.0, mean)
    diff = np.diff(data, axis=0)
    return np.concatenate([[0.0], np.sqrt(np.mean(diff**2, axis=1))])


def choose_reference(data: np.ndarray) -> int:
    """Index of the volume that correlates best with the run's mean (a stable reference)."""
    flat = data.reshape(-1, data.shape[-1])
    mean = flat.mean(axis=1)
    keep = mean > np.percentile(mean, 50)
    sub = flat[keep] - flat[keep].mean(axis=0)
    m = mean[keep] - mean[keep].mean()
    corr = (sub * m[:, None]).sum(0) / (np.linalg.norm(sub, axis=0) * np.linalg.norm(m) + 1e-12)
    return int(np.argmax(corr))


def _shrunk_volumes(data: np.ndarray, shrink: int) -> np.ndarray:
    """Gaussian-smoothed (sigma ``shrink / 2`` voxels) copies subsampled by ``shrink``.

    Equals ANTs ``smooth_image`` + ``resample_image`` onto a grid ``shrink`` times coarser
    with the same origin (every ``shrink``-th voxel), computed for all volumes at once.
    Returns an array of shape (T, x, y, z), C-contiguous per volume.
    """
    from scipy import ndimage

    if shrink <= 1:
        return np.ascontiguousarray(np.moveaxis(data, -1, 0), dtype=np.float32)
    sub = (slice(None, None, shrink),) * 3
    first = data[..., 0][sub]
    out = np.empty((data.shape[3], *first.shape), np.float32)
    for k in range(data.shape[3]):
        out[k] = ndimage.gaussian_filter(data[..., k], shrink / 2.0, mode="nearest",
                                         truncate=3.0)[sub]
    return out


def _register_chain(job: dict) -> list:
    """Register a list of volumes to the reference with ANTs (runs in a worker or here).

    ``job`` holds the reference and moving arrays with their geometry, the volume
    indices, the ANTs settings and the folder for the transform files. A volume is
    started from the previous volume's estimate of the same chain (if asked); the
    first one from the identity. Returns ``(index, transform path, RAS affine)`` per
    volume.
    """
    import ants

    geo = {"origin": job["origin"], "spacing": job["spacing"], "direction": job["direction"]}
    fixed = ants.from_numpy(job["reference"], **geo)
    mask = ants.from_numpy(job["mask"].astype(np.float32), **geo)
    work = Path(job["work_dir"])
    out = []
    previous = None
    with ants_random_seed(job["seed"]):  # ANTs samples the metric at random positions
        for k, volume in zip(job["indices"], job["volumes"]):
            moving = ants.from_numpy(volume, **geo)
            extra = {"initial_transform": [previous]} if (job["init_previous"] and previous) \
                else {}
            reg = ants.registration(
                fixed, moving, type_of_transform="Rigid", aff_metric=job["metric"],
                aff_iterations=(int(job["iterations"]),), aff_shrink_factors=(1,),
                aff_smoothing_sigmas=(0,), aff_random_sampling_rate=float(job["sampling"]),
                mask=mask, outprefix=str(work / f"mc{k:05d}_"), **extra,
            )
            path = reg["fwdtransforms"][0]
            for extra_file in reg.get("invtransforms", []):
                if extra_file != path and os.path.exists(extra_file) \
                        and extra_file.endswith(".nii.gz"):
                    os.remove(extra_file)
            out.append((k, path, ants_to_ras(ants.read_transform(path))))
            previous = path
    return out


def _worker_init() -> None:
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = "1"


def _head_mask(reference: np.ndarray) -> np.ndarray:
    """Voxels of the (shrunk) reference brighter than 10 % of its 98th percentile, dilated once."""
    from scipy import ndimage

    mask = reference > 0.1 * np.percentile(reference, 98)
    return ndimage.binary_dilation(mask, iterations=1)


def estimate_motion(
    img,
    *,
    reference_index: int | None = None,
    iterations: int = 10,
    target_mm: float = 6.0,
    metric: str = "mattes",
    sampling: float = 0.1,
    init_previous: bool = False,
    n_jobs: int = 1,
    seed: int = 42,
    work_dir=None,
) -> MotionResult:
    """Estimate rigid head motion of every volume with ANTs.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        4D BOLD run.
    reference_index : int, optional
        Volume to register to; default the one closest to the run's mean.
    iterations : int
        Gradient-descent iterations per volume.
    target_mm : float
        Voxel size (mm) of the smoothed, downsampled copies registered (the
        data are shrunk by ``ceil(target_mm / voxel size)``: 3 mm and 4 mm data by 2).
    metric : {"mattes", "meansquares", "CC"}
        ANTs similarity metric, evaluated in a head mask of the reference.
    sampling : float
        Fraction of the head-mask voxels sampled by the metric (0.1 was as accurate as
        0.2 and 1.0 on the simulated 3 mm run, at half and a fifth of the cost).
    init_previous : bool
        Start each volume from the previous volume's estimate. Off by default: the
        estimates then lean towards the previous volume and framewise displacement
        comes out about 20 % low (measured against the simulator's true motion,
        docs/func.md); from the identity it is about 9 % low.
    n_jobs : int
        Worker processes (ITK single-threaded each). With 2 or more, the volumes are
        split into that many runs of consecutive volumes registered in parallel,
        each run starting from the identity (antspyx holds the GIL, so threads do
        not help: measured, docs/func.md).
    seed : int
        ANTs random seed for the metric's sample positions: reruns give the same
        estimates.
    work_dir : path-like, optional
        Where the transform files go (default a temporary folder).

    Returns
    -------
    MotionResult
    """
    import nibabel as nib

    data = np.asarray(img.dataobj, dtype=np.float32)
    n = data.shape[3]
    ref_idx = choose_reference(data) if reference_index is None else int(reference_index)
    affine = img.affine
    ref_nib = nib.Nifti1Image(data[..., ref_idx], affine)
    ref_nib.header.set_xyzt_units("mm", "sec")
    shrink = max(1, int(np.ceil(target_mm / float(min(img.header.get_zooms()[:3])) - 1e-6)))
    small = _shrunk_volumes(data, shrink)
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="brainage-mc-"))
    work.mkdir(parents=True, exist_ok=True)
    # ANTs geometry (LPS) of the shrunk grid: same origin, spacing × shrink
    lps = np.diag([-1.0, -1.0, 1.0])
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    geometry = {
        "origin": tuple(float(v) for v in lps @ affine[:3, 3]),
        "spacing": tuple(float(z) * shrink for z in zooms),
        "direction": lps @ (affine[:3, :3] / zooms),
    }
    order = [*range(ref_idx + 1, n), *range(ref_idx - 1, -1, -1)]
    n_chains = max(1, min(int(n_jobs), len(order)))
    bounds = np.linspace(0, len(order), n_chains + 1).round().astype(int)
    jobs = [{
        **geometry, "reference": small[ref_idx], "mask": _head_mask(small[ref_idx]),
        "indices": order[a:b], "volumes": [small[k] for k in order[a:b]],
        "metric": metric, "iterations": iterations, "sampling": sampling,
        "init_previous": init_previous, "seed": int(seed), "work_dir": str(work),
    } for a, b in itertools.pairwise(bounds)]
    ident = {**jobs[0], "indices": [ref_idx], "volumes": [small[ref_idx]],
             "init_previous": False}
    if n_chains == 1:
        results = [_register_chain(ident), _register_chain(jobs[0])]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(n_chains, mp_context=ctx, initializer=_worker_init) as pool:
            futures = [pool.submit(_register_chain, job) for job in jobs]
            results = [_register_chain(ident)] + [f.result() for f in futures]
    transforms: list = [None] * n
    affines = np.zeros((n, 4, 4))
    for chain in results:
        for k, path, ras in chain:
            transforms[k] = path
            affines[k] = ras
    params = np.array([affine_to_params(a) for a in affines])
    logger.debug("motion: %d volumes registered to volume %d (shrink %d, %d chains)", n, ref_idx,
                 shrink, n_chains)
    return MotionResult(params=params, affines=affines, transforms=transforms,
                        reference_index=ref_idx, reference=ref_nib)
