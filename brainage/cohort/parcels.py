"""Region means of MNI-space maps on a volume atlas (``kind: parcels`` and the atlas PID).

A map's value in a region is the mean over the region's voxels where the map has
data (finite and non-zero: the participant stages write zeros outside the brain
mask). The atlas is resampled (nearest neighbour) once per grid and kept, so a
cohort of maps on one ``res-`` grid resamples it once.

Feature names are ``<map>:<atlas>_<index>`` (e.g. ``falff:HarvardOxford_3``),
the region part being the name :mod:`brainage.anat.features` gives the region's
GM volume, so a region's structural and functional features pair by name.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

__all__ = ["MAP_SEPARATOR", "atlas_labels", "feature_name", "parcel_means", "region_means",
           "split_feature"]

#: Separates the map from the region in a parcel feature name.
MAP_SEPARATOR = ":"


def feature_name(map_name: str, atlas: str, index: int) -> str:
    """Return the feature name of ``map_name`` in region ``index`` of ``atlas``.

    Examples
    --------
    >>> feature_name("falff", "HarvardOxford", 3)
    'falff:HarvardOxford_3'
    """
    return f"{map_name}{MAP_SEPARATOR}{atlas}_{int(index)}"


def split_feature(name: str) -> tuple[str, str] | None:
    """Return ``(map, region column)`` of a parcel feature name, or None for another name.

    Examples
    --------
    >>> split_feature("reho:AAL_12")
    ('reho', 'AAL_12')
    >>> split_feature("AAL_12") is None
    True
    """
    if name.count(MAP_SEPARATOR) != 1:
        return None
    map_name, region = name.split(MAP_SEPARATOR)
    return (map_name, region) if map_name and region else None


@functools.lru_cache(maxsize=8)
def _labels_on(atlas: str, shape: tuple, affine: bytes) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    from ..atlases import load_atlas

    grid = nib.Nifti1Image(np.zeros(shape, dtype=np.uint8),
                           np.frombuffer(affine, dtype=np.float64).reshape(4, 4))
    labels = np.asarray(load_atlas(atlas).resample_to(grid).dataobj).astype(np.int64).ravel()
    labels = np.where(labels > 0, labels, 0)
    labels.setflags(write=False)
    present = np.unique(labels[labels > 0])
    present.setflags(write=False)
    return labels, present


def atlas_labels(atlas: str, img) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(labels, present)``: ``atlas`` on ``img``'s grid (flat, 0 outside) and its indices.

    Parameters
    ----------
    atlas : str
        Registry volume atlas.
    img : nibabel.Nifti1Image
        Any image on the grid (its shape's first three axes and its affine are used).

    Returns
    -------
    labels : numpy.ndarray of int64, shape (n_voxels,)
        Read-only; cached per atlas and grid.
    present : numpy.ndarray of int64
        The region indices with at least one voxel on this grid, ascending.
    """
    affine = np.asarray(img.affine, dtype=np.float64)
    return _labels_on(atlas, tuple(int(s) for s in img.shape[:3]), affine.tobytes())


def region_means(data: np.ndarray, labels: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Mean of ``data`` in each region of ``present`` over its finite, non-zero voxels (NaN: none).

    Examples
    --------
    >>> region_means(np.array([1.0, 3.0, 0.0, 5.0]), np.array([1, 1, 2, 0]), np.array([1, 2]))
    array([ 2., nan])
    """
    data = np.asarray(data, dtype=np.float64).ravel()
    size = int(labels.max()) + 1 if labels.size else 1
    inside = np.isfinite(data) & (data != 0) & (labels > 0)
    sums = np.bincount(labels[inside], weights=data[inside], minlength=size)
    counts = np.bincount(labels[inside], minlength=size)
    return np.where(counts[present] > 0, sums[present] / np.maximum(counts[present], 1), np.nan)


def parcel_means(paths: pd.DataFrame, atlas: str) -> pd.DataFrame:
    """Mean of each map in each region of ``atlas``, per participant.

    Parameters
    ----------
    paths : pandas.DataFrame
        Index: participant keys; one column per map (``falff``, ``reho`` …), NIfTI paths
        on one MNI grid (missing: None).
    atlas : str
        Registry volume atlas, resampled (nearest) to the first map's grid.

    Returns
    -------
    pandas.DataFrame
        Same index; columns :func:`feature_name` per map and region (NaN where a participant
        has no map, a map on another grid, or no data voxel in the region).
    """
    import nibabel as nib

    first = next(p for p in paths.to_numpy(dtype=object).ravel() if isinstance(p, str) and p)
    labels, present = atlas_labels(atlas, nib.load(first))
    out = {}
    for name in paths.columns:
        values = np.full((len(paths), len(present)), np.nan)
        for i, path in enumerate(paths[name].to_numpy(dtype=object)):
            if not isinstance(path, str) or not path:
                continue
            data = np.asarray(nib.load(path).dataobj, dtype=np.float64)
            if data.size != labels.size:
                continue
            values[i] = region_means(data, labels, present)
        for j, index in enumerate(present):
            out[feature_name(name, atlas, index)] = values[:, j]
    return pd.DataFrame(out, index=paths.index)
