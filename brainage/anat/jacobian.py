"""Jacobian determinant of the T1w → MNI mapping, for modulated tissue maps.

:func:`jacobian_determinant` gives, per template voxel, the native volume that one
unit of template volume corresponds to; a tissue map resampled to MNI and multiplied
by it (modulated) sums, times the voxel volume, to the native tissue volume.
"""

from __future__ import annotations

import numpy as np

__all__ = ["jacobian_determinant"]


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
