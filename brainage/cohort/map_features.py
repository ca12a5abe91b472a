"""Tabular features made from a participant's MNI maps: parcel means and whole-brain means.

The readers of ``kind: parcels`` and ``kind: whole_brain`` (:mod:`.readers` has
the others and their conventions): the maps are those :func:`.readers.read_maps`
finds, read with nibabel; an unreadable map is this participant's problem, not
an error of the cohort.
"""

from __future__ import annotations

import numpy as np

from ..outputs import res_label
from .readers import Read, _bad, read_maps

__all__ = ["WHOLE_BRAIN", "read_parcels", "read_whole_brain"]


def _load_map(path: str):
    """Return ``(image, float64 data)`` of a map, or the Read that says it is unreadable."""
    import nibabel as nib

    try:
        img = nib.load(path)
        return img, np.asarray(img.dataobj, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types; any is this participant's problem
        return _bad(path, f"not a readable NIfTI image ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else 'no message'})")


def read_parcels(root, label: str, session: str | None, spec, qc) -> Read:
    """Mean of each of ``spec.maps`` in each region of ``spec.atlas``, of one participant.

    The maps are those :func:`read_maps` finds (the first resting-state run passing
    ``qc`` for functional maps); the means are :func:`brainage.cohort.parcels.region_means`
    on the atlas resampled to the maps' grid, named ``<map>:<atlas>_<index>`` in map order,
    then region order. A region in which a map has no data voxel (the participant's brain
    mask misses it) is a problem, not a NaN feature.
    """
    from .parcels import atlas_labels, feature_name, region_means

    found = read_maps(root, label, session, spec, qc)
    if found.problem is not None:
        return found
    values, names = [], []
    for map_name, path in found.paths.items():
        loaded = _load_map(path)
        if isinstance(loaded, Read):
            return loaded
        img, data = loaded
        labels, present = atlas_labels(spec.atlas, img)
        if data.ndim != 3 or data.size != labels.size:
            return _bad(path, f"expected a 3D map on the res-{res_label(spec.resolution)} MNI grid, "
                        f"found shape {data.shape}")
        means = region_means(data, labels, present)
        empty = np.flatnonzero(~np.isfinite(means))
        if empty.size:
            shown = ", ".join(str(int(present[j])) for j in empty[:5])
            return Read(
                problem=f"{path}: no data in {empty.size} region(s) of atlas {spec.atlas} (index "
                f"{shown}{' …' if empty.size > 5 else ''}): the map is zero or NaN there, so its "
                "brain mask misses them; check this participant's registration and mask, or use "
                "an atlas of larger regions",
                category=f"map empty in atlas-{spec.atlas} regions",
            )
        values.append(means)
        names += [feature_name(map_name, spec.atlas, index) for index in present]
    return Read(values=np.concatenate(values), names=tuple(names))


#: Feature name suffix of a map's whole-brain mean (``kind: whole_brain``): ``<map>:whole_brain``.
WHOLE_BRAIN = "whole_brain"


def read_whole_brain(root, label: str, session: str | None, spec, qc) -> Read:
    """Mean of each of ``spec.maps`` over the voxels where it has data, of one participant.

    The maps are those :func:`read_maps` finds; a voxel has data where the map is finite
    and non-zero (the participant stages write zeros outside the brain mask). Features
    ``<map>:whole_brain`` in map order.
    """
    found = read_maps(root, label, session, spec, qc)
    if found.problem is not None:
        return found
    values = []
    for path in found.paths.values():
        loaded = _load_map(path)
        if isinstance(loaded, Read):
            return loaded
        data = loaded[1]
        inside = np.isfinite(data) & (data != 0)
        if not inside.any():
            return _bad(path, "the map has no finite, non-zero voxel")
        values.append(float(data[inside].mean()))
    return Read(values=np.array(values), names=tuple(f"{m}:{WHOLE_BRAIN}" for m in found.paths))
