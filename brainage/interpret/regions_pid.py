"""PID atoms on the atlas: how each region's structure and function share information about age.

For every region of an atlas that both a ``regional`` input (GM volumes,
``<atlas>_<index>``) and a ``connectivity`` input (Fisher-z edges ``A--B``)
describe, :func:`regions_pid` computes the bias-corrected Gaussian PID
(:func:`brainage.pid.gaussian_pid`) of the controls' Gaussianized age ``g``
with respect to

* **structure** ``Z_struct``: the region's GM volume, as the regional input gives
  it (TIV fractions when the input has ``normalize: tiv``), one dimension;
* **function** ``Z_func``: the region's connectivity profile (its row of the
  Fisher-z matrix: every edge touching it), reduced to ``n_components``
  principal components fitted on the same controls (centred, not scaled: every
  edge is in Fisher-z units).

The atoms are ``U_struct`` (age information in the GM volume only), ``U_func``
(in the connectivity profile only), ``R`` (in either alone) and ``S`` (only in
both together), in bits, with percentile bootstrap intervals over the controls;
``I_struct = U_struct + R``, ``I_func = U_func + R``, ``I_joint = U_struct +
U_func + R + S``. Regions are matched through the atlas region table
(:func:`brainage.atlases.region_table`): the regional feature ``<atlas>_<index>``
and the connectivity parcel named like the table's ``name``.

What the numbers are: an **in-sample, descriptive** decomposition of the
linear-Gaussian association between age and two small sets of measurements in
**this cohort's controls**. What they are not:

* not a model's use of the region (see :mod:`brainage.interpret.regions` for
  that) and not causal or biological interaction: ``S > 0`` says the two sets
  predict age better together under a linear-Gaussian model, nothing more;
* not precise with few controls: with 30 controls one region's ``I`` has a
  standard error of the order of 0.1–0.2 bits, so intervals are wide and
  rankings of regions with overlapping intervals mean nothing; the
  intervals resample controls with the principal axes held fixed, and
  bootstrap duplicates inflate log-det estimates a little (``docs/pid.md``);
* dependent on choices: the number of principal components (more dimensions
  give ``Z_func`` more chances and a larger bias correction; 3 is a compromise
  for ~30 controls), the GM normalisation of the input, and the Gaussianization
  of age (rank-based inverse normal over the controls used:
  :func:`brainage.pid.inverse_normal_transform`; the features are not
  transformed, so outliers weigh as in a correlation);
* one unique atom is always exactly zero (scalar target: ``R = min(I_struct,
  I_func)``); ``U_func = 0`` means what connectivity knows about age, the GM
  volume knows too, not that connectivity knows nothing.

The parcels' fALFF or ReHo are not part of ``Z_func``: no tabular input of the
group level provides them (the functional stage writes them as MNI maps only,
``kind: maps``), so the functional side is the connectivity profile alone.

Cost: one PCA and ``1 + n_boot`` closed-form PIDs of a ``(1 + 1 + k)``-dimensional
covariance per region; see ``docs/interpret.md`` for the measured time on the
demo cohort.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["ATOM_COLUMNS", "PID_COLUMNS", "RegionPIDInputs", "atom_image", "paired_inputs",
           "regions_pid"]

logger = logging.getLogger(__name__)

#: The four atoms as columns of :func:`regions_pid` (``brainage.pid.ATOMS`` order: U1, U2, R, S).
ATOM_COLUMNS = ("U_struct", "U_func", "R", "S")
_ATOM_OF = dict(zip(ATOM_COLUMNS, ("U1", "U2", "R", "S")))
_MI_OF = {"I_struct": "I1", "I_func": "I2", "I_joint": "I12"}
#: Columns of :func:`regions_pid`, in order.
PID_COLUMNS = (
    "atlas", "region", "index", "hemisphere", "lobe", "network", "n", "n_struct_features",
    "n_func_features", "n_edges", "func_variance_explained", "func_maps",
    *(f"{a}{s}" for a in ATOM_COLUMNS for s in ("", "_ci_low", "_ci_high")),
    *_MI_OF, "note",
)
_EDGE_SEPARATOR = "--"
_NA = "n/a"


@dataclass(frozen=True)
class RegionPIDInputs:
    """The two inputs whose regions :func:`regions_pid` decomposes.

    Attributes
    ----------
    regional : str
        Key of the ``kind: regional`` input (GM volumes ``<atlas>_<index>``).
    connectivity : str
        Key of the ``kind: connectivity`` input (edges ``A--B``).
    atlas : str
        Their common atlas (a registry id).
    """

    regional: str
    connectivity: str
    atlas: str


def paired_inputs(cohort) -> tuple[RegionPIDInputs | None, str]:
    """Find a regional and a connectivity input on the same registry atlas.

    Parameters
    ----------
    cohort : brainage.cohort.data.CohortData

    Returns
    -------
    (RegionPIDInputs or None, str)
        The first regional input (in ``group.inputs`` order) with a connectivity input on
        its atlas, and an empty string; or None and the reason there is none.

    Examples
    --------
    >>> import pandas as pd
    >>> from brainage.cohort.data import CohortData, ModalityInput
    >>> idx = pd.Index(["sub-01"], name="key")
    >>> parts = pd.DataFrame({"age": [30.0], "is_control": [True]}, index=idx)
    >>> anat = ModalityInput("anat", "regional", pd.DataFrame({"AAL_1": [1.0]}, index=idx), None,
    ...                      {"kind": "regional", "atlas": "AAL"})
    >>> func = ModalityInput("func", "connectivity", pd.DataFrame({"A--B": [0.1]}, index=idx),
    ...                      None, {"kind": "connectivity", "atlas": "HarvardOxford"})
    >>> pair, why = paired_inputs(CohortData(parts, {"anat": anat, "func": func}, pd.DataFrame()))
    >>> pair is None, why.split(";")[0]
    (True, "no connectivity input shares an atlas with a regional input (regional 'anat' on AAL")
    """
    from ..atlases import region_table
    from ..exceptions import AtlasError, UnknownAtlasError

    regional = {m: inp.spec.get("atlas") for m, inp in cohort.inputs.items() if inp.kind == "regional"}
    connect = {m: inp.spec.get("atlas") for m, inp in cohort.inputs.items() if inp.kind == "connectivity"}
    kinds = ", ".join(f"{m}: {inp.kind}" for m, inp in cohort.inputs.items())
    if not regional or not connect:
        missing = "regional (GM volumes)" if not regional else "connectivity"
        return None, (f"the cohort has no {missing} input (inputs: {kinds}); the atlas PID needs a "
                      "regional and a connectivity input on the same atlas in group.inputs")
    problems = []
    for r_name, atlas in regional.items():
        for c_name, c_atlas in connect.items():
            if not atlas or atlas != c_atlas:
                continue
            try:
                region_table(str(atlas))
            except (AtlasError, UnknownAtlasError) as exc:
                problems.append(f"atlas {atlas} has no region table to match regions ({exc})")
                continue
            return RegionPIDInputs(r_name, c_name, str(atlas)), ""
    on = "; ".join([*(f"regional {m!r} on {a}" for m, a in regional.items()),
                    *(f"connectivity {m!r} on {a}" for m, a in connect.items())])
    why = "; ".join(problems) if problems else (
        f"no connectivity input shares an atlas with a regional input ({on}); set the same "
        "atlas in both group.inputs entries to relate structure and function region by region")
    return None, why


def _controls(cohort, pair: RegionPIDInputs) -> pd.Index:
    parts = cohort.participants
    keep = parts["is_control"].to_numpy(dtype=bool).copy()
    for name in (pair.regional, pair.connectivity):
        keep &= np.isfinite(cohort.inputs[name].features.to_numpy(dtype=float)).all(axis=1)
    return parts.index[keep]


def _connectivity_cube(features: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Parcel names and the ``(n, k, k)`` Fisher-z matrices (NaN where an edge is absent)."""
    names: dict[str, int] = {}
    pairs = []
    for col in features.columns:
        ends = str(col).split(_EDGE_SEPARATOR)
        if len(ends) != 2:
            pairs.append(None)
            continue
        for end in ends:
            names.setdefault(end, len(names))
        pairs.append((names[ends[0]], names[ends[1]]))
    values = features.to_numpy(dtype=float)
    cube = np.full((values.shape[0], len(names), len(names)), np.nan)
    for j, pair in enumerate(pairs):
        if pair is not None:
            a, b = pair
            cube[:, a, b] = cube[:, b, a] = values[:, j]
    return list(names), cube


def _empty_row() -> dict:
    row = {f"{a}{s}": np.nan for a in ATOM_COLUMNS for s in ("", "_ci_low", "_ci_high")}
    row.update({k: np.nan for k in _MI_OF})
    return row


def _local_features(local, column: str, keys) -> tuple[np.ndarray | None, list[str]]:
    """Return the region's local map features of the controls ``keys`` (standardised) and names."""
    if local is None:
        return None, []
    cols = [c for c in local.columns if c.endswith(f":{column}")]
    if not cols:
        return None, []
    block = local.loc[keys, cols].to_numpy(dtype=float)
    if not np.isfinite(block).all():
        return None, []
    sd = block.std(axis=0)
    keep = sd > 1e-12
    if not keep.any():
        return None, []
    block = (block[:, keep] - block[:, keep].mean(axis=0)) / sd[keep]
    return block, [c.split(":", 1)[0] for c, k in zip(cols, keep) if k]


def regions_pid(cohort, *, n_components: int = 3, n_boot: int = 500, seed: int = 0,
                confidence: float = 0.95, inputs: RegionPIDInputs | None = None,
                local: pd.DataFrame | None = None) -> pd.DataFrame:
    """Gaussian PID of the controls' age from each region's GM volume and connectivity profile.

    See the module docstring for the method and for what the atoms mean and do not mean.

    Parameters
    ----------
    cohort : brainage.cohort.data.CohortData
        Controls (``participants["is_control"]``) with both inputs are used; patients never.
    n_components : int
        Principal components of each region's connectivity profile (fewer when the profile
        has fewer edges or the cohort fewer controls).
    n_boot : int
        Bootstrap resamples of the controls per region for the intervals (0: no intervals).
    seed : int
        Seed of the bootstrap; region ``index`` draws from ``default_rng([seed, index])``, so a
        region's interval does not depend on which other regions are present.
    confidence : float
        Coverage of the percentile intervals.
    inputs : RegionPIDInputs, optional
        Which inputs to pair; default :func:`paired_inputs`.
    local : pandas.DataFrame, optional
        Per participant, the region means of functional maps
        (:func:`brainage.cohort.parcels.parcel_means`, columns ``<map>:<atlas>_<index>``): each
        region's means join its connectivity components on the functional side (standardised;
        left out of a region where a control lacks them or where they would leave fewer than
        4 controls per dimension).

    Returns
    -------
    pandas.DataFrame
        One row per region of the atlas table present in both inputs, in table order, with
        columns :data:`PID_COLUMNS`: the region's ``atlas, region, index, hemisphere, lobe,
        network``; ``n`` (controls used); ``n_struct_features`` (1), ``n_func_features``
        (principal components), ``n_edges`` (edges in the profile),
        ``func_variance_explained`` (their share of the profile's variance); the atoms
        ``U_struct, U_func, R, S`` with ``_ci_low``/``_ci_high``; ``I_struct, I_func,
        I_joint`` (bits, bias-corrected); ``note`` (why a row has no estimate, else ``n/a``).

    Raises
    ------
    GroupLevelError
        No regional and connectivity input share a registry atlas, no region is in both,
        or there are too few controls for ``n_components``.

    Examples
    --------
    >>> from brainage.config import load_config
    >>> from brainage.cohort.data import load_cohort
    >>> cohort = load_cohort("bids", "bids/derivatives/brainage",
    ...                      load_config("demo").group)  # doctest: +SKIP
    >>> regions_pid(cohort, n_boot=200)[["region", "U_struct", "U_func", "R", "S"]]  # doctest: +SKIP
    """
    from sklearn.decomposition import PCA

    from ..atlases import region_table
    from ..exceptions import GroupLevelError
    from ..pid import gaussian_pid, inverse_normal_transform

    start = time.perf_counter()
    if int(n_components) < 1:
        raise GroupLevelError(f"regions_pid: n_components must be >= 1, got {n_components}")
    if inputs is None:
        inputs, why = paired_inputs(cohort)
        if inputs is None:
            raise GroupLevelError(f"regions_pid: {why}")
    table = region_table(inputs.atlas)
    keys = _controls(cohort, inputs)
    n = len(keys)
    need = int(n_components) + 4
    if n < need:
        raise GroupLevelError(
            f"regions_pid: {n} control(s) have both {inputs.regional} and {inputs.connectivity}; "
            f"the PID of age, 1 GM volume and {n_components} connectivity component(s) needs at "
            f"least {need}; add controls or lower n_components")
    g = inverse_normal_transform(cohort.participants.loc[keys, "age"].to_numpy(dtype=float))
    gm = cohort.inputs[inputs.regional].features.loc[keys]
    parcels, cube = _connectivity_cube(cohort.inputs[inputs.connectivity].features.loc[keys])
    position = {name: i for i, name in enumerate(parcels)}
    rows = []
    skipped = 0
    for rec in table.to_dict("records"):
        column, name = f"{inputs.atlas}_{int(rec['index'])}", str(rec["name"])
        if column not in gm.columns or name not in position:
            skipped += 1
            continue
        row = {"atlas": inputs.atlas, "region": name, "index": int(rec["index"]),
               "hemisphere": rec["hemisphere"], "lobe": rec["lobe"], "network": rec["network"],
               "n": n, "n_struct_features": 1, **_empty_row(), "func_maps": _NA, "note": _NA}
        profile = cube[:, position[name], :]
        profile = profile[:, np.isfinite(profile).all(axis=0)]
        row["n_edges"] = profile.shape[1]
        k = min(int(n_components), profile.shape[1], n - 1)
        struct = gm[column].to_numpy(dtype=float)
        if k < 1 or not np.ptp(profile, axis=0).max(initial=0) > 0:
            row.update(n_func_features=0, func_variance_explained=np.nan,
                       note="no varying connectivity edge in the region's profile")
            rows.append(row)
            continue
        pca = PCA(n_components=k, svd_solver="full").fit(profile)
        func = pca.transform(profile)
        extra, names = _local_features(local, column, keys)
        if extra is not None and n >= 1 + k + extra.shape[1] + 4:
            func = np.column_stack([func, extra])
            row["func_maps"] = "+".join(names)
        row.update(n_func_features=func.shape[1],
                   func_variance_explained=float(pca.explained_variance_ratio_.sum()))
        try:
            res = gaussian_pid(g, struct, func, n_boot=int(n_boot), ci=confidence,
                               random_state=np.random.default_rng([int(seed), int(rec["index"])]))
        except ValueError as exc:
            row["note"] = f"no estimate: {exc}"
            logger.info("regions_pid: %s: %s", name, exc)
            rows.append(row)
            continue
        for col, atom in _ATOM_OF.items():
            row[col] = getattr(res, atom)
            if res.ci is not None:
                row[f"{col}_ci_low"], row[f"{col}_ci_high"] = res.ci[atom]
        for col, mi in _MI_OF.items():
            row[col] = getattr(res, mi)
        rows.append(row)
    if not rows:
        raise GroupLevelError(
            f"regions_pid: no region of {inputs.atlas} is in both {inputs.regional} (features "
            f"{inputs.atlas}_<index>) and {inputs.connectivity} (parcels named as in the atlas "
            "region table); check that both inputs come from the same atlas version")
    frame = pd.DataFrame(rows, columns=list(PID_COLUMNS))
    frame["index"] = frame["index"].astype("Int64")
    logger.info("regions_pid: %d region(s) of %s from %d control(s), %d component(s), %d bootstrap "
                "resample(s) in %.1f s%s", len(frame), inputs.atlas, n, n_components, n_boot,
                time.perf_counter() - start,
                f" ({skipped} table region(s) not in both inputs)" if skipped else "")
    return frame


def atom_image(table: pd.DataFrame, atom: str):
    """Paint the atlas label image with each region's value of one atom (MNI space).

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`regions_pid`'s table.
    atom : str
        A column of ``table``: one of :data:`ATOM_COLUMNS`, or ``I_struct``, ``I_func``,
        ``I_joint``, or an interval bound.

    Returns
    -------
    nibabel.Nifti1Image or None
        Float32 image on the atlas' grid in bits: 0 outside the table's regions, NaN in a
        region without an estimate (``note``); None when the atlas is not a volume atlas of
        the registry or the table is empty.

    Raises
    ------
    KeyError
        ``atom`` is not a column of ``table``.
    brainage.exceptions.AtlasError
        The atlas' image cannot be read (its package is missing).
    """
    from .regions import attribution_image

    if atom not in table.columns:
        raise KeyError(f"atom_image: {atom!r} is not a column of the table; use one of "
                       f"{', '.join(ATOM_COLUMNS)}, I_struct, I_func, I_joint")
    # attribution_image paints the 'region' rows of one modality: present the table as one
    painted = table.assign(modality="regions_pid", level="region")
    return attribution_image(painted, "regions_pid", column=atom)
