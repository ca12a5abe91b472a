"""On-disk volume cache: a cohort's 3D maps decoded once into one memory-mapped array per modality.

Decoding a ``.nii.gz`` map takes ~10 ms (gzip) per file and core; a naive
loader pays it for every participant, every epoch and every fold. A
:class:`VolumeCache` pays it once: the maps of every participant are decoded
into one ``.npy`` array of shape ``(n_slots, channels, X, Y, Z)``, read back
through a memory map (the operating system's page cache keeps what fits in
memory; the rest streams from disk, in slot order for a sorted batch).

Files, in ``folder``
    ``<name>.npy``, the array; ``<name>.json``, the manifest: format and
    decoder version, dtype, shape and grid, and per participant key its slot,
    its files' paths, sizes and modification times (ns), the CRC-32 of its
    slot and the largest absolute error of the stored values against the
    float32 decode. ``.<name>.lock`` serialises processes opening the same
    cache (e.g. the ranks of a DDP run): the first builds, the others reuse.

dtype
    ``float16`` by default: half the bytes of float32, rounded to 2^-11
    relative (at most 4.9e-4 absolute below 2, 9.8e-4 below 4). The manifest
    records the measured largest absolute error per participant and overall
    (:attr:`VolumeCache.max_abs_error`; 9.6e-4 on the simulated cohort's 2 mm
    modulated GM maps, whose values reach 2.45). A map with values beyond
    float16's range (65,504) is refused with a
    :class:`~brainage.exceptions.UsageError` naming it; use ``dtype="float32"``
    for such inputs (e.g. raw T1w intensities). ``uint8`` with a per-participant
    scale is not offered: on those maps its error is 5 times float16's (4.8e-3),
    for half the bytes and a float32 conversion at most ~1.5 times faster on
    the CPU (``bench/results/volume_cache.json``, ``uint8_scaled``); a GPU run can
    move float16 batches (``batch(dtype=np.float16)``) and convert them there.

Reuse and updates (:meth:`VolumeCache.open`)
    * Same participants, same files (path, size, mtime): reused, nothing decoded.
    * A participant's file changed (other size or mtime, or other paths): only
      that participant's slot is decoded again, in place in the memory map.
    * New participants: the array grows in place (the ``.npy`` header keeps
      room for the longer shape) and only they are decoded.
    * Participants no longer requested keep their slots: the cache is a
      superset and serves only what is asked. Delete the folder to compact it.

    In-place updates are journaled: the manifest first marks the slots being
    written as ``pending`` (written atomically), the slots are written and
    flushed, then the manifest records the new files. A run killed half-way
    leaves pending slots, which the next open decodes again.
Corruption
    A missing or unreadable manifest, another format or decoder version,
    dtype, grid or channel count, an ``.npy`` whose header disagrees with the
    manifest, or an ``.npy`` shorter or longer than its header says (a
    truncated copy) is detected on open and the cache is rebuilt from the
    NIfTI files, with a warning saying why; it is never read. ``verify=True``
    also compares every slot's CRC-32 with the manifest (a full read of the
    cache) and decodes again the slots that differ. A full build writes the
    array under a temporary name and renames it into place, after removing
    the old manifest, so a killed build never leaves a pair that looks valid.
Errors in the inputs
    A missing or undecodable NIfTI file raises
    :class:`~brainage.exceptions.InputFileError` naming it, as does a map on
    another grid than the cohort's (the grid of the first participant).

Examples
--------
>>> cache = VolumeCache.open("work/volume_cache", paths, keys, name="anat")  # doctest: +SKIP
>>> ds = cache.dataset()                                                     # doctest: +SKIP
>>> ds[0].shape, ds.batch([3, 1, 2]).shape                                   # doctest: +SKIP
((1, 99, 117, 95), (3, 1, 99, 117, 95))
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainage.exceptions import UsageError
from brainage.training.volume_datasets import CachedVolumeDataset, VolumeCacheStore
from brainage.training.volume_decode import crc32, decode_volume, file_stats, header_grid, run_jobs
from brainage.writing import atomic_path, atomic_write_json

__all__ = [
    "CacheUpdate",
    "CachedVolumeDataset",
    "VolumeCache",
    "VolumeCacheStore",
    "decode_volume",
]

logger = logging.getLogger(__name__)

FORMAT = "brainage-volume-cache"
#: Version of the manifest layout.
FORMAT_VERSION = 1
#: Version of :func:`decode_volume`'s output; a change invalidates every cache.
DECODER_VERSION = 1
DTYPES = ("float16", "float32")


def _copy(dst: np.ndarray, src: np.ndarray) -> None:
    """Copy ``src`` into ``dst``, converting the dtype with torch (F16C: ~3x numpy's float16 cast)."""
    if dst.dtype == src.dtype:
        np.copyto(dst, src)
        return
    import torch

    torch.from_numpy(dst).copy_(torch.from_numpy(src))


# --------------------------------------------------------------------------- the cache
@dataclass
class CacheUpdate:
    """What :meth:`VolumeCache.open` did.

    Attributes
    ----------
    action : {"built", "rebuilt", "reused", "updated", "extended"}
        ``rebuilt``: an existing cache was unusable (see ``reason``); ``updated``: some
        slots decoded again; ``extended``: new participants appended (and maybe updated).
    decoded : list of str
        Keys of the participants decoded by this open.
    reason : str
        Why the cache was rebuilt, or what changed.
    seconds : float
    """

    action: str
    decoded: list = field(default_factory=list)
    reason: str = ""
    seconds: float = 0.0


@contextlib.contextmanager
def _locked(folder: Path, name: str):
    """Hold an exclusive lock on ``folder/.<name>.lock`` (POSIX; no lock elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(folder / f".{name}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _npy_header(path: Path) -> tuple[tuple, np.dtype, int, tuple]:
    """Return (shape, dtype, data offset, format version) of the ``.npy`` at ``path``."""
    from numpy.lib import format as npy

    with open(path, "rb") as fh:
        version = npy.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = npy.read_array_header_2_0(fh)
        else:
            raise ValueError(f".npy format version {version}")
        if fortran:
            raise ValueError("Fortran-ordered array")
        return tuple(shape), dtype, fh.tell(), version


def _normalise_rows(paths: Sequence) -> list[list[str]]:
    rows = [[str(p)] if isinstance(p, (str, bytes, os.PathLike)) or not isinstance(p, Sequence)
            else [str(q) for q in p] for p in paths]
    if not rows:
        raise UsageError("VolumeCache.open needs at least one participant's paths.")
    widths = {len(r) for r in rows}
    if len(widths) != 1 or 0 in widths:
        raise UsageError(f"every participant needs the same number of maps (channels); got {sorted(widths)}")
    return rows


class VolumeCache:
    """One modality's volumes, decoded once into a memory-mapped ``.npy`` (see the module docstring).

    Build or reuse with :meth:`open`; read with :meth:`read`, :meth:`read_batch`
    or a :meth:`dataset`.

    The object stands for the participants it was opened with (:attr:`keys`),
    whose files were checked against the manifest by that open; the file may
    hold more (participants of earlier opens), which it does not serve.

    Attributes
    ----------
    folder : pathlib.Path
    name : str
    array_path, manifest_path : pathlib.Path
    manifest : dict
        The manifest as written by the open.
    last_update : CacheUpdate
        What the :meth:`open` that returned this cache did.
    """

    def __init__(self, folder: Path, name: str, manifest: dict, last_update: CacheUpdate,
                 keys: Sequence[str]):
        self.folder, self.name = Path(folder), name
        self.array_path = self.folder / f"{name}.npy"
        self.manifest_path = self.folder / f"{name}.json"
        self.manifest = manifest
        self.last_update = last_update
        # copy-on-write: a writable view (so torch can read it without a copy) that never writes back
        self._array = np.load(self.array_path, mmap_mode="c")
        parts = manifest["participants"]
        self._keys = [str(k) for k in keys]
        self._slots = {k: int(parts[k]["slot"]) for k in self._keys}

    # ------------------------------------------------------------ properties
    @property
    def dtype(self) -> np.dtype:
        """The stored dtype."""
        return self._array.dtype

    @property
    def shape(self) -> tuple:
        """``(n_slots, channels, X, Y, Z)``."""
        return tuple(self._array.shape)

    @property
    def sample_shape(self) -> tuple:
        """``(channels, X, Y, Z)``, the shape of one participant's volume."""
        return tuple(self._array.shape[1:])

    @property
    def keys(self) -> list[str]:
        """The participants this cache was opened with, in that order."""
        return list(self._keys)

    @property
    def max_abs_error(self) -> float:
        """Largest absolute difference between a stored value and its float32 decode."""
        return float(self.manifest.get("max_abs_error", 0.0))

    @property
    def nbytes(self) -> int:
        """Size of the array file in bytes."""
        return int(self.array_path.stat().st_size)

    def slot(self, key: str) -> int:
        """Return the slot of participant ``key``.

        Raises
        ------
        KeyError
            ``key`` is not in the cache.
        """
        try:
            return self._slots[key]
        except KeyError:
            raise KeyError(f"participant {key!r} is not among those the volume cache {self.array_path} "
                           "was opened with") from None

    def path_index(self) -> dict[tuple, int]:
        """Return ``{tuple of paths: slot}`` of :attr:`keys` (the key ``VolumeDataset`` uses)."""
        parts = self.manifest["participants"]
        return {tuple(parts[k]["paths"]): self._slots[k] for k in self._keys}

    # ------------------------------------------------------------ reading
    def read(self, slot: int, dtype=np.float32) -> np.ndarray:
        """Return slot ``slot`` as a new ``(channels, X, Y, Z)`` array of ``dtype``."""
        out = np.empty(self.sample_shape, dtype=dtype)
        _copy(out, self._array[int(slot)])
        return out

    def read_batch(self, slots, *, out: np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
        """Return slots ``slots`` stacked in one contiguous ``(n, channels, X, Y, Z)`` array.

        The slots are read in ascending order (sequential on disk) and placed in
        the order asked. ``out`` (e.g. a pinned buffer) receives them when given.

        Parameters
        ----------
        slots : sequence of int
        out : numpy.ndarray, optional
            Of shape ``(len(slots), *sample_shape)``.
        dtype : numpy dtype
            Of the result when ``out`` is not given: float32, or the stored dtype to
            convert elsewhere (e.g. on the GPU).

        Returns
        -------
        numpy.ndarray
        """
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        shape = (len(slots), *self.sample_shape)
        if out is None:
            out = np.empty(shape, dtype=dtype)
        elif out.shape != shape:
            raise UsageError(f"read_batch: out has shape {out.shape}, expected {shape}")
        for j in np.argsort(slots, kind="stable"):
            _copy(out[j], self._array[slots[j]])
        return out

    def dataset(self, keys: Sequence[str] | None = None) -> CachedVolumeDataset:
        """Return a :class:`CachedVolumeDataset` over ``keys`` (default :attr:`keys`, in that order)."""
        return CachedVolumeDataset(self, self.keys if keys is None else keys)

    def __repr__(self) -> str:
        return (f"VolumeCache({str(self.array_path)!r}, participants={len(self._keys)}, "
                f"shape={self.shape}, dtype={self.dtype})")

    # ------------------------------------------------------------ opening
    @classmethod
    def open(cls, folder, paths: Sequence, keys: Sequence[str] | None = None, *, name: str = "volumes",
             dtype: str = "float16", workers: int = 1, verify: bool = False) -> VolumeCache:
        """Return the cache of ``paths`` in ``folder``: reused, updated, extended or (re)built.

        Parameters
        ----------
        folder : path-like
            Where ``<name>.npy`` and ``<name>.json`` live (created).
        paths : sequence of str or sequence of sequence of str
            Per participant, one NIfTI path or one path per channel (same grid).
        keys : sequence of str, optional
            Per participant, its key in the manifest (e.g. ``"sub-01"``); default the first path.
        name : str
            File stem, e.g. the modality.
        dtype : {"float16", "float32"}
            Stored dtype (see the module docstring).
        workers : int
            Processes decoding the NIfTI files (1: this process).
        verify : bool
            Also check every slot's CRC-32 (reads the whole cache).

        Returns
        -------
        VolumeCache

        Raises
        ------
        InputFileError
            A missing or undecodable file, or a map on another grid (named).
        UsageError
            Bad arguments, or values beyond float16's range.
        """
        if dtype not in DTYPES:
            raise UsageError(f"volume cache dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        rows = _normalise_rows(paths)
        keys = [str(k) for k in (keys if keys is not None else [r[0] for r in rows])]
        if len(keys) != len(rows):
            raise UsageError(f"{len(keys)} keys for {len(rows)} participants' paths")
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})[:5]
            raise UsageError(f"participant keys must be unique; repeated: {', '.join(dup)}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with _locked(folder, name):
            stats = [file_stats(r) for r in rows]
            grid = header_grid(rows[0][0])
            want = {"grid": list(grid), "channels": len(rows[0]), "dtype": dtype}
            manifest, reason = _existing(folder, name, want, verify=verify)
            if manifest is None:
                update = _build(folder, name, rows, keys, stats, grid, dtype, workers)
                if reason != "no cache yet":
                    update.action, update.reason = "rebuilt", reason
                    logger.warning("volume cache %s rebuilt: %s", folder / f"{name}.npy", reason)
                else:
                    update.reason = reason
                manifest = _read_manifest(folder / f"{name}.json")
            else:
                update = _refresh(folder, name, manifest, rows, keys, stats, grid, dtype, workers)
        update.seconds = time.perf_counter() - t0
        logger.info("volume cache %s: %s (%d decoded) in %.1f s", folder / f"{name}.npy", update.action,
                    len(update.decoded), update.seconds)
        return cls(folder, name, manifest, update, keys)


def _read_manifest(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _existing(folder: Path, name: str, want: dict, *, verify: bool) -> tuple[dict | None, str]:
    """Return (manifest, "") of a usable cache, or (None, why it is not usable)."""
    mpath, apath = folder / f"{name}.json", folder / f"{name}.npy"
    if not mpath.exists() and not apath.exists():
        return None, "no cache yet"
    man = _read_manifest(mpath)
    if man is None:
        return None, f"manifest {mpath.name} missing or unreadable"
    if man.get("format") != FORMAT or man.get("version") != FORMAT_VERSION:
        return None, (f"manifest format {man.get('format')!r} v{man.get('version')} is not "
                      f"{FORMAT} v{FORMAT_VERSION}")
    if man.get("decoder") != DECODER_VERSION:
        return None, f"decoder version {man.get('decoder')} is not {DECODER_VERSION}"
    for k, v in want.items():
        if man.get(k) != v:
            return None, f"{k} {man.get(k)} differs from the requested {v}"
    try:
        shape, dt, offset, _ = _npy_header(apath)
    except (OSError, ValueError) as err:
        return None, f"array {apath.name} unreadable ({err})"
    if list(shape) != man.get("shape") or str(dt) != want["dtype"]:
        return None, (f"array header {shape} {dt} differs from the manifest's {man.get('shape')} "
                      f"{man.get('dtype')}")
    expected = offset + int(np.prod(shape)) * dt.itemsize
    size = apath.stat().st_size
    if size != expected:
        return None, (f"array {apath.name} has {size} bytes, its header says {expected} (truncated or "
                      "overwritten)")
    parts = man.get("participants")
    if not isinstance(parts, dict):
        return None, "manifest has no participants"
    slots = [e.get("slot") for e in parts.values()]
    if (any(not isinstance(s, int) or not 0 <= s < shape[0] for s in slots)
            or len(set(slots)) != len(slots)):
        return None, "manifest slots are out of range or repeated"
    if verify:
        arr = np.load(apath, mmap_mode="r")
        bad = [k for k, e in parts.items()
               if not e.get("pending") and crc32(arr[e["slot"]]) != e.get("crc32")]
        del arr
        for k in bad:
            parts[k]["pending"] = True
        if bad:
            logger.warning("volume cache %s: %d slot(s) fail their checksum and are decoded again: %s",
                           apath, len(bad), ", ".join(bad[:5]))
    return man, ""


def _entry(slot: int, row: list, st: tuple, err: float, crc: int) -> dict:
    return {"slot": int(slot), "paths": list(row), "sizes": st[0], "mtimes_ns": st[1],
            "max_abs_error": float(err), "crc32": int(crc)}


def _finish_manifest(man: dict) -> dict:
    errs = [e["max_abs_error"] for e in man["participants"].values() if "max_abs_error" in e]
    man["max_abs_error"] = float(max(errs, default=0.0))
    man["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return man


def _new_manifest(shape: tuple, grid: tuple, dtype: str, name: str) -> dict:
    from brainage import __version__

    return {"format": FORMAT, "version": FORMAT_VERSION, "decoder": DECODER_VERSION,
            "array": f"{name}.npy", "dtype": dtype, "shape": list(shape), "grid": list(grid),
            "channels": int(shape[1]), "brainage": __version__, "numpy": np.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "participants": {}}


def _build(folder, name, rows, keys, stats, grid, dtype, workers) -> CacheUpdate:
    """Decode every participant into a new array, written under a temporary name then renamed."""
    from numpy.lib import format as npy

    mpath = folder / f"{name}.json"
    mpath.unlink(missing_ok=True)  # no valid-looking pair while the array is replaced
    shape = (len(rows), len(rows[0]), *grid)
    with atomic_path(folder / f"{name}.npy") as tmp:
        arr = npy.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=shape)
        arr.flush()
        del arr
        done = run_jobs(tmp, dtype, grid, list(enumerate(rows)), workers)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    man = _new_manifest(shape, grid, dtype, name)
    for slot, (key, row, st) in enumerate(zip(keys, rows, stats)):
        man["participants"][key] = _entry(slot, row, st, *done[slot])
    atomic_write_json(mpath, _finish_manifest(man))
    return CacheUpdate("built", decoded=list(keys))


def _grow(apath: Path, n_new: int) -> bool:
    """Extend the ``.npy`` at ``apath`` to ``n_new`` slots in place; False if its header cannot grow."""
    import io

    from numpy.lib import format as npy

    shape, dt, offset, version = _npy_header(apath)
    new_shape = (int(n_new), *shape[1:])
    buf = io.BytesIO()
    header = {"descr": npy.dtype_to_descr(dt), "fortran_order": False, "shape": new_shape}
    if version == (1, 0):
        npy.write_array_header_1_0(buf, header)
    else:
        npy.write_array_header_2_0(buf, header)
    if len(buf.getvalue()) != offset:
        return False
    with open(apath, "rb+") as fh:
        fh.truncate(offset + int(np.prod(new_shape)) * dt.itemsize)
        fh.seek(0)
        fh.write(buf.getvalue())
        fh.flush()
        os.fsync(fh.fileno())
    return True


def _refresh(folder, name, man, rows, keys, stats, grid, dtype, workers) -> CacheUpdate:
    """Reuse ``man``'s cache; decode the changed, pending and new participants only."""
    apath, mpath = folder / f"{name}.npy", folder / f"{name}.json"
    parts = man["participants"]
    stale, new = [], []
    for key, row, st in zip(keys, rows, stats):
        e = parts.get(key)
        if e is None:
            new.append(key)
        elif (e.get("pending") or e.get("paths") != row or e.get("sizes") != st[0]
              or e.get("mtimes_ns") != st[1]):
            stale.append(key)
    if not stale and not new:
        return CacheUpdate("reused")
    pos = {k: i for i, k in enumerate(keys)}
    n_old = int(man["shape"][0])
    # journal: the slots about to be written are marked pending before any byte changes
    for i, key in enumerate(new):
        parts[key] = {"slot": n_old + i, "paths": rows[pos[key]], "pending": True}
    for key in stale:
        parts[key]["pending"] = True
    if new:
        man["shape"] = [n_old + len(new), *man["shape"][1:]]
    atomic_write_json(mpath, man)
    if new and not _grow(apath, n_old + len(new)):
        update = _build(folder, name, rows, keys, stats, grid, dtype, workers)
        update.action, update.reason = "rebuilt", "the array header cannot hold the longer shape"
        return update
    todo = stale + new
    done = run_jobs(apath, dtype, grid, [(parts[k]["slot"], rows[pos[k]]) for k in todo], workers)
    for key in todo:
        slot = parts[key]["slot"]
        parts[key] = _entry(slot, rows[pos[key]], stats[pos[key]], *done[slot])
    atomic_write_json(mpath, _finish_manifest(man))
    what = []
    if stale:
        what.append(f"{len(stale)} changed")
    if new:
        what.append(f"{len(new)} new")
    return CacheUpdate("extended" if new else "updated", decoded=todo,
                       reason=", ".join(what) + " participant(s)")


# --------------------------------------------------------------------------- datasets
