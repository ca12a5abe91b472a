"""Reading a :class:`~brainage.training.volume_cache.VolumeCache`: a dataset and a store view.

:class:`CachedVolumeDataset` has ``VolumeDataset``'s item interface plus whole-batch
reads from the memory map; :class:`VolumeCacheStore` is the read-only dict view a
``VolumeDataset`` can take as its shared store. Both only call the cache's
``slot``, ``read``, ``read_batch`` and ``path_index``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from brainage.training.volume_cache import VolumeCache

__all__ = ["CachedVolumeDataset", "VolumeCacheStore"]


class CachedVolumeDataset:
    """Participants' volumes read from a :class:`VolumeCache` (the item interface of ``VolumeDataset``).

    ``ds[i]`` is participant ``keys[i]``'s ``(channels, X, Y, Z)`` float32 array;
    :meth:`batch` stacks several by slicing the memory map.

    Parameters
    ----------
    cache : VolumeCache
    keys : sequence of str
        Participants, in the dataset's order.

    Examples
    --------
    >>> ds = CachedVolumeDataset(cache, ["sub-01", "sub-02"])  # doctest: +SKIP
    >>> ds.batch([1, 0]).shape                                  # doctest: +SKIP
    (2, 1, 99, 117, 95)
    """

    def __init__(self, cache: VolumeCache, keys: Sequence[str]):
        self.cache = cache
        self.keys = [str(k) for k in keys]
        self.slots = np.array([cache.slot(k) for k in self.keys], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.cache.read(self.slots[int(i)])

    @property
    def paths(self) -> list[list[str]]:
        """Per participant, its files (as :attr:`VolumeDataset.paths`)."""
        parts = self.cache.manifest["participants"]
        return [list(parts[k]["paths"]) for k in self.keys]

    def batch(self, indices, *, out: np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
        """Return items ``indices`` as one contiguous ``(n, channels, X, Y, Z)`` array (``read_batch``)."""
        return self.cache.read_batch(self.slots[np.asarray(indices, dtype=np.int64)], out=out, dtype=dtype)


class VolumeCacheStore(dict):
    """Read-only view of volume caches, keyed as ``VolumeDataset``'s ``cache`` dict is.

    ``VolumeDataset(paths, cache=store)`` then reads a participant whose tuple of
    paths is in one of the caches from its memory map, and decodes any other from
    its NIfTI files without keeping it (``store[key] = volume`` is ignored: the
    store does not grow in memory). It subclasses :class:`dict` only because
    ``VolumeDataset`` takes a dict as its shared store; its own contents are the
    caches', not the dict's.

    Parameters
    ----------
    caches : mapping of str to VolumeCache
        E.g. one per modality.
    """

    def __init__(self, caches: Mapping[str, VolumeCache]):
        super().__init__()
        self.caches = dict(caches)
        self._index = {paths: (cache, slot) for cache in self.caches.values()
                       for paths, slot in cache.path_index().items()}

    def __contains__(self, key) -> bool:
        try:
            return key in self._index
        except TypeError:  # unhashable
            return False

    def __getitem__(self, key) -> np.ndarray:
        cache, slot = self._index[key]
        return cache.read(slot)

    def get(self, key, default=None):
        """Return ``self[key]``, or ``default`` when not cached."""
        return self[key] if key in self else default

    def __setitem__(self, key, value) -> None:
        """Ignore: volumes outside the caches are not kept in memory."""

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self):
        return iter(self._index)

    def keys(self):
        """Return the cached tuples of paths."""
        return self._index.keys()

    def __eq__(self, other) -> bool:
        return self is other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"VolumeCacheStore({', '.join(f'{k}: {c!r}' for k, c in self.caches.items())})"
