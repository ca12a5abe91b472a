"""The atlas regions that drive a fitted model's predicted ages: ablation of raw features.

For a fitted model, the feature transforms of its fit (ComBat, selection, PCA,
:class:`brainage.group.transforms.FeatureTransforms` or anything with the same
``inputs(cohort, keys, modalities, cache)``) and the participants it predicts,
the **attribution** of a participant's predicted age to a region ``r`` of a
modality is

``a_r = predicted_age − predicted_age with r ablated``  (signed, years),

where ablating ``r`` replaces the modality's **raw** features that belong to
``r`` (before the transforms) by their mean over the reference participants
(the fold's training controls). What belongs to a region
(:func:`ablation_units`):

* regional inputs: the volume ``<atlas>_<index>`` belongs to that atlas region;
  each tissue total (:data:`TISSUE_REGIONS`: total GM, WM, CSF, TIV, the lateral
  ventricles) is a region of its own;
* parcels inputs: the mean ``<map>:<atlas>_<index>`` of each map belongs to that region;
* connectivity inputs: the edge ``A--B`` belongs to both A and B, so ablating A
  replaces A's whole connectivity profile;
* lobes and networks (the atlas region table, ``atlases/<atlas>_regions.tsv``):
  every feature of every region of the lobe (network) is ablated at once, a
  group ablation, not a sum of region attributions. Tissue totals stay units of
  their own at these levels.

All ablated copies of one modality are stacked and predicted in a few calls
(:data:`MAX_CELLS` raw cells per call), so the cost is a handful of model calls
per fold whatever the model (ridge, PIDReg, late fusion …: only ``predict`` is
used). The transforms act on each modality alone, so the other modalities'
inputs are transformed once and repeated. See ``docs/interpret.md``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..cohort.parcels import split_feature

__all__ = [
    "LEVELS",
    "MAX_CELLS",
    "TISSUE_REGIONS",
    "AblationUnits",
    "RegionAttributions",
    "ablation_attributions",
    "ablation_units",
    "attribution_image",
    "combine_folds",
    "participant_regions",
    "region_summary",
]

logger = logging.getLogger(__name__)

#: Levels of aggregation, in output order.
LEVELS = ("region", "lobe", "network")
#: Tissue totals of regional inputs (``brainage.cohort.readers.TISSUE_COLUMNS``) and the region
#: each one is reported as (``Lateral_Ventricles`` is the simulator's truth row name).
TISSUE_REGIONS = {"gm_ml": "Total_GM", "wm_ml": "Total_WM", "csf_ml": "Total_CSF", "tiv_ml": "TIV",
                  "ventricles_ml": "Lateral_Ventricles"}
#: Separator of the two regions in a connectivity edge name (``brainage.cohort.readers``).
EDGE_SEPARATOR = "--"
#: Most raw feature values stacked into one model call (float64: 8 bytes each).
MAX_CELLS = 10_000_000
#: Columns of :attr:`AblationUnits.table` and :attr:`RegionAttributions.units`.
UNIT_COLUMNS = ("modality", "atlas", "level", "region", "index", "hemisphere", "lobe", "network",
                "n_features")
NA = "n/a"


# --------------------------------------------------------------------------- units
@dataclass(frozen=True)
class AblationUnits:
    """The groups of one modality's raw features that are ablated together.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per unit, columns :data:`UNIT_COLUMNS` (``index`` is the atlas
        label, ``pd.NA`` for tissue totals, lobes and networks).
    columns : tuple of numpy.ndarray
        Positions, in the modality's feature columns, of each unit's features.
    """

    table: pd.DataFrame
    columns: tuple


def _atlas_regions(atlas) -> pd.DataFrame | None:
    from ..atlases import region_table
    from ..exceptions import AtlasError, UnknownAtlasError

    if not atlas:
        return None
    try:
        return region_table(str(atlas))
    except (AtlasError, UnknownAtlasError):
        logger.info("atlas %r has no region table: features are their own regions", atlas)
        return None


def _row(region, level, n, *, index=pd.NA, hemisphere=NA, lobe=NA, network=NA) -> dict:
    return {"level": level, "region": str(region), "index": index, "hemisphere": hemisphere,
            "lobe": lobe, "network": network, "n_features": n}


def _hemisphere(values) -> str:
    values = sorted(set(values) - {NA})
    if not values:
        return NA
    return values[0] if len(values) == 1 else "bilateral"


def ablation_units(inp, *, regions: pd.DataFrame | None = None, levels=LEVELS) -> AblationUnits:
    """Group a tabular modality's features into regions, lobes and networks.

    Parameters
    ----------
    inp : brainage.cohort.data.ModalityInput
        A ``regional`` or ``connectivity`` input (``features``, ``spec["atlas"]``).
    regions : pandas.DataFrame, optional
        Region table (``index, name, hemisphere, lobe, network``); default the
        registry's table of ``spec["atlas"]``. Without one (an atlas outside the
        registry) every feature is a region of its own and there are no lobes
        or networks.
    levels : sequence of str
        Levels to build, among :data:`LEVELS`. A lobe (network) level is built
        only when the table gives at least one region a lobe (network).

    Returns
    -------
    AblationUnits

    Examples
    --------
    >>> import pandas as pd
    >>> from brainage.cohort.data import ModalityInput
    >>> frame = pd.DataFrame([[0.1, 0.2, 0.3]], columns=["A--B", "A--C", "B--C"])
    >>> inp = ModalityInput("func", "connectivity", frame, None, {"atlas": None})
    >>> units = ablation_units(inp)
    >>> list(units.table["region"]), [c.tolist() for c in units.columns]
    (['A', 'B', 'C'], [[0, 1], [0, 2], [1, 2]])
    """
    atlas = inp.spec.get("atlas")
    table = _atlas_regions(atlas) if regions is None else regions
    by_index, by_name = {}, {}
    if table is not None:
        table = table.reset_index(drop=True)
        by_index = {int(i): r for i, r in zip(table["index"], table.to_dict("records"))}
        names = table["name"].astype(str)
        by_name = {n: r for n, r in zip(names, table.to_dict("records")) if (names == n).sum() == 1}
    names = [str(c) for c in inp.features.columns]
    members: dict[str, list[int]] = {}  # region key -> feature positions, in first-seen order
    info: dict[str, dict] = {}
    tissue: dict[str, list[int]] = {}

    def add(key, record, j):
        if key not in members:
            members[key], info[key] = [], record
        members[key].append(j)

    prefix = f"{atlas}_"
    for j, name in enumerate(names):
        if inp.kind in ("regional", "tissue") and name in TISSUE_REGIONS:
            tissue.setdefault(TISSUE_REGIONS[name], []).append(j)
            continue
        if inp.kind == "connectivity" and name.count(EDGE_SEPARATOR) == 1:
            for end in name.split(EDGE_SEPARATOR):
                add(end, by_name.get(end), j)
            continue
        if inp.kind == "parcels" and split_feature(name) is not None:
            name = split_feature(name)[1]  # a map's mean in a region belongs to that region
        label = name.removeprefix(prefix) if name.startswith(prefix) else None
        if label is not None and label.isdigit() and int(label) in by_index:
            record = by_index[int(label)]
            add(str(record["name"]), record, j)
        else:
            add(name, None, j)
    rows, columns = [], []
    if "region" in levels:
        for key, cols in members.items():
            rec = info[key]
            extra = {} if rec is None else {"index": int(rec["index"]), "hemisphere": rec["hemisphere"],
                                            "lobe": rec["lobe"], "network": rec["network"]}
            rows.append(_row(key, "region", len(cols), **extra))
            columns.append(np.asarray(cols, dtype=np.int64))
        rows, columns = _tissue_units(tissue, "region", rows, columns)
    for level in ("lobe", "network"):
        if level not in levels:
            continue
        groups: dict[str, set] = {}
        hemis: dict[str, list] = {}
        for key, cols in members.items():
            rec = info[key]
            value = NA if rec is None else str(rec[level])
            if value == NA:
                continue
            groups.setdefault(value, set()).update(cols)
            hemis.setdefault(value, []).append(rec["hemisphere"])
        if not groups:
            continue
        for value, cols in groups.items():
            rows.append(_row(value, level, len(cols), hemisphere=_hemisphere(hemis[value]),
                             **{level: value}))
            columns.append(np.asarray(sorted(cols), dtype=np.int64))
        rows, columns = _tissue_units(tissue, level, rows, columns)
    frame = pd.DataFrame(rows, columns=[c for c in UNIT_COLUMNS if c not in ("modality", "atlas")])
    frame.insert(0, "atlas", str(atlas) if atlas else NA)
    frame.insert(0, "modality", inp.name)
    frame["index"] = frame["index"].astype("Int64")
    return AblationUnits(table=frame, columns=tuple(columns))


def _tissue_units(tissue, level, rows, columns):
    for region, cols in tissue.items():
        rows.append(_row(region, level, len(cols), hemisphere="bilateral"))
        columns.append(np.asarray(cols, dtype=np.int64))
    return rows, columns


# --------------------------------------------------------------------------- ablation
@dataclass
class RegionAttributions:
    """Signed attributions of participants' predicted ages to ablation units.

    Attributes
    ----------
    values : pandas.DataFrame
        Index: participant keys; one column per unit id (the index of
        ``units``): ``predicted_age − predicted_age with the unit ablated``, years.
    units : pandas.DataFrame
        Index: unit id; columns :data:`UNIT_COLUMNS`.
    n_models : pandas.Series
        Per participant, the number of fold models averaged (1 for a control out of fold).
    seconds : float
        Time spent computing the ablations.
    """

    values: pd.DataFrame
    units: pd.DataFrame
    n_models: pd.Series = field(default=None)
    seconds: float = 0.0

    def __post_init__(self):
        if self.n_models is None:
            self.n_models = pd.Series(1, index=self.values.index, name="n_models")


def _stacked_cohort(cohort, target, n_copies, modalities, replace: dict):
    """Return a CohortData of ``n_copies`` copies of the ``target`` rows (copy-major)."""
    from ..cohort.data import CohortData, ModalityInput

    parts = cohort.participants.loc[target]
    keys = pd.Index([f"{k}#{c}" for c in range(n_copies) for k in target], name=parts.index.name)
    stacked_parts = pd.concat([parts] * n_copies)
    stacked_parts.index = keys
    inputs = {}
    for m in modalities:
        inp = cohort.inputs[m]
        if m in replace:
            feats = pd.DataFrame(replace[m], index=keys, columns=inp.features.columns, copy=False)
            inputs[m] = ModalityInput(m, inp.kind, feats, None, inp.spec)
        elif inp.features is None:
            paths = pd.concat([inp.paths.loc[target]] * n_copies)
            paths.index = keys
            inputs[m] = ModalityInput(m, inp.kind, None, paths, inp.spec)
    return CohortData(stacked_parts, inputs, cohort.exclusions, cohort.control_labels), list(keys)


def ablation_attributions(model, transforms, cohort, reference_keys, target_keys, modalities, *,
                          units: dict | None = None, cache: dict | None = None,
                          max_cells: int = MAX_CELLS) -> RegionAttributions | None:
    """Attribute each target participant's predicted age to regions by ablating raw features.

    Parameters
    ----------
    model
        A fitted estimator with ``predict(inputs)`` (a dict of modality → array or dataset).
    transforms
        The fit's feature transforms: ``transforms.inputs(cohort, keys, modalities, cache)``
        returns the model inputs (:class:`brainage.group.transforms.FeatureTransforms`).
    cohort : brainage.cohort.data.CohortData
    reference_keys : sequence of str
        Participants whose raw feature means replace an ablated region (the fit's
        training controls).
    target_keys : sequence of str
        Participants whose predictions are explained.
    modalities : sequence of str
        The model's modalities; the tabular ones are ablated.
    units : dict of str to AblationUnits, optional
        Per modality; default :func:`ablation_units` of every tabular modality.
    cache : dict, optional
        Volume cache for ``maps`` inputs (passed to ``transforms.inputs``).
    max_cells : int
        Most raw feature values of the ablated modality stacked into one ``predict`` call.

    Returns
    -------
    RegionAttributions or None
        None when no modality of the model is tabular.
    """
    start = time.perf_counter()
    target = [str(k) for k in target_keys]
    reference = [str(k) for k in reference_keys]
    modalities = list(modalities)
    if units is None:
        units = {m: ablation_units(cohort.inputs[m]) for m in modalities
                 if cohort.inputs[m].features is not None}
    units = {m: u for m, u in units.items() if len(u.columns)}
    if not units or not target:
        return None
    n = len(target)
    base = transforms.inputs(cohort, target, modalities, cache)
    predicted = np.asarray(model.predict(base), dtype=float)
    maps = [m for m in modalities if cohort.inputs[m].features is None]
    # a model with one encoder per modality encodes the modalities that stay fixed once
    reuse = bool(getattr(model, "takes_latents", False)) and len(modalities) > 1
    blocks, tables = [], []
    for m, u in units.items():
        others = [o for o in modalities if o != m]
        fixed = model.transform(base, modalities=others) if reuse else None
        feats = cohort.inputs[m].features
        raw = feats.loc[target].to_numpy(dtype=float)
        mean = np.nanmean(feats.loc[reference].to_numpy(dtype=float), axis=0)
        block = np.empty((n, len(u.columns)))
        per_chunk = max(1, int(max_cells // max(raw.size, 1)))
        for lo in range(0, len(u.columns), per_chunk):
            jobs = range(lo, min(lo + per_chunk, len(u.columns)))
            stacked = np.tile(raw, (len(jobs), 1))
            for c, j in enumerate(jobs):
                cols = u.columns[j]
                stacked[c * n:(c + 1) * n, cols] = mean[cols]
            if reuse:
                sub, keys = _stacked_cohort(cohort, target, len(jobs), [m], {m: stacked})
                X = transforms.inputs(sub, keys, [m], cache)
                tiled = {o: np.tile(fixed[o], (len(jobs), 1)) for o in others}
                pred = np.asarray(model.predict_from_latents(X, tiled), dtype=float)
            else:
                sub, keys = _stacked_cohort(cohort, target, len(jobs), [m, *maps], {m: stacked})
                X = transforms.inputs(sub, keys, [m, *maps], cache)
                for other in modalities:
                    if other not in X:
                        X[other] = np.tile(base[other], (len(jobs), 1))
                X = {k: X[k] for k in modalities}
                pred = np.asarray(model.predict(X), dtype=float)
            pred = pred.reshape(len(jobs), n)
            block[:, lo:lo + len(jobs)] = (predicted[None, :] - pred).T
        blocks.append(block)
        tables.append(u.table)
    table = pd.concat(tables, ignore_index=True)
    table.index.name = "unit"
    values = pd.DataFrame(np.hstack(blocks), index=pd.Index(target, name="key"), columns=table.index)
    return RegionAttributions(values=values, units=table, seconds=time.perf_counter() - start)


def combine_folds(parts) -> RegionAttributions:
    """Merge the attributions of several fold models: a participant's mean over the folds that explain it.

    A control is explained by one fold model (its own value is kept); a patient by
    every fold model (the mean, with ``n_models`` counting them).
    """
    parts = [p for p in parts if p is not None]
    if not parts:
        raise ValueError("combine_folds needs at least one RegionAttributions")
    units = parts[0].units
    for p in parts[1:]:
        if not p.units.equals(units):
            raise ValueError("combine_folds: the folds' ablation units differ")
    stacked = pd.concat([p.values for p in parts])
    grouped = stacked.groupby(level=0, sort=False)
    return RegionAttributions(values=grouped.mean(), units=units,
                              n_models=grouped.size().rename("n_models"),
                              seconds=float(sum(p.seconds for p in parts)))


# --------------------------------------------------------------------------- tables
def _bootstrap_ci(absolute: np.ndarray, n_boot: int, seed: int, confidence: float):
    n = absolute.shape[0]
    if n < 2:
        nan = np.full(absolute.shape[1], np.nan)
        return nan, nan
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    means = counts @ absolute / n
    alpha = (1 - confidence) / 2
    return np.quantile(means, alpha, axis=0), np.quantile(means, 1 - alpha, axis=0)


def region_summary(attributions: RegionAttributions, participants: pd.DataFrame, *, n_boot: int = 1000,
                   seed: int = 0, confidence: float = 0.95) -> pd.DataFrame:
    """Cohort-level attribution of every unit, from the controls' out-of-fold values.

    Parameters
    ----------
    attributions : RegionAttributions
    participants : pandas.DataFrame
        ``CohortData.participants`` (its ``is_control``).
    n_boot : int
        Bootstrap resamples of the controls for the interval.
    seed : int
        Seed of the bootstrap.
    confidence : float
        Coverage of the interval.

    Returns
    -------
    pandas.DataFrame
        One row per unit: ``modality, atlas, level, region, index, hemisphere, lobe, network,
        attribution`` (mean |signed attribution| over the controls, years), ``ci_low, ci_high``
        (percentile bootstrap over controls), ``mean_signed``, ``rank`` (1 = largest
        attribution within modality and level), ``n`` (controls), ``n_features``.
    """
    values = attributions.values
    is_control = participants["is_control"].reindex(values.index).fillna(False).to_numpy(dtype=bool)
    A = values.to_numpy(dtype=float)[is_control]
    out = attributions.units.copy()
    n_features = out.pop("n_features")
    absolute = np.abs(A)
    with np.errstate(invalid="ignore"):
        out["attribution"] = absolute.mean(0) if len(A) else np.nan
        low, high = _bootstrap_ci(absolute, n_boot, seed, confidence)
        out["ci_low"], out["ci_high"] = low, high
        out["mean_signed"] = A.mean(0) if len(A) else np.nan
    out["rank"] = (out.groupby(["modality", "level"], sort=False)["attribution"]
                   .rank(ascending=False, method="min").astype("Int64"))
    out["n"] = int(is_control.sum())
    out["n_features"] = n_features
    level_order = {lv: i for i, lv in enumerate(LEVELS)}
    modality_order = {m: i for i, m in enumerate(dict.fromkeys(out["modality"]))}
    out = out.assign(_m=out["modality"].map(modality_order), _l=out["level"].map(level_order))
    out = out.sort_values(["_m", "_l", "rank"], kind="stable").drop(columns=["_m", "_l"])
    return out.reset_index(drop=True)


def participant_regions(attributions: RegionAttributions, participants: pd.DataFrame) -> pd.DataFrame:
    """Long table of every participant's signed attribution to every region (level ``region``).

    Returns
    -------
    pandas.DataFrame
        ``participant_id, session, group, modality, atlas, region, attribution`` (years),
        participants in the order of ``participants``, then units in their order.
    """
    units = attributions.units
    ids = units.index[units["level"] == "region"]
    keys = [k for k in participants.index if k in attributions.values.index]
    values = attributions.values.loc[keys, ids].to_numpy(dtype=float)
    n_units = len(ids)
    people = participants.loc[keys, ["participant_id", "session", "group"]]
    frame = people.loc[np.repeat(people.index.to_numpy(), n_units)].reset_index(drop=True)
    for col in ("modality", "atlas", "region"):
        frame[col] = np.tile(units.loc[ids, col].to_numpy(dtype=object), len(keys))
    frame["attribution"] = values.reshape(-1)
    return frame


def attribution_image(summary: pd.DataFrame, modality: str, *, column: str = "attribution"):
    """Paint the atlas label image with each region's value of ``column`` (MNI space).

    Parameters
    ----------
    summary : pandas.DataFrame
        :func:`region_summary`'s table.
    modality : str
        Whose ``region`` rows are painted (those with an atlas ``index``).
    column : str
        The value painted (default the attribution in years).

    Returns
    -------
    nibabel.Nifti1Image or None
        Float32 image on the atlas' grid (0 outside the painted regions); None when
        the modality's atlas is not a volume atlas of the registry.

    Raises
    ------
    brainage.exceptions.AtlasError
        The atlas' image cannot be read (its package is missing).
    """
    import nibabel as nib

    from ..atlases import load_atlas
    from ..exceptions import UnknownAtlasError

    rows = summary[(summary["modality"] == modality) & (summary["level"] == "region")
                   & summary["index"].notna()]
    if rows.empty:
        return None
    try:
        atlas = load_atlas(str(rows["atlas"].iloc[0]))
    except UnknownAtlasError:
        return None
    if atlas.kind != "volume":
        return None
    labels = np.asarray(atlas.image.dataobj).astype(np.int64)
    index = rows["index"].to_numpy(dtype=np.int64)
    lut = np.zeros(max(int(labels.max()), int(index.max())) + 1, dtype=np.float32)
    lut[index] = rows[column].to_numpy(dtype=np.float32)
    data = np.where(labels > 0, lut[np.clip(labels, 0, None)], 0).astype(np.float32)
    img = nib.Nifti1Image(data, atlas.image.affine)
    img.header.set_xyzt_units("mm")
    return img
