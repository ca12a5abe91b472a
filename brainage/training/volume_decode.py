"""Decoding NIfTI maps into a volume cache's array, in this process or in worker processes.

:func:`decode_volume` reads one map as ``VolumeDataset`` does (float32, the
file's voxel order); :func:`run_jobs` decodes participants straight into the
slots of a ``.npy`` file, with ``workers`` spawned processes for large jobs
(each opens the file as a writable memory map and fills its own slots).
Kept apart from :mod:`brainage.training.volume_cache` so that a worker
imports only numpy and nibabel.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brainage.exceptions import InputFileError, UsageError

__all__ = ["crc32", "decode_volume", "file_stats", "header_grid", "run_jobs"]

_FLOAT16_MAX = float(np.finfo(np.float16).max)
#: Fewer participants to decode than this are decoded in this process whatever ``workers`` says.
_POOL_MIN_JOBS = 64


def decode_volume(path: str) -> np.ndarray:
    """Return the 3D float32 data of the NIfTI file ``path``, as :class:`VolumeDataset` reads it.

    The stored values with the header's scaling applied, in the file's voxel
    order (no reorientation), cast to float32; a 4D image with one volume is
    read as 3D.

    Parameters
    ----------
    path : str
        A NIfTI file (``.nii`` or ``.nii.gz``).

    Returns
    -------
    numpy.ndarray of shape (X, Y, Z), float32

    Raises
    ------
    InputFileError
        The file is missing, cannot be decoded, or is not one 3D volume.
    """
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(np.asanyarray(img.dataobj), dtype=np.float32)
    except Exception as err:  # nibabel raises several types (EOFError, zlib.error, ImageFileError…)
        raise InputFileError(path, f"cannot be read as a volume ({err})",
                             "check that the file exists and is a valid NIfTI image") from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputFileError(path, f"is a {data.ndim}D image of shape {data.shape}, not one 3D volume",
                             "give one 3D map per file (a 4D series cannot be cached as a map)")
    return np.ascontiguousarray(data)


def header_grid(path: str) -> tuple[int, int, int]:
    """Return the 3D grid of ``path`` from its header (no decoding)."""
    import nibabel as nib

    try:
        shape = tuple(int(s) for s in nib.load(str(path)).shape)
    except Exception as err:
        raise InputFileError(path, f"cannot be read as a volume ({err})",
                             "check that the file exists and is a valid NIfTI image") from err
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputFileError(path, f"is a {len(shape)}D image of shape {shape}, not one 3D volume",
                             "give one 3D map per file (a 4D series cannot be cached as a map)")
    return shape  # type: ignore[return-value]


def file_stats(paths: Sequence[str]) -> tuple[list[int], list[int]]:
    """Return the sizes and modification times (ns) of ``paths``."""
    sizes, mtimes = [], []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as err:
            raise InputFileError(p, f"cannot be read ({err.strerror or err})",
                                 "check that the participant stage wrote it, or rerun that stage") from err
        sizes.append(int(st.st_size))
        mtimes.append(int(st.st_mtime_ns))
    return sizes, mtimes


def _decode_participant(paths: Sequence[str], grid: tuple, dtype: np.dtype) -> tuple[np.ndarray, float]:
    """Decode one participant's channels; return them in ``dtype`` and the largest absolute error."""
    chans = []
    for p in paths:
        vol = decode_volume(p)
        if vol.shape != tuple(grid):
            raise InputFileError(p, f"is on a {vol.shape} grid, not the cohort's {tuple(grid)}",
                                 "resample every participant's map to the same grid (the same res- "
                                 "of the participant stage)")
        chans.append(vol)
    v32 = np.stack(chans)
    if dtype == np.float16:
        peak = float(np.max(np.abs(v32), initial=0.0))
        if math.isfinite(peak) and peak > _FLOAT16_MAX:
            raise UsageError(
                f"{paths[0]}: values up to {peak:.6g} exceed float16's range ({_FLOAT16_MAX:.0f}); "
                "build this volume cache with dtype='float32'."
            )
    stored = v32.astype(dtype)
    # fmax ignores the NaN of a non-finite voxel (stored as is)
    err = float(np.fmax.reduce(np.abs(stored.astype(np.float32) - v32), axis=None, initial=0.0))
    return stored, err


def crc32(block: np.ndarray) -> int:
    """Return the CRC-32 of ``block``'s bytes (a slot's checksum in the manifest)."""
    return zlib.crc32(np.ascontiguousarray(block).view(np.uint8).reshape(-1)) & 0xFFFFFFFF


def _decode_jobs(array_path: str, dtype: str, grid: tuple, jobs: list) -> list:
    """Decode ``jobs`` (slot, paths) into the ``.npy`` at ``array_path``; return per slot (slot, err, crc).

    Runs in the calling process or in a worker process of :func:`run_jobs`.
    An :class:`InputFileError` comes back as a tuple (it does not pickle), see
    :func:`run_jobs`.
    """
    arr = np.load(array_path, mmap_mode="r+")
    out = []
    try:
        for slot, paths in jobs:
            try:
                stored, err = _decode_participant(paths, grid, np.dtype(dtype))
            except InputFileError as exc:
                return [("error", exc.path, exc.problem, exc.fix)]
            arr[slot] = stored
            out.append((slot, err, crc32(stored)))
        arr.flush()
    finally:
        del arr
    return out


def run_jobs(array_path: Path, dtype: str, grid: tuple, jobs: list, workers: int) -> dict:
    """Decode ``jobs`` with ``workers`` processes (1: in this process); return {slot: (err, crc)}."""
    if not jobs:
        return {}
    results: list = []
    if workers <= 1 or len(jobs) < _POOL_MIN_JOBS:  # starting workers costs ~1-3 s
        results = _decode_jobs(str(array_path), dtype, grid, jobs)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        size = max(1, math.ceil(len(jobs) / (workers * 4)))
        chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for part in pool.map(_decode_jobs, [str(array_path)] * len(chunks), [dtype] * len(chunks),
                                 [grid] * len(chunks), chunks):
                results.extend(part)
                if part and part[0][0] == "error":
                    break
    for item in results:
        if item[0] == "error":
            raise InputFileError(item[1], item[2], item[3])
    return {slot: (err, crc) for slot, err, crc in results}
