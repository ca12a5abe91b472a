"""Template anatomy, individual anatomy, structural aging and the T1w image.

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

#: Template-space name of every MNI output (the grid of nilearn's templates).
SPACE = "MNI152NLin2009aSym"
#: Padding of the model grid around the template grid (mm).
PAD_MM = 8.0
#: Smoothing (mm) of the CSF side that grey-matter loss comes from (cortical thinning).
_EXPOSURE_SIGMA_MM = 1.0
#: Lattice steps by which a deformation lattice extends beyond its model grid.
_LATTICE_MARGIN = 2

# Head layers outside the brain envelope: distance (mm) -> T1 intensity relative
# to white matter (CSF rim, inner table, diploe, outer table, scalp, air).
_HEAD_T1_D = (0.0, 2.5, 3.0, 4.5, 5.0, 7.5, 8.0, 9.5, 10.0, 15.0, 16.0)
_HEAD_T1_I = (0.25, 0.25, 0.07, 0.07, 0.35, 0.35, 0.07, 0.07, 0.78, 0.78, 0.0)
# The same layers in a T2*-weighted EPI (relative to CSF).
_HEAD_EPI_I = (1.0, 1.0, 0.05, 0.05, 0.1, 0.1, 0.05, 0.05, 0.3, 0.3, 0.0)


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


@functools.lru_cache(maxsize=1)
def _raw_templates():
    """Load the nilearn 1 mm ICBM152 2009a T1, GM and WM images (once per process)."""
    from nilearn import datasets

    return (
        datasets.load_mni152_template(resolution=1),
        datasets.load_mni152_gm_template(resolution=1),
        datasets.load_mni152_wm_template(resolution=1),
    )


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

    t1, gm_img, wm_img = _raw_templates()
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


# --------------------------------------------------------------------------- individual anatomy
@dataclass
class Deformation:
    """Smooth displacement field from coarse control vectors (cubic B-spline).

    Attributes
    ----------
    coefficients : numpy.ndarray of shape (4, nx, ny, nz)
        Control values: three displacement components (mm) and one smooth
        grey-matter thickness modulation (unitless, standard normal scale).
    affine : numpy.ndarray
        Control-grid voxel → MNI mm.
    """

    coefficients: np.ndarray
    affine: np.ndarray

    def __post_init__(self):
        from scipy import ndimage

        self._filtered = np.stack(
            [ndimage.spline_filter(c, order=3, mode="nearest") for c in self.coefficients]
        )
        self._inv = np.linalg.inv(self.affine)

    def evaluate(self, points: np.ndarray, components=(0, 1, 2)) -> np.ndarray:
        """Evaluate components at MNI points of shape (N, 3); returns (len(components), N)."""
        from scipy import ndimage

        idx = points @ self._inv[:3, :3].T + self._inv[:3, 3]
        return np.stack(
            [
                ndimage.map_coordinates(
                    self._filtered[c], idx.T, order=3, mode="nearest", prefilter=False
                )
                for c in components
            ]
        )


    def lattice(self, shape, affine, step_mm: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
        """All four components on a coarse lattice aligned with a model grid.

        Parameters
        ----------
        shape : tuple of int
            Shape of the model grid.
        affine : numpy.ndarray
            Voxel → MNI mm of the model grid (a lattice point falls on its origin).
        step_mm : float
            Lattice spacing (rounded to a whole number of model voxels).

        Returns
        -------
        values : numpy.ndarray of shape (4, nx, ny, nz), float32
            Exact spline values at the lattice points.
        coarse_affine : numpy.ndarray
            Lattice index → MNI mm.
        """
        vox = float(affine[0, 0])
        stride = max(1, round(step_mm / vox))
        key = (tuple(shape), stride, tuple(np.round(affine[:3, 3], 6)), vox)
        cache = self.__dict__.setdefault("_lattices", {})
        if key not in cache:
            # The model grid plus a margin of _LATTICE_MARGIN lattice steps on every side.
            n = tuple((k - 1) // stride + 2 + 2 * _LATTICE_MARGIN for k in shape)
            coarse_affine = affine.copy()
            coarse_affine[:3, :3] *= stride
            coarse_affine[:3, 3] -= stride * vox * _LATTICE_MARGIN
            points = voxel_points(n, coarse_affine)
            cache[key] = (self.evaluate(points, components=(0, 1, 2, 3))
                          .reshape(4, *n).astype(np.float32), coarse_affine)
        return cache[key][0], cache[key][1]

    def at(self, points: np.ndarray, shape, affine, step_mm: float = 6.0) -> np.ndarray:
        """Displacement (3, N) at MNI points, trilinear between lattice points.

        The same field as :meth:`dense` on the model grid of ``affine``, evaluated
        at arbitrary points (used to image a head in one resampling).
        """
        from scipy import ndimage

        values, coarse_affine = self.lattice(shape, affine, step_mm)
        inv = np.linalg.inv(coarse_affine)
        idx = (points @ inv[:3, :3].T + inv[:3, 3]).T.astype(np.float32)
        return np.stack([ndimage.map_coordinates(values[c], idx, order=1, mode="nearest")
                         for c in range(3)])

    def dense(self, shape, affine, step_mm: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
        """Displacement (3, *shape) and modulation (*shape) at every point of a grid.

        The spline is evaluated exactly on a ``step_mm`` lattice and interpolated
        trilinearly in between (the field varies on a scale of centimetres);
        the interpolation is separable, one small matrix product per axis.
        """
        values, coarse_affine = self.lattice(shape, affine, step_mm)
        stride = round(coarse_affine[0, 0] / affine[0, 0])
        # Lattice coordinate of model voxel i along an axis: i / stride + margin.
        dense = values
        for axis, n in enumerate(shape):
            pos = np.arange(n) / stride + _LATTICE_MARGIN
            lo = np.floor(pos).astype(int)
            frac = (pos - lo).astype(np.float32)
            weights = np.zeros((n, values.shape[axis + 1]), np.float32)
            weights[np.arange(n), lo] = 1.0 - frac
            weights[np.arange(n), np.minimum(lo + 1, values.shape[axis + 1] - 1)] += frac
            dense = np.moveaxis(np.tensordot(weights, dense, axes=([1], [axis + 1])), 0,
                                axis + 1)
        dense = np.ascontiguousarray(dense, dtype=np.float32)
        return dense[:3], dense[3]


def warp_coordinates(tpl: Templates, displacement: np.ndarray) -> np.ndarray:
    """Model-grid voxel coordinates of ``g + u(g)`` for every model voxel ``g`` (3, *shape)."""
    idx = np.indices(tpl.shape, dtype=np.float32)
    idx += displacement / np.float32(tpl.voxel_size)
    return idx


def warp(volume: np.ndarray, tpl: Templates, displacement: np.ndarray, order: int = 1,
         coordinates: np.ndarray | None = None):
    """Pull an MNI-space volume into head space: ``W(g) = volume(g + u(g))`` on the same grid.

    ``coordinates`` (from :func:`warp_coordinates`) saves recomputing them when
    several volumes are warped by the same displacement.
    """
    from scipy import ndimage

    idx = warp_coordinates(tpl, displacement) if coordinates is None else coordinates
    return ndimage.map_coordinates(volume, idx, order=order, mode="constant", cval=0.0)


def native_points_to_model(tpl: Templates, native_affine: np.ndarray, native_shape, pose,
                           scale: float, deformation: Deformation) -> np.ndarray:
    """Model-grid coordinates (3, *native_shape) of ``Φ(x)`` for every native voxel ``x``.

    ``g = P⁻¹ x / s`` (affine), ``m = g + u(g)`` with ``u`` interpolated from the
    deformation lattice of the model grid: imaging a head is then one
    resampling of an MNI-space volume.
    """
    mat = np.diag([1 / scale] * 3 + [1.0]) @ np.linalg.inv(pose) @ native_affine
    g = voxel_points(native_shape, mat)
    m = g + deformation.at(g, tpl.shape, tpl.affine).T
    inv = np.linalg.inv(tpl.affine)
    idx = (m @ inv[:3, :3].T + inv[:3, 3]).T.astype(np.float32)
    return idx.reshape(3, *native_shape)


def native_sample(head: np.ndarray, tpl: Templates, native_affine: np.ndarray, native_shape,
                  pose: np.ndarray, scale: float, order: int = 1, cval: float = 0.0):
    """Image a head-space volume on a native grid: ``x → g = P⁻¹ x / s`` (affine only)."""
    from scipy import ndimage

    mat = np.linalg.inv(tpl.affine) @ np.diag([1 / scale] * 3 + [1.0]) @ np.linalg.inv(pose) \
        @ native_affine
    return ndimage.affine_transform(head, mat[:3, :3], offset=mat[:3, 3],
                                    output_shape=tuple(native_shape), order=order,
                                    mode="constant", cval=cval)


def draw_deformation(rng, sd_mm: float, spacing_mm: float) -> Deformation:
    """Draw an individual smooth deformation on a control grid covering the head."""
    from scipy import ndimage

    lo = np.array([-130.0, -166.0, -104.0])
    hi = np.array([130.0, 130.0, 148.0])
    shape = tuple(int(x) for x in np.ceil((hi - lo) / spacing_mm) + 1)
    raw = rng.standard_normal((4, *shape))
    smooth = np.stack([ndimage.gaussian_filter(c, 1.0, mode="nearest") for c in raw])
    smooth /= smooth.reshape(4, -1).std(axis=1)[:, None, None, None]
    smooth[:3] *= sd_mm
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = lo
    return Deformation(coefficients=smooth.astype(np.float64), affine=affine)


def native_to_mni(points: np.ndarray, pose: np.ndarray, scale: float, deformation) -> np.ndarray:
    """Apply the true native→MNI map to native points of shape (N, 3).

    Parameters
    ----------
    points : numpy.ndarray of shape (N, 3)
        Native scanner coordinates (mm).
    pose : numpy.ndarray of shape (4, 4)
        Head pose ``P`` (native ← head).
    scale : float
        Head size factor ``s``.
    deformation : Deformation
        Individual displacement ``u``.

    Returns
    -------
    numpy.ndarray of shape (N, 3)
        MNI coordinates ``g + u(g)`` with ``g = P⁻¹ x / s``.
    """
    inv = np.linalg.inv(pose)
    g = (points @ inv[:3, :3].T + inv[:3, 3]) / scale
    return g + deformation.evaluate(g).T


def read_true_geometry(root, subject: str) -> tuple[np.ndarray, float, Deformation]:
    """Read a simulated participant's true T1w → MNI geometry from its ground truth.

    Parameters
    ----------
    root : path-like
        Simulated dataset root (the truth lies under ``sourcedata/brainage-truth/``).
    subject : str
        Label with or without ``sub-``.

    Returns
    -------
    tuple
        Head pose ``P`` (4 × 4), head size factor ``s`` and the individual
        :class:`Deformation` (as :func:`native_to_mni` takes them).
    """
    import json
    from pathlib import Path

    import nibabel as nib

    sub = "sub-" + str(subject).removeprefix("sub-")
    truth = Path(root) / "sourcedata" / "brainage-truth" / sub / "anat"
    xfm = json.loads(next(truth.glob("*_mode-image_xfm.json")).read_text())
    control = nib.load(truth / xfm["DeformationFile"])
    coef = np.asarray(control.dataobj, np.float64)[:, :, :, 0, :].transpose(3, 0, 1, 2)
    deformation = Deformation(np.concatenate([coef, np.zeros_like(coef[:1])]), control.affine)
    return np.asarray(xfm["HeadPose"], np.float64), float(xfm["HeadScale"]), deformation


def voxel_points(shape, affine, z_slice=slice(None)) -> np.ndarray:
    """World coordinates (N, 3) of the voxels of a grid (optionally a z slab)."""
    ii, jj, kk = np.meshgrid(
        np.arange(shape[0]), np.arange(shape[1]), np.arange(shape[2])[z_slice], indexing="ij"
    )
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def sample(volume: np.ndarray, affine: np.ndarray, points: np.ndarray, order: int = 1,
           cval: float = 0.0) -> np.ndarray:
    """Sample a model-grid volume at MNI points (N, 3)."""
    from scipy import ndimage

    inv = np.linalg.inv(affine)
    idx = points @ inv[:3, :3].T + inv[:3, 3]
    return ndimage.map_coordinates(volume, idx.T, order=order, mode="constant", cval=cval)


# --------------------------------------------------------------------------- structural aging
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
