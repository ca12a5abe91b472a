"""Individual anatomy of the simulator: deformation, head pose and sampling between grids.

A participant's native voxel ``x`` maps to the model grid by ``m = g + u(g)``,
``g = (P⁻¹ x) / s`` (head pose ``P``, head size ``s``, displacement ``u`` from a
cubic B-spline lattice; :mod:`.anatomy` has the model grid).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .anatomy import Templates

logger = logging.getLogger(__name__)

#: Lattice steps by which a deformation lattice extends beyond its model grid.
_LATTICE_MARGIN = 2


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


