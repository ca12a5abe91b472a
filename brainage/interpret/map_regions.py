"""Atlas attributions of models on 3D maps (``kind: maps`` inputs): captum, region-wise.

For a fitted neural estimator (:class:`~brainage.estimators.regressor.PIDRegressor` or a
:class:`~brainage.estimators.baselines.BaselineRegressor` with 3D CNN encoders) and the
participants it predicts, the **attribution** of a participant's predicted age to a region
``r`` of a map modality is, as for the tabular inputs (:mod:`brainage.interpret.regions`),

``a_r = predicted_age − predicted_age with r ablated``  (signed, years),

where ablating ``r`` replaces the map's voxels inside ``r`` (every channel) by the
**training controls' mean map** there. The regions are the labels of a registry volume
atlas (default :data:`DEFAULT_ATLAS`) resampled (nearest neighbour) to the map grid; the
computation is captum's ``FeatureAblation`` with that label image as ``feature_mask`` and
the mean map as ``baselines``. Lobes and networks (the atlas region table) are group
ablations of all their regions' voxels at once. The other modalities keep the participant's
own values.

``method="integrated_gradients"`` instead sums captum's ``IntegratedGradients`` (same
baseline) within each label (a lobe: within all its labels). It is a gradient path
integral, not an ablation: the sum over every voxel of the grid equals
``predicted_age − prediction at the mean map`` (completeness), but one region's sum is not
the effect of replacing that region alone. ``bench/bench_map_regions.py`` compares the
two (``docs/interpret.md``, "Atlas attributions of models on maps").

The result is a :class:`~brainage.interpret.regions.RegionAttributions`, so
:func:`~brainage.interpret.regions.region_summary`,
:func:`~brainage.interpret.regions.participant_regions` and
:func:`~brainage.interpret.regions.attribution_image` read it unchanged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .regions import LEVELS, NA, UNIT_COLUMNS, RegionAttributions

__all__ = [
    "DEFAULT_ATLAS",
    "METHODS",
    "MapUnits",
    "age_forward",
    "concat_attributions",
    "map_attributions",
    "map_units",
    "mean_map",
]

logger = logging.getLogger(__name__)

#: Atlas whose labels partition a map when its input names none (``group.inputs.<m>.atlas``).
DEFAULT_ATLAS = "HarvardOxford"
#: Attribution methods of :func:`map_attributions`.
METHODS = ("ablation", "integrated_gradients")


# --------------------------------------------------------------------------- units
@dataclass(frozen=True)
class MapUnits:
    """The atlas units of one map grid.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per unit, columns :data:`brainage.interpret.regions.UNIT_COLUMNS`
        (``n_features``: voxels × channels).
    masks : dict of str to numpy.ndarray
        Per level, an int64 image on the map grid: ``0`` outside every unit of the
        level, ``j + 1`` in the voxels of the level's ``j``-th unit.
    positions : dict of str to numpy.ndarray
        Per level, the rows of ``table`` of the level's units, in mask order.
    """

    table: pd.DataFrame
    masks: dict
    positions: dict


def _hemisphere(values) -> str:
    values = sorted(set(values) - {NA})
    if not values:
        return NA
    return values[0] if len(values) == 1 else "bilateral"


def map_units(labels: np.ndarray, regions: pd.DataFrame, *, modality: str, atlas: str,
              n_channels: int = 1, levels=LEVELS) -> MapUnits:
    """Group a map's voxels into the atlas regions, lobes and networks present on its grid.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer label image on the map grid (0: no region).
    regions : pandas.DataFrame
        Region table (``index, name, hemisphere, lobe, network``); a label without a row
        becomes a region named ``label_<value>``.
    modality, atlas : str
        Written to the table.
    n_channels : int
        Channels of the map (``n_features`` counts voxels × channels).
    levels : sequence of str
        Among :data:`~brainage.interpret.regions.LEVELS`; a lobe (network) level is built
        only when a region present on the grid has a lobe (network).

    Returns
    -------
    MapUnits
    """
    labels = np.asarray(labels).astype(np.int64)
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    by_index = {int(r["index"]): r for r in regions.to_dict("records")} if regions is not None else {}
    records = []
    for v in values:
        rec = by_index.get(int(v))
        records.append(rec if rec is not None else {"index": int(v), "name": f"label_{int(v)}",
                                                     "hemisphere": NA, "lobe": NA, "network": NA})
    counts = dict(zip(values.tolist(), counts.tolist()))
    rows, masks, positions = [], {}, {}
    if "region" in levels and len(values):
        lut = np.zeros(int(values.max()) + 1, dtype=np.int64)
        lut[values] = np.arange(1, len(values) + 1)
        masks["region"] = lut[np.clip(labels, 0, None)] * (labels > 0)
        positions["region"] = np.arange(len(rows), len(rows) + len(values))
        for rec in records:
            rows.append({"level": "region", "region": str(rec["name"]), "index": int(rec["index"]),
                         "hemisphere": rec["hemisphere"], "lobe": rec["lobe"], "network": rec["network"],
                         "n_features": counts[int(rec["index"])] * n_channels})
    for level in ("lobe", "network"):
        if level not in levels:
            continue
        groups: dict[str, list] = {}
        for rec in records:
            if str(rec[level]) != NA:
                groups.setdefault(str(rec[level]), []).append(rec)
        if not groups:
            continue
        lut = np.zeros(int(values.max()) + 1, dtype=np.int64)
        start = len(rows)
        for j, (name, members) in enumerate(groups.items()):
            for rec in members:
                lut[int(rec["index"])] = j + 1
            rows.append({"level": level, "region": name, "index": pd.NA,
                         "hemisphere": _hemisphere(r["hemisphere"] for r in members),
                         "lobe": name if level == "lobe" else NA,
                         "network": name if level == "network" else NA,
                         "n_features": sum(counts[int(r["index"])] for r in members) * n_channels})
        masks[level] = lut[np.clip(labels, 0, None)] * (labels > 0)
        positions[level] = np.arange(start, len(rows))
    frame = pd.DataFrame(rows, columns=[c for c in UNIT_COLUMNS if c not in ("modality", "atlas")])
    frame.insert(0, "atlas", atlas)
    frame.insert(0, "modality", modality)
    frame["index"] = frame["index"].astype("Int64")
    return MapUnits(table=frame, masks=masks, positions=positions)


def _grid_labels(inp, atlas_id: str):
    """Return the atlas label image resampled (nearest) to the grid of the input's first map."""
    import nibabel as nib

    from ..atlases import load_atlas

    first = nib.load(str(inp.paths.iloc[0].to_numpy(dtype=object)[0]))
    atlas = load_atlas(atlas_id)
    return np.asarray(atlas.resample_to(first).dataobj).astype(np.int64), atlas.labels


# --------------------------------------------------------------------------- model
def age_forward(estimator, modality: str, others: list[str]):
    """Return ``forward(x, *others) -> predicted age`` (years) of a fitted neural estimator.

    ``x`` is a batch of ``modality``'s maps ``(n, C, X, Y, Z)``; ``others`` are the batches
    of the estimator's other modalities, in the order of ``others``, as the network reads
    them (tabular inputs standardised with the estimator's ``input_mean_`` /
    ``input_scale_``, see :func:`_network_inputs`). It runs the network as
    ``estimator.predict`` does (eval mode), with gradients, for captum.
    """
    net = estimator.model_
    use = list(estimator.modalities_)
    scale, mean = float(estimator.y_scale_), float(estimator.y_mean_)

    def forward(x, *rest):
        batch = dict(zip(others, rest))
        batch[modality] = x
        return net(batch, modalities=use)["pred"].float() * scale + mean

    return forward


def _network_inputs(estimator, X: dict, positions: np.ndarray, device) -> dict:
    """Return the network's input tensors of the participants at ``positions`` of ``X``."""
    import torch

    means = getattr(estimator, "input_mean_", {}) or {}
    scales = getattr(estimator, "input_scale_", {}) or {}
    out = {}
    for m, value in X.items():
        if isinstance(value, np.ndarray):
            arr = np.asarray(value[positions], dtype=np.float32)
            if arr.ndim == 1:
                arr = arr[:, None]
            if m in means:
                arr = (arr - means[m]) / scales[m]
        else:
            arr = np.stack([np.asarray(value[int(i)], dtype=np.float32) for i in positions])
        out[m] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(device)
    return out


def mean_map(dataset) -> np.ndarray:
    """Voxel-wise mean (float32) of every volume of a dataset (the reference controls' maps)."""
    total = None
    for i in range(len(dataset)):
        vol = np.asarray(dataset[i], dtype=np.float64)
        total = vol.copy() if total is None else total + vol
    return (total / len(dataset)).astype(np.float32)


def _inference_device(estimator, device):
    import torch

    from ..training.trainer import resolve_device

    dev = resolve_device(device if device is not None else getattr(estimator, "device", "auto"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        dev = torch.device("cpu")
    return dev


# --------------------------------------------------------------------------- attributions
def _region_values(attr, mask_flat: np.ndarray, n_units: int, method: str) -> np.ndarray:
    """Per participant and unit: the ablation value (equal on all its voxels) or the IG sum."""
    a = attr.detach().double().cpu().numpy().reshape(attr.shape[0], attr.shape[1], -1)
    if method == "ablation":
        first = np.full(n_units + 1, -1)
        order = np.arange(len(mask_flat))[::-1]
        first[mask_flat[order]] = order  # the first voxel of each unit
        return a[:, 0, first[1:]]
    summed = a.sum(1)
    return np.stack([np.bincount(mask_flat, weights=row, minlength=n_units + 1)[1:] for row in summed])


def map_attributions(model, transforms, cohort, reference_keys, target_keys, modalities, *,
                     method: str = "ablation", atlas: str | None = None, levels=LEVELS,
                     labels: dict | None = None, cache: dict | None = None, batch_size: int = 8,
                     perturbations_per_eval: int = 8, n_steps: int = 32,
                     device: str | None = None) -> RegionAttributions | None:
    """Attribute each target participant's predicted age to atlas regions of its maps.

    Parameters
    ----------
    model
        A fitted neural estimator (``model_``, ``modalities_``, ``y_mean_``, ``y_scale_``:
        :class:`~brainage.estimators.regressor.PIDRegressor` and its baselines).
    transforms
        The fit's feature transforms (``transforms.inputs(cohort, keys, modalities, cache)``).
    cohort : brainage.cohort.data.CohortData
    reference_keys : sequence of str
        Participants whose mean map is the baseline (the fit's training controls).
    target_keys : sequence of str
        Participants whose predictions are explained.
    modalities : sequence of str
        The model's modalities; those read as maps (no feature table) are attributed.
    method : {"ablation", "integrated_gradients"}
        captum's ``FeatureAblation`` on the atlas labels, or ``IntegratedGradients``
        summed within them.
    atlas : str, optional
        Registry volume atlas; default the input's ``spec["atlas"]``, else :data:`DEFAULT_ATLAS`.
    levels : sequence of str
        Units to attribute, among :data:`~brainage.interpret.regions.LEVELS`.
    labels : dict, optional
        Per modality, ``(label_image, region_table)`` on the map grid, instead of the
        resampled atlas.
    cache : dict, optional
        Volume cache of the ``maps`` inputs (passed to ``transforms.inputs``).
    batch_size : int
        Participants per captum call.
    perturbations_per_eval : int
        Ablated copies per network call (``FeatureAblation``).
    n_steps : int
        Integration steps (``IntegratedGradients``).
    device : str, optional
        Where the network runs; default the estimator's inference device.

    Returns
    -------
    RegionAttributions or None
        None when no modality of the model is a map, or no atlas region lies on the grid.

    Raises
    ------
    brainage.exceptions.UsageError
        For an unknown method, or a model without a torch network (a classical model).
    """
    from ..exceptions import UsageError

    if method not in METHODS:
        raise UsageError(f"method must be one of {METHODS}; got {method!r}")
    start = time.perf_counter()
    target = [str(k) for k in target_keys]
    reference = [str(k) for k in reference_keys]
    used = list(getattr(model, "modalities_", modalities))
    mods = [m for m in modalities if m in used]
    maps = [m for m in mods if cohort.inputs[m].features is None]
    if not maps or not target:
        return None
    if not hasattr(model, "model_"):
        raise UsageError(f"map attributions need a neural estimator with a torch network; got "
                         f"{type(model).__name__}")
    import torch
    from captum.attr import FeatureAblation, IntegratedGradients

    labels = labels or {}
    dev = _inference_device(model, device)
    net = model.model_
    X = transforms.inputs(cohort, target, mods, cache)
    ref = transforms.inputs(cohort, reference, maps, cache)
    tables, blocks = [], []
    net.to(dev).eval()
    try:
        for m in maps:
            if m in labels:
                grid, regions = labels[m]
                atlas_id = str(atlas or cohort.inputs[m].spec.get("atlas") or "custom")
            else:
                atlas_id = str(atlas or cohort.inputs[m].spec.get("atlas") or DEFAULT_ATLAS)
                grid, regions = _grid_labels(cohort.inputs[m], atlas_id)
            baseline = mean_map(ref[m])
            units = map_units(grid, regions, modality=m, atlas=atlas_id, n_channels=baseline.shape[0],
                              levels=levels)
            if units.table.empty:
                logger.info("%s: no region of atlas %s on the map grid", m, atlas_id)
                continue
            others = [o for o in mods if o != m]
            forward = age_forward(model, m, others)
            base_t = torch.from_numpy(baseline[None]).to(dev)
            block = np.empty((len(target), len(units.table)))
            flats = {level: mask.reshape(-1) for level, mask in units.masks.items()}
            masks_t = {lv: torch.from_numpy(mask[None, None]).to(dev) for lv, mask in units.masks.items()}
            for lo in range(0, len(target), batch_size):
                rows = np.arange(lo, min(lo + batch_size, len(target)))
                xb = _network_inputs(model, {o: X[o] for o in [m, *others]}, rows, dev)
                extra = tuple(xb[o] for o in others) or None
                if method == "integrated_gradients":  # one gradient integral serves every level
                    attr = IntegratedGradients(forward).attribute(
                        xb[m], baselines=base_t, additional_forward_args=extra, n_steps=n_steps,
                        internal_batch_size=max(batch_size, 1) * 4)
                for level, flat in flats.items():
                    pos = units.positions[level]
                    if method == "ablation":
                        with torch.no_grad():
                            attr = FeatureAblation(forward).attribute(
                                xb[m], baselines=base_t, feature_mask=masks_t[level],
                                additional_forward_args=extra, perturbations_per_eval=perturbations_per_eval)
                    block[rows[:, None], pos[None, :]] = _region_values(attr, flat, len(pos), method)
            tables.append(units.table)
            blocks.append(block)
    finally:
        net.to("cpu")
    if not tables:
        return None
    table = pd.concat(tables, ignore_index=True)
    table.index.name = "unit"
    values = pd.DataFrame(np.hstack(blocks), index=pd.Index(target, name="key"), columns=table.index)
    return RegionAttributions(values=values, units=table, seconds=time.perf_counter() - start)


def concat_attributions(parts) -> RegionAttributions | None:
    """Put the attributions of different modalities of the same participants side by side.

    ``parts`` are :class:`~brainage.interpret.regions.RegionAttributions` of one model and
    the same participants (e.g. the tabular ablations and the map attributions of one fold);
    None entries are skipped. Unit ids are renumbered in order. Returns None when every part
    is None.
    """
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    index = parts[0].values.index
    table = pd.concat([p.units for p in parts], ignore_index=True)
    table.index.name = "unit"
    values = np.hstack([p.values.reindex(index).to_numpy(dtype=float) for p in parts])
    return RegionAttributions(values=pd.DataFrame(values, index=index, columns=table.index),
                              units=table, seconds=float(sum(p.seconds for p in parts)))
