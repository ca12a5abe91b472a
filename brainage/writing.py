"""Atomic file output.

Every file brainage writes goes to a temporary name in the destination folder
and is then renamed into place with :func:`os.replace`, which is atomic on the
same file system: a killed run leaves either the old file, the new file, or a
hidden ``.*.tmp-*`` leftover, never a half-written output under the real name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_write_tsv",
    "jsonable",
    "save_nifti",
]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    The temporary name keeps the final suffixes (``.nii.gz``, ``.tsv``) so that
    libraries choosing a format from the extension write the right one. On an
    exception the temporary file is removed and ``path`` is left untouched.

    Parameters
    ----------
    path : path-like
        The final destination.

    Yields
    ------
    pathlib.Path
        Where to write.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_path(out) as tmp:
    ...     _ = tmp.write_text("hello")
    >>> out.read_text()
    'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates the file private (0600); give it the usual permissions
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """Return the process umask, read without changing it where the OS allows.

    ``os.umask`` can only be read by setting it, and a file that another thread
    creates in between would get the temporary mask; Linux reports the mask in
    ``/proc/self/status`` instead.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)  # the private mask, should another thread create a file meanwhile
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(obj):
    """Return ``obj`` as plain JSON data: numpy scalars and arrays as Python, NaN and inf as ``None``.

    Examples
    --------
    >>> import numpy as np
    >>> jsonable({"a": np.float32(1.5), "b": [np.nan, np.int64(2)]})
    {'a': 1.5, 'b': [None, 2]}
    """
    import math
    from collections.abc import Mapping

    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # numpy arrays and scalars
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically and return ``path``."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_tsv(path: str | Path, frame, *, index: bool = False) -> Path:
    """Write a pandas DataFrame as TSV (``n/a`` for missing values) atomically."""
    text = frame.to_csv(sep="\t", index=index, na_rep="n/a", lineterminator="\n")
    return atomic_write_text(path, text)


def save_nifti(image, path: str | Path) -> Path:
    """Save a nibabel image atomically; ``.nii.gz`` is compressed deterministically (fast level 1).

    Parameters
    ----------
    image : nibabel.spatialimages.SpatialImage
        The image to save.
    path : path-like
        Destination ending in ``.nii`` or ``.nii.gz``.

    Returns
    -------
    pathlib.Path
    """
    import gzip

    path = Path(path)
    header = getattr(image, "header", None)
    if header is not None and hasattr(header, "get_xyzt_units"):
        space, time_unit = header.get_xyzt_units()
        if space == "unknown" or (len(image.shape) > 3 and time_unit == "unknown"):
            # declare mm (and seconds) so that ITK/ANTs readers do not guess with a warning;
            # on a copy of the header (the data are not copied): the caller's image is unchanged
            header = header.copy()
            header.set_xyzt_units(xyz="mm" if space == "unknown" else space,
                                  t="sec" if time_unit == "unknown" else time_unit)
            image = image.__class__(image.dataobj, image.affine, header,
                                    extra=getattr(image, "extra", None))
    if path.name.endswith(".nii.gz"):
        raw = image.to_bytes() if hasattr(image, "to_bytes") else None
        if raw is None:  # pragma: no cover - every Nifti1/2 image has to_bytes
            raise TypeError(f"cannot serialise {type(image).__name__} to NIfTI bytes")
        return atomic_write_bytes(path, gzip.compress(raw, compresslevel=1, mtime=0))
    with atomic_path(path) as tmp:
        image.to_filename(tmp)
    return path
