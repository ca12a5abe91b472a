"""Loading and checking NIfTI inputs (T1w, BOLD, masks) before any processing.

:func:`load_checked` reads an image completely (so a truncated ``.nii.gz`` is
caught here, not in the middle of a registration), checks its header and
voxels, and returns it in memory, reoriented to RAS+, as float32 with the
scaling of the file applied. Every problem is raised as
:class:`~brainage.exceptions.InputFileError` naming the file, the problem and
the fix, so the task runner records it for that participant and the others go
on.

Examples
--------
>>> import tempfile, pathlib, numpy as np, nibabel as nib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "sub-01_T1w.nii.gz"
>>> data = np.random.default_rng(0).random((60, 70, 50)).astype("float32")
>>> nib.save(nib.Nifti1Image(data, np.diag([-3.0, 3.0, 3.0, 1.0])), path)
>>> img = load_checked(path, ndim=3, role="T1w")
>>> nib.aff2axcodes(img.affine), img.get_data_dtype()
(('R', 'A', 'S'), dtype('<f4'))
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np

from .exceptions import InputFileError

__all__ = ["MIN_FIELD_OF_VIEW_MM", "check_image", "load_checked"]

logger = logging.getLogger(__name__)

#: Smallest plausible extent (mm) along every axis, per role; a whole brain is about
#: 140 x 170 x 120 mm. Smaller images are refused as "field of view too small".
MIN_FIELD_OF_VIEW_MM = {"T1w": 80.0, "bold": 60.0, "boldref": 60.0, "mask": 60.0, "probseg": 60.0}


def _read(path: Path, role: str):
    import nibabel as nib

    if not path.exists():
        raise InputFileError(path, f"the {role} image does not exist", "Check the path and retry.")
    if path.stat().st_size == 0:
        raise InputFileError(
            path,
            f"the {role} file is empty (0 bytes)",
            "The copy or conversion that produced it failed; re-export the image from DICOM "
            "(e.g. with dcm2niix) or copy it again.",
        )
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise InputFileError(
            path, f"the {role} file is not NIfTI (.nii or .nii.gz)", "Convert it with dcm2niix."
        )
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises many types for bad headers
        raise InputFileError(
            path,
            f"not a readable NIfTI image ({type(exc).__name__}: {exc})",
            "Re-export the image (dcm2niix) or copy it again; the header is corrupt.",
        ) from exc
    return img


def check_image(img, path, *, ndim: int = 3, role: str = "T1w", min_fov_mm: float | None = None):
    """Check an already-loaded image's header and voxel data.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        The image; its data is read.
    path : path-like
        Named in error messages.
    ndim : {3, 4}
        Expected dimensionality (a 4D image with one volume counts as 3D).
    role : str
        What the image is (``"T1w"``, ``"bold"``, ``"mask"``, …), for messages and the
        default minimum field of view.
    min_fov_mm : float, optional
        Smallest allowed extent along every spatial axis; default from
        :data:`MIN_FIELD_OF_VIEW_MM` (0 disables the check).

    Returns
    -------
    numpy.ndarray
        The voxel data (float32, file scaling applied; a trailing singleton axis dropped).

    Raises
    ------
    InputFileError
        Wrong dimensionality, non-finite voxels, bad voxel sizes, a non-invertible affine,
        an all-zero (or constant) image, or a field of view too small.
    """
    path = Path(path)
    shape = tuple(int(s) for s in img.shape)
    if ndim == 3 and len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != ndim:
        what = f"{len(shape)}D with shape {shape}"
        if ndim == 3 and len(shape) == 4:
            fix = (
                f"Pass a single 3D {role} volume; select one with "
                "nilearn.image.index_img(img, 0), or average them with nilearn.image.mean_img."
            )
        elif ndim == 4:
            fix = f"A {role} series must be 4D (x, y, z, time); check that this is the right file."
        else:
            fix = f"Pass a {ndim}D image."
        raise InputFileError(path, f"the {role} image is {what}; expected {ndim}D", fix)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise InputFileError(
            path,
            f"voxel sizes {tuple(float(z) for z in zooms)} mm are not all positive",
            "Fix pixdim in the header (nibabel: img.header.set_zooms) or re-export with dcm2niix.",
        )
    affine = np.asarray(img.affine, dtype=float)
    det = np.linalg.det(affine[:3, :3]) if np.all(np.isfinite(affine)) else np.nan
    if not np.isfinite(det) or abs(det) < 1e-6 * float(np.prod(zooms)):
        raise InputFileError(
            path,
            "the voxel-to-world affine (sform/qform) is not invertible "
            f"(determinant {det:.3g})",
            "The header's orientation is corrupt; re-export the image with dcm2niix, or set a "
            "valid sform (nibabel: img.set_sform(affine, code=1)).",
        )
    fov = np.abs(np.asarray(shape[:3]) * zooms)
    minimum = MIN_FIELD_OF_VIEW_MM.get(role, 0.0) if min_fov_mm is None else min_fov_mm
    if minimum and np.any(fov < minimum):
        raise InputFileError(
            path,
            f"the field of view {tuple(round(float(f), 1) for f in fov)} mm is too small for a "
            f"brain (each axis must cover at least {minimum:g} mm)",
            f"Pass a {role} image covering the whole brain; this looks like a cropped image or "
            "one with wrong voxel sizes in the header.",
        )
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except (EOFError, zlib.error, OSError, ValueError) as exc:
        raise InputFileError(
            path,
            f"the image data cannot be read completely ({type(exc).__name__}: {exc}); the file "
            "is truncated or corrupt",
            "Copy or re-export the file again (an interrupted transfer truncates a .nii.gz).",
        ) from exc
    data = data.reshape(shape)
    finite = np.isfinite(data)
    if not finite.all():
        bad = int((~finite).sum())
        raise InputFileError(
            path,
            f"{bad} voxel(s) are NaN or infinite",
            "Re-export the image from the scanner data, or replace them, e.g. "
            "nilearn.image.math_img('np.nan_to_num(img)', img=path).",
        )
    if float(data.max()) == float(data.min()):
        raise InputFileError(
            path,
            f"the image is constant (every voxel is {float(data.max()):g}), "
            + ("all zero" if data.max() == 0 else "no contrast"),
            f"This is not a {role} image; check the conversion from DICOM.",
        )
    return data


def load_checked(
    path,
    *,
    ndim: int = 3,
    role: str = "T1w",
    reorient: bool = True,
    min_fov_mm: float | None = None,
):
    """Load a NIfTI image completely and check that it can be processed.

    Accepts ``.nii`` and ``.nii.gz``, any orientation (LPS, oblique), anisotropic
    voxels, and integer data with scaling (slope/intercept are applied).

    Parameters
    ----------
    path : path-like
        The image file.
    ndim : {3, 4}
        Expected dimensionality (3 for T1w and masks, 4 for BOLD).
    role : str
        What the image is, e.g. ``"T1w"`` or ``"bold"`` (used in messages and for the
        minimum field of view of :data:`MIN_FIELD_OF_VIEW_MM`).
    reorient : bool
        Reorient to the closest RAS+ orientation (nibabel ``as_closest_canonical``;
        an oblique affine stays oblique).
    min_fov_mm : float, optional
        Override of the minimum field of view (mm per axis; 0 disables it).

    Returns
    -------
    nibabel.Nifti1Image
        In memory, float32, with the original header's zooms (and TR for BOLD).

    Raises
    ------
    InputFileError
        With the file, the problem and the fix: missing, empty (0 bytes), not NIfTI,
        corrupt header, truncated data, wrong dimensionality, NaN/inf voxels, non-positive
        voxel sizes, non-invertible affine, all-zero image, field of view too small.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np, nibabel as nib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "sub-01_T1w.nii"
    >>> nib.save(nib.Nifti1Image(np.zeros((60, 60, 60), "int16"), np.eye(4) * 2), path)
    >>> load_checked(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    brainage.exceptions.InputFileError: ...sub-01_T1w.nii: the image is constant ...
    """
    import nibabel as nib

    path = Path(path)
    img = _read(path, role)
    data = check_image(img, path, ndim=ndim, role=role, min_fov_mm=min_fov_mm)
    header = img.header.copy()
    out = nib.Nifti1Image(data, img.affine, header)
    out.set_data_dtype(np.float32)
    out.header.set_slope_inter(1.0, 0.0)
    if reorient:
        out = nib.as_closest_canonical(out)
    return out
