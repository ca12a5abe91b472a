"""Template anatomy of the simulator: the model grid, the atlas and the template tissues.

Individual anatomy (deformation, pose, resampling) is in :mod:`.geometry`; structural
aging and the T1w image in :mod:`.aging`.

Everything is first built on a *model grid* aligned with the MNI ICBM152 2009a
template that nilearn ships (the template grid, padded a little); a participant
is then imaged by pulling each native voxel back to the model grid through the
true native→MNI map

    m = Φ(x) = g + u(g),   g = (P⁻¹ x) / s

with ``P`` the rigid head pose (native scanner mm ← head mm), ``s`` the head
size factor and ``u`` a smooth displacement field given by cubic B-spline
interpolation of a coarse grid of control vectors.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np

from ..exceptions import NotAvailableError, ProcessingError

logger = logging.getLogger(__name__)

__all__ = [
    "Templates",
    "load_templates",
    "make_grid",
    "rigid_matrix",
]

#: Padding of the model grid around the template grid (mm).
PAD_MM = 8.0
#: Smoothing (mm) of the CSF side that grey-matter loss comes from (cortical thinning).
_EXPOSURE_SIGMA_MM = 1.0



def rigid_matrix(rotation, translation, center=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 rigid transform: rotate about ``center`` (radians, R = Rz·Ry·Rx), then translate.

    Parameters
    ----------
    rotation : sequence of 3 float
        Rotations about x, y, z in radians.
    translation : sequence of 3 float
        Translation in mm.
    center : sequence of 3 float
        Centre of rotation in mm.

    Returns
    -------
    numpy.ndarray of shape (4, 4)

    Examples
    --------
    >>> np.round(rigid_matrix([0, 0, np.pi / 2], [1, 0, 0]) @ [1, 0, 0, 1], 6).tolist()
    [1.0, 1.0, 0.0, 1.0]
    """
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_euler("xyz", np.asarray(rotation, float)).as_matrix()
    center = np.asarray(center, float)
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = center - rot @ center + np.asarray(translation, float)
    return out


def make_grid(fov_mm, voxel_size: float):
    """Shape and RAS affine of a native grid centred on the scanner origin.

    Parameters
    ----------
    fov_mm : sequence of 3 float
        Field of view (mm).
    voxel_size : float
        Isotropic voxel size (mm).

    Returns
    -------
    shape : tuple of int
    affine : numpy.ndarray of shape (4, 4)
    """
    shape = tuple(max(4, round(float(f) / voxel_size)) for f in fov_mm)
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * voxel_size
    return shape, affine


@dataclass
class Templates:
    """Cohort-level anatomy on one model grid (all arrays float32 unless noted).

    Attributes
    ----------
    affine : numpy.ndarray
        Voxel → MNI mm.
    gm, wm, csf : numpy.ndarray
        Template tissue probabilities (sum to ``mask``).
    mask : numpy.ndarray
        Brain mask (0/1).
    head_distance : numpy.ndarray
        Distance (mm) outside the smoothed brain envelope (0 inside).
    ventricles : numpy.ndarray
        Lateral-ventricle mask (0/1).
    ventricle_distance : numpy.ndarray
        Distance (mm) to the lateral ventricles.
    weights : numpy.ndarray
        Regional weight of grey-matter loss (smooth, 1 in most of the brain).
    labels : numpy.ndarray
        Atlas labels (int32, 0 outside).
    label_table : pandas.DataFrame
        The atlas label table (index, name, hemisphere, lobe, network).
    gm_exposure : numpy.ndarray
        How much each grey-matter voxel faces CSF (smoothed CSF-or-outside fraction,
        scaled to a GM-weighted mean of 1): aging thins grey matter from its CSF side.
    """

    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray
    head_distance: np.ndarray
    ventricles: np.ndarray
    ventricle_distance: np.ndarray
    weights: np.ndarray
    labels: np.ndarray
    label_table: object
    gm_exposure: np.ndarray | None = None

    @property
    def shape(self) -> tuple:
        """Shape of the model grid."""
        return self.gm.shape

    @property
    def voxel_size(self) -> float:
        """Voxel size of the model grid (mm)."""
        return float(self.affine[0, 0])


def load_atlas(atlas_id: str):
    """Load an atlas from the project's registry (``brainage.atlases``).

    Parameters
    ----------
    atlas_id : str
        Atlas id, e.g. ``"HarvardOxford"``.

    Returns
    -------
    Atlas
        With ``.image`` (nibabel, MNI) and ``.labels`` (DataFrame).

    Raises
    ------
    NotAvailableError
        If the atlas registry is not installed.
    """
    try:
        from .. import atlases
    except ImportError:
        raise NotAvailableError(
            "the simulator needs the atlas registry brainage.atlases for its regional age "
            "effects and parcel time series; it is missing from this installation"
        ) from None
    return atlases.load_atlas(atlas_id)


def _name_mask(table, column: str, pattern: str) -> np.ndarray:
    if column not in table.columns:
        return np.zeros(len(table), dtype=bool)
    return table[column].astype(str).str.contains(pattern, case=False, regex=True).to_numpy()


def region_kind_indices(table) -> dict:
    """Atlas label values of the region kinds the simulator treats specially.

    Parameters
    ----------
    table : pandas.DataFrame
        Atlas label table with ``index, name`` and optionally ``lobe``.

    Returns
    -------
    dict
        ``frontal, insula, hippocampus, ventricles, excluded`` → arrays of
        label values (``excluded``: labels that carry no neural signal).
    """
    idx = table["index"].to_numpy()
    hippo = _name_mask(table, "name", r"(?<!para)hippocamp")
    vent = _name_mask(table, "name", r"ventric")
    return {
        "frontal": idx[_name_mask(table, "lobe", r"^frontal") & ~vent],
        "insula": idx[_name_mask(table, "name", r"insula")],
        "hippocampus": idx[hippo],
        "ventricles": idx[vent],
        "excluded": idx[
            vent
            | _name_mask(table, "name", r"white.?matter|brain.?stem|cerebral.?cortex")
            | _name_mask(table, "lobe", r"^(?:ventricle|brainstem|white)")
        ],
    }


def regional_weight_of(table, regional_weights) -> np.ndarray:
    """Multiplier of the grey-matter loss of every atlas label (before smoothing).

    Labels of a region kind named in ``regional_weights`` (see
    :func:`region_kind_indices`) get its weight, a later kind winning over an
    earlier one; every other label gets 1. :func:`load_templates` paints these
    values on the atlas labels and smooths them (σ = 3 mm).

    Parameters
    ----------
    table : pandas.DataFrame
        Atlas label table.
    regional_weights : tuple of (str, float)
        Grey-matter loss multipliers per region kind.

    Returns
    -------
    numpy.ndarray of float32
        One weight per row of ``table``.

    Raises
    ------
    ProcessingError
        If a region kind is unknown.
    """
    kinds = region_kind_indices(table)
    out = np.ones(len(table), np.float32)
    idx = table["index"].to_numpy()
    for kind, weight in regional_weights:
        if kind not in kinds:
            raise ProcessingError(
                f"unknown region kind {kind!r} in regional_weights; use frontal, insula, hippocampus"
            )
        out[np.isin(idx, kinds[kind])] = weight
    return out


def _resample(img, affine, shape, order: int):
    """Resample a nibabel image onto a grid (nilearn, no warnings)."""
    from nilearn.image import resample_img

    out = resample_img(
        img,
        target_affine=affine,
        target_shape=shape,
        interpolation="linear" if order else "nearest",
        force_resample=True,
        copy_header=True,
    )
    return np.asarray(out.dataobj, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def load_templates(resolution: float, atlas_id: str, regional_weights: tuple) -> Templates:
    """Build the cohort-level anatomy on a model grid of ``resolution`` mm.

    Parameters
    ----------
    resolution : float
        Voxel size of the model grid (mm).
    atlas_id : str
        Atlas for regional weights, ventricles and parcels.
    regional_weights : tuple of (str, float)
        Grey-matter loss multipliers per region kind.

    Returns
    -------
    Templates
    """
    from scipy import ndimage

    from ..templates import mni152

    t1, gm_img, wm_img = mni152("t1"), mni152("gm"), mni152("wm")
    base = t1.affine
    lo = base[:3, 3] - PAD_MM
    hi = base[:3, 3] + (np.asarray(t1.shape) - 1) * np.diag(base)[:3] + PAD_MM
    shape = tuple(int(np.floor((h - l) / resolution)) + 1 for l, h in zip(lo, hi))
    affine = np.diag([resolution, resolution, resolution, 1.0])
    affine[:3, 3] = lo
    t1a = _resample(t1, affine, shape, 1)
    gm = np.clip(_resample(gm_img, affine, shape, 1), 0, 1)
    wm = np.clip(_resample(wm_img, affine, shape, 1), 0, 1)
    mask = ndimage.binary_fill_holes((t1a > 0.05) | (gm + wm > 0.5))
    mask = ndimage.binary_opening(mask, iterations=1).astype(np.float32)
    gm *= mask
    wm = np.minimum(wm * mask, 1.0 - gm)
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    envelope = ndimage.gaussian_filter(mask, 4.0 / resolution) > 0.3
    envelope |= mask > 0
    head_distance = ndimage.distance_transform_edt(~envelope, sampling=resolution)

    atlas = load_atlas(atlas_id)
    table = atlas.labels.reset_index(drop=True)
    labels = _resample(atlas.image, affine, shape, 0).astype(np.int32)
    kinds = region_kind_indices(table)
    ventricles = np.isin(labels, kinds["ventricles"]) & (csf > 0.3)
    if ventricles.sum() < 10:
        raise ProcessingError(
            f"atlas {atlas_id!r} has no lateral-ventricle labels the simulator can use; "
            "pick an atlas with subcortical labels such as HarvardOxford"
        )
    ventricle_distance = ndimage.distance_transform_edt(~ventricles, sampling=resolution)
    lut = np.ones(max(int(labels.max()), int(table["index"].max())) + 1, np.float32)
    lut[table["index"].to_numpy()] = regional_weight_of(table, regional_weights)
    weights = np.where(labels >= 0, lut[np.clip(labels, 0, None)], np.float32(1.0))
    weights = ndimage.gaussian_filter(weights, 3.0 / resolution).astype(np.float32)
    # Cortical thinning: grey matter is lost from the side that faces CSF (sulci, the
    # brain surface, the ventricles), so deep grey matter keeps its intensity.
    exposure = ndimage.gaussian_filter(csf + (1.0 - mask), _EXPOSURE_SIGMA_MM / resolution)
    exposure = exposure * (gm > 0)
    exposure /= max(float((gm * exposure).sum() / max(gm.sum(), 1e-6)), 1e-6)
    logger.debug("model grid %s at %.2f mm", shape, resolution)
    return Templates(
        affine=affine,
        gm=gm.astype(np.float32),
        wm=wm.astype(np.float32),
        csf=csf.astype(np.float32),
        mask=mask,
        head_distance=head_distance.astype(np.float32),
        ventricles=ventricles.astype(np.float32),
        ventricle_distance=ventricle_distance.astype(np.float32),
        weights=weights,
        labels=labels,
        label_table=table,
        gm_exposure=exposure.astype(np.float32),
    )
