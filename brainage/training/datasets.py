"""Multimodal training data: in-memory arrays, lazily loaded volumes, batch loaders.

A modality is either a numpy array with participants on axis 0 (feature
vectors, or volumes that fit in memory) or any indexable dataset whose item
``i`` is participant ``i``'s input (for example :func:`volume_dataset`, which
loads NIfTI files with MONAI on demand). :class:`MultiModalData` holds the
modalities of one cohort and checks they describe the same participants.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from brainage.exceptions import UsageError

__all__ = ["MultiModalData", "VolumeDataset", "batch_indices", "tables_as_arrays", "volume_dataset"]

logger = logging.getLogger(__name__)


def tables_as_arrays(X):
    """Turn the pandas tables among the modalities of ``X`` into float32 arrays, rows = participants.

    A :class:`pandas.DataFrame` (or Series) is a table of participants × features, not an
    indexable dataset (``frame[i]`` would select a column). Every table must hold only numeric
    columns, and all the tables of ``X`` must share the same row index (the same participants
    in the same order). Other values are returned unchanged.

    Parameters
    ----------
    X : dict of str to array-like, dataset or pandas object
        The modalities.

    Returns
    -------
    dict
        ``X`` with each table replaced by its values.

    Raises
    ------
    UsageError
        A table with non-numeric columns, or tables whose row indexes differ.

    Examples
    --------
    >>> import pandas as pd
    >>> out = tables_as_arrays({"a": pd.DataFrame({"x": [1, 2], "y": [3, 4]})})
    >>> out["a"].shape
    (2, 2)
    """
    if not isinstance(X, Mapping):
        return X
    import pandas as pd
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    out, index, first = dict(X), None, None
    for name, value in X.items():
        if not isinstance(value, (pd.DataFrame, pd.Series)):
            continue
        frame = value.to_frame() if isinstance(value, pd.Series) else value
        bad = [str(c) for c in frame.columns
               if not is_numeric_dtype(frame[c]) or is_bool_dtype(frame[c])]
        if bad:
            raise UsageError(
                f"Modality {name!r} is a table with non-numeric column(s) {bad[:5]}; give numeric "
                "features only (participants as rows), e.g. frame.drop(columns=[...])."
            )
        if index is None:
            index, first = frame.index, name
        elif not frame.index.equals(index):
            raise UsageError(
                f"Modalities {first!r} and {name!r} are tables with different row indexes; rows "
                f"must be the same participants in the same order (e.g. X[{name!r}] = "
                f"X[{name!r}].loc[X[{first!r}].index])."
            )
        out[name] = frame.to_numpy(dtype=np.float32)
    return out


class VolumeDataset(torch.utils.data.Dataset):
    """Participants' volumes loaded on demand with MONAI (one or more channels each).

    Parameters
    ----------
    paths : sequence of str or sequence of sequence of str
        Per participant, one NIfTI path or a list of paths (one per channel,
        e.g. GM and WM probability maps on the same grid).
    cache : bool or dict
        Keep loaded volumes in memory after the first epoch. A dict is used as
        the store (keyed by the participant's tuple of paths), so datasets over
        overlapping participants (the folds of a cross-validation) share it.

    Examples
    --------
    >>> ds = VolumeDataset([["gm.nii.gz", "wm.nii.gz"]])  # doctest: +SKIP
    >>> ds[0].shape  # doctest: +SKIP
    (2, 91, 109, 91)
    """

    def __init__(self, paths: Sequence, *, cache: bool | dict = False):
        from monai.transforms import LoadImage

        self.paths = [[str(p)] if isinstance(p, (str, bytes)) or not isinstance(
            p, Sequence) else [str(q) for q in p] for p in paths]
        self._load = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)
        self._cache: dict | None = cache if isinstance(cache, dict) else ({} if cache else None)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        key = tuple(self.paths[i])
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        chans = []
        for path in self.paths[i]:
            try:
                img = self._load(path)
            except Exception as err:  # MONAI raises several types for unreadable files
                from brainage.exceptions import InputFileError

                raise InputFileError(
                    path, f"cannot be read as a volume ({err})",
                    "check that the file exists and is a valid NIfTI image",
                ) from err
            chans.append(np.asarray(img, dtype=np.float32))
        shapes = {c.shape[1:] for c in chans}
        if len(shapes) != 1:
            from brainage.exceptions import InputFileError

            raise InputFileError(
                self.paths[i][0], f"channels have different grids {sorted(shapes)}",
                "resample every channel of a participant to the same grid",
            )
        vol = np.concatenate(chans, axis=0)
        if self._cache is not None:
            self._cache[key] = vol
        return vol


def volume_dataset(paths: Sequence, *, cache: bool | dict = False) -> VolumeDataset:
    """Return a :class:`VolumeDataset` over ``paths`` (see there)."""
    return VolumeDataset(paths, cache=cache)


class MultiModalData:
    """The inputs of several modalities for the same participants.

    Parameters
    ----------
    X : mapping of str to array or dataset
        Modality name → numpy array ``(n, ...)`` or an indexable dataset of length n.

    Attributes
    ----------
    modalities : list of str
    n : int
        Number of participants.
    sample_shapes : dict
        Shape of one participant's input per modality.
    """

    def __init__(self, X: Mapping):
        X = tables_as_arrays(X)
        if not isinstance(X, Mapping) or len(X) == 0:
            raise UsageError(
                "X must be a dict mapping modality names to arrays or datasets, e.g. "
                "{'anat': gm_maps, 'func': connectivity}; got "
                f"{type(X).__name__}."
            )
        self.X = {}
        lengths = {}
        for name, value in X.items():
            if not isinstance(name, str):
                raise UsageError(f"Modality names must be strings, got {name!r}.")
            if isinstance(value, (np.ndarray, torch.Tensor, list)) and not isinstance(
                value, torch.utils.data.Dataset
            ):
                arr = np.asarray(value, dtype=np.float32)
                if arr.ndim == 1:
                    arr = arr[:, None]
                if not np.all(np.isfinite(arr)):
                    bad = int((~np.isfinite(arr)).reshape(len(arr), -1).any(1).sum())
                    raise UsageError(
                        f"Modality {name!r} has non-finite values for {bad} participant(s); "
                        "impute or drop them before fitting."
                    )
                self.X[name] = arr
            elif hasattr(value, "__len__") and hasattr(value, "__getitem__"):
                self.X[name] = value
            else:
                raise UsageError(
                    f"Modality {name!r} is a {type(value).__name__}; expected a numpy array "
                    "(participants on axis 0) or an indexable dataset."
                )
            lengths[name] = len(self.X[name])
        if len(set(lengths.values())) != 1:
            raise UsageError(
                f"Modalities have different numbers of participants {lengths}; every "
                "modality needs one entry per participant, in the same order."
            )
        self.modalities = list(self.X)
        self.n = next(iter(lengths.values()))
        self.sample_shapes = {m: tuple(np.shape(self._item(m, 0))) for m in self.modalities}

    def is_array(self, m: str) -> bool:
        """Whether modality ``m`` is held in memory as an array."""
        return isinstance(self.X[m], np.ndarray)

    def _item(self, m: str, i: int):
        v = self.X[m][i]
        if isinstance(v, Mapping):
            raise UsageError(
                f"Item {i} of modality {m!r} is a dict; give a dataset whose items are arrays."
            )
        return v

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Return the inputs of participants ``idx`` as float32 tensors.

        An array modality is sliced; a dataset with a ``batch(indices)`` method (e.g.
        :class:`~brainage.training.volume_cache.CachedVolumeDataset`, which slices its
        memory map into one contiguous array) is asked for the whole batch at once,
        and must return what stacking its items would; any other dataset's items are
        stacked one by one.
        """
        out = {}
        for m in self.modalities:
            if self.is_array(m):
                out[m] = torch.from_numpy(np.ascontiguousarray(self.X[m][idx]))
            elif callable(getattr(self.X[m], "batch", None)):
                arr = self.X[m].batch(np.asarray(idx, dtype=np.int64).reshape(-1))
                out[m] = torch.as_tensor(np.ascontiguousarray(arr), dtype=torch.float32)
            else:
                out[m] = torch.stack(
                    [torch.as_tensor(np.asarray(self._item(m, int(i))), dtype=torch.float32)
                     for i in idx]
                )
        return out

    def subset(self, idx: np.ndarray) -> dict:
        """Return ``{m: inputs of idx}`` for array modalities (datasets must be indexed lazily)."""
        return {m: self.X[m][idx] for m in self.modalities if self.is_array(m)}


def batch_indices(
    indices: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
) -> list[np.ndarray]:
    """Split ``indices`` into mini-batches, reproducibly and shard-aware.

    The permutation depends only on ``seed`` and ``epoch``; with ``world_size``
    > 1 the shuffled list is padded to a multiple of ``world_size`` and rank r
    takes every ``world_size``-th entry (as ``DistributedSampler`` does).

    Parameters
    ----------
    indices : numpy.ndarray
        Participant indices to iterate over.
    batch_size : int
        Batch size per process.
    shuffle : bool
        Shuffle (training) or keep order (evaluation).
    seed, epoch : int
        Seed of the permutation.
    rank, world_size : int
        This process's place among data-parallel processes.
    drop_last : bool
        When shuffling, drop a last batch smaller than ``batch_size``. A shuffled
        last batch of one participant is always dropped (batch normalisation
        cannot train on it); evaluation batches are never dropped.

    Returns
    -------
    list of numpy.ndarray
    """
    idx = np.asarray(indices)
    if shuffle:
        rng = np.random.default_rng([int(seed), int(epoch)])
        idx = idx[rng.permutation(len(idx))]
    if world_size > 1:
        pad = (-len(idx)) % world_size
        if pad:
            idx = np.concatenate([idx, idx[:pad]])
        idx = idx[rank::world_size]
    batches = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    if shuffle and len(batches) > 1:
        if len(batches[-1]) < 2 or (drop_last and len(batches[-1]) < batch_size):
            batches = batches[:-1]
    return batches
