"""Reading and checking a BOLD run: 4D image, repetition time, volumes left.

Examples
--------
>>> import json, tempfile, pathlib
>>> side = pathlib.Path(tempfile.mkdtemp()) / "sub-01_task-rest_bold.json"
>>> _ = side.write_text(json.dumps({"RepetitionTime": 2.0}))
>>> read_sidecar(side)["RepetitionTime"]
2.0
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..exceptions import InputFileError

__all__ = ["LoadedBold", "load_bold", "read_sidecar", "repetition_time"]

logger = logging.getLogger(__name__)


@dataclass
class LoadedBold:
    """A checked BOLD run, non-steady-state volumes dropped.

    Attributes
    ----------
    img : nibabel.Nifti1Image
        4D float32 image in RAS orientation.
    tr : float
        Repetition time (s).
    dropped : int
        Leading volumes dropped (``dummy_scans``).
    n_total : int
        Volumes in the file.
    warnings : list of str
        Problems that did not stop processing (e.g. TR from the header).
    """

    img: object
    tr: float
    dropped: int
    n_total: int
    warnings: list = field(default_factory=list)


def read_sidecar(path) -> dict:
    """Read a BOLD JSON sidecar.

    Parameters
    ----------
    path : path-like or None
        The sidecar; ``None`` gives an empty mapping.

    Returns
    -------
    dict

    Raises
    ------
    InputFileError
        The file is not valid JSON or not a JSON object.
    """
    if path is None:
        return {}
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError(
            path, f"the sidecar is not valid JSON ({exc})",
            "Fix the file (it must be a JSON object with at least RepetitionTime in seconds)",
        ) from None
    if not isinstance(data, dict):
        raise InputFileError(
            path, f"the sidecar holds a JSON {type(data).__name__}, not an object",
            'Write it as a JSON object, e.g. {"RepetitionTime": 2.0}',
        )
    return data


def repetition_time(img, sidecar: dict, bold_path, sidecar_path=None) -> tuple[float, list[str]]:
    """Repetition time from the sidecar, else from the NIfTI header (with a warning).

    Parameters
    ----------
    img : nibabel.Nifti1Image
        The 4D image.
    sidecar : dict
        Parsed sidecar.
    bold_path, sidecar_path : path-like
        For messages.

    Returns
    -------
    tr : float
        Seconds.
    warnings : list of str

    Raises
    ------
    InputFileError
        No usable TR in the sidecar nor in the header.
    """
    warnings = []
    tr = sidecar.get("RepetitionTime")
    if tr is not None:
        try:
            tr = float(tr)
        except (TypeError, ValueError):
            raise InputFileError(
                sidecar_path or bold_path, f"RepetitionTime is {tr!r}, not a number",
                "Give RepetitionTime in seconds, e.g. 2.0",
            ) from None
        if not np.isfinite(tr) or tr <= 0 or tr > 30:
            raise InputFileError(
                sidecar_path or bold_path, f"RepetitionTime is {tr} s, outside (0, 30]",
                "Give RepetitionTime in seconds (a value in milliseconds must be divided by 1000)",
            )
        return tr, warnings
    zooms = img.header.get_zooms()
    tr = float(zooms[3]) if len(zooms) > 3 else 0.0
    unit = img.header.get_xyzt_units()[1]
    if unit == "msec":
        tr /= 1000.0
    elif unit == "usec":
        tr /= 1e6
    if not np.isfinite(tr) or tr <= 0 or tr > 30:
        raise InputFileError(
            bold_path,
            "no repetition time: the sidecar has no RepetitionTime and the NIfTI header's "
            f"time step is {zooms[3] if len(zooms) > 3 else 'missing'}",
            "Add RepetitionTime (seconds) to the JSON sidecar next to the BOLD file",
        )
    message = (
        f"{bold_path}: no RepetitionTime in the sidecar; using the NIfTI header's {tr:g} s "
        "(add RepetitionTime to the sidecar to silence this)"
    )
    logger.warning(message)
    warnings.append(message)
    return tr, warnings


def load_bold(path, sidecar_path=None, *, dummy_scans: int = 0, min_volumes: int = 50) -> LoadedBold:
    """Load a BOLD run, check it and drop non-steady-state volumes.

    Parameters
    ----------
    path : path-like
        The 4D NIfTI file.
    sidecar_path : path-like, optional
        Its JSON sidecar.
    dummy_scans : int
        Leading volumes to drop.
    min_volumes : int
        Fewest volumes that must remain.

    Returns
    -------
    LoadedBold

    Raises
    ------
    InputFileError
        Not 4D, NaN/inf voxels, unreadable, invalid sidecar, no TR, too few volumes
        (the checks of :func:`brainage.imageio.load_checked` plus the BOLD-specific ones).
    """
    import nibabel as nib

    from ..imageio import load_checked

    sidecar = read_sidecar(sidecar_path)
    img = load_checked(path, ndim=4, role="bold")
    tr, warnings = repetition_time(img, sidecar, path, sidecar_path)
    n_total = int(img.shape[3])
    left = n_total - dummy_scans
    if left < min_volumes:
        raise InputFileError(
            path,
            f"only {n_total} volumes ({left} after dropping {dummy_scans} non-steady-state "
            f"volumes); at least {min_volumes} are needed",
            "Use a longer run, or lower func.min_volumes / func.dummy_scans in the pipeline "
            "config if you accept less data",
        )
    if dummy_scans:
        data = np.asarray(img.dataobj)[..., dummy_scans:]
        img = nib.Nifti1Image(data, img.affine, img.header)
    return LoadedBold(img=img, tr=tr, dropped=int(dummy_scans), n_total=n_total,
                      warnings=warnings)
