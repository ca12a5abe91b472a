"""Conversions between nibabel images and ANTsImages, and an isotropic resampling.

:func:`to_ants` and :func:`to_nibabel` carry a 3D image between the two libraries
(float32 by default, units mm and s); :func:`resampled` gives the coarser isotropic
grid that registration and segmentation may run on.
"""

from __future__ import annotations

import numpy as np

__all__ = ["resampled", "to_ants", "to_nibabel"]


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


def resampled(image, resolution: float | None):
    """Return a copy of ``image`` on an isotropic ``resolution`` mm grid, or ``image`` itself.

    Only resamples when ``resolution`` is coarser than the finest voxel size, so a
    T1w that is already at or below that resolution is used as it is.
    """
    import ants

    if resolution is None or min(image.spacing) >= float(resolution) - 1e-6:
        return image
    return ants.resample_image(image, (float(resolution),) * 3, use_voxels=False, interp_type=0)
