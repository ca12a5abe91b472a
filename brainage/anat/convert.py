"""An isotropic resampling of ANTsImages.

:func:`resampled` gives the coarser isotropic grid that registration and segmentation
may run on (the conversions to and from nibabel are in :mod:`brainage.antsutils`,
shared with the functional stage).
"""

from __future__ import annotations

__all__ = ["resampled"]


def resampled(image, resolution: float | None):
    """Return a copy of ``image`` on an isotropic ``resolution`` mm grid, or ``image`` itself.

    Only resamples when ``resolution`` is coarser than the finest voxel size, so a
    T1w that is already at or below that resolution is used as it is.
    """
    import ants

    if resolution is None or min(image.spacing) >= float(resolution) - 1e-6:
        return image
    return ants.resample_image(image, (float(resolution),) * 3, use_voxels=False, interp_type=0)
