"""Small helpers around antspyx shared by the structural and functional stages."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

__all__ = ["ants_random_seed", "resampled", "to_ants", "to_nibabel"]


@contextlib.contextmanager
def ants_random_seed(seed: int | None) -> Iterator[None]:
    """Run ANTs registrations inside the block with a fixed random seed.

    ANTs samples its similarity metric at random positions; antspyx passes
    ``--random-seed`` to every registration while ``ants.config._random_seed`` is
    set (its ``set_ants_deterministic`` also forces one ITK thread, which is not
    wanted here). The previous value is restored on exit.

    Examples
    --------
    >>> import ants
    >>> with ants_random_seed(7):
    ...     ants.config._random_seed
    7
    """
    import ants

    previous = ants.config._random_seed
    ants.config._random_seed = None if seed is None else int(seed)
    try:
        yield
    finally:
        ants.config._random_seed = previous


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

    Only resamples when ``resolution`` is coarser than the finest voxel size, so an
    image that is already at or below that resolution is used as it is.
    """
    import ants

    if resolution is None or min(image.spacing) >= float(resolution) - 1e-6:
        return image
    return ants.resample_image(image, (float(resolution),) * 3, use_voxels=False, interp_type=0)
