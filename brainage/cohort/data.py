"""The group level's input: participants aligned with each modality's inputs, and exclusions.

:func:`load_cohort` reads ``BIDS_DIR/participants.tsv`` and the participant
stages' derivatives and returns a :class:`CohortData`: one row per participant
(or participant × session) that can be used, each configured modality's inputs
aligned with those rows, and one exclusion row for everything left out, with
the reason. Every participant of ``participants.tsv`` ends up either in
``participants`` or in ``exclusions``; nothing is dropped silently, and one
participant's broken file never stops the cohort.

Conventions
-----------
Rows
    Keyed ``"sub-01"``, or ``"sub-01_ses-1"`` when the participant has sessions
    (``ses-*`` folders in the raw dataset or the derivatives). Ages come from
    ``participants.tsv``, or per session from ``sub-XX/sub-XX_sessions.tsv``
    when it has an ``age`` column. Structural outputs are looked up in the
    session folder, then in the participant folder (the structural stage
    writes one set per participant), so every session shares them.
Optional columns
    No ``site`` column: every participant is at ``"site-unknown"`` (a missing
    value in a ``site`` column too): a constant site, which the statistics
    report as a dropped covariate. No ``sex``: ``"n/a"``. No ``group`` column:
    everyone is ``"control"``; a participant whose ``group`` is ``n/a`` is
    excluded (a participant of unknown diagnosis is neither trained on nor
    compared). ``group.control_labels`` and ``group.groups`` match groups
    case-insensitively. Other ``participants.tsv`` columns are kept after the
    standard ones (e.g. a ``group.combat.batch`` column).
Features
    ``regional``: ``gm_ml, wm_ml, csf_ml, tiv_ml, ventricles_ml`` (with
    ``tissue: true``) then ``<atlas>_<region index>`` (GM volume in mL), the
    names :mod:`brainage.anat.features` uses. ``connectivity``:
    ``<region A>--<region B>``, the upper triangle without the diagonal of the
    Fisher-z matrix in row-major order; several resting-state runs are averaged
    edge by edge over the runs passing QC. The region set is the one most
    participants have; a participant whose table lists other regions is
    excluded for that modality. ``parcels``: ``<map>:<atlas>_<index>``, the mean
    of each map in each atlas region on the maps' grid (:mod:`.parcels`), map by
    map. ``tissue``: the tissue totals alone; ``whole_brain``: ``<map>:whole_brain``,
    each map's mean over the voxels where it has data. ``maps``: absolute paths, one
    column per map.

Examples
--------
>>> from brainage.config import load_config
>>> cohort = load_cohort("bids", "bids/derivatives/brainage",
...                      load_config("demo").group)  # doctest: +SKIP
>>> cohort.arrays()["func"].shape  # doctest: +SKIP
(38, 6328)
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..bids import TEMPLATE_SPACE, derivative_path
from ..exceptions import GroupLevelError
from . import map_features, readers
from .participants import PARTICIPANT_COLUMNS, Unit, participant_units, subfolders
from .spec import check_spec_features, check_spec_inputs, input_spec

__all__ = ["EXCLUSION_COLUMNS", "PARTICIPANT_COLUMNS", "CohortData", "ModalityInput", "load_cohort",
           "read_connectivity_input", "read_functional_maps"]

logger = logging.getLogger(__name__)

#: Columns of :attr:`CohortData.exclusions`.
EXCLUSION_COLUMNS = ("participant_id", "session", "modality", "reason")


# --------------------------------------------------------------------------- containers
@dataclass(frozen=True, eq=False)
class ModalityInput:
    """One modality's inputs, aligned with :attr:`CohortData.participants`.

    Attributes
    ----------
    name : str
        Key in ``group.inputs`` (e.g. ``"anat"``).
    kind : {"regional", "connectivity", "parcels", "tissue", "whole_brain", "maps"}
    features : pandas.DataFrame or None
        Tabular kinds: float64, index = the participants' index, one column per
        feature; a participant without this modality (``missing_modality:
        available``) has a row of NaN.
    paths : pandas.DataFrame or None
        ``maps``: one column per map of absolute path strings (None where missing).
    spec : dict
        JSON-able description: ``kind``, ``atlas`` or ``maps``, ``resolution``,
        ``space`` and, for tabular kinds, ``feature_names``.
    """

    name: str
    kind: str
    features: pd.DataFrame | None
    paths: pd.DataFrame | None
    spec: dict

    @property
    def table(self) -> pd.DataFrame:
        """``features`` or ``paths``, whichever this kind has."""
        return self.features if self.features is not None else self.paths


@dataclass(frozen=True, eq=False)
class CohortData:
    """Participants, their inputs per modality and the exclusions (see the module docstring).

    Attributes
    ----------
    participants : pandas.DataFrame
        Index ``key``; columns :data:`PARTICIPANT_COLUMNS` then any other
        ``participants.tsv`` columns. ``modalities`` is the ``+``-joined list
        of the modalities a row has (e.g. ``"anat+func"``).
    inputs : dict of str to ModalityInput
        In the order of ``group.inputs``.
    exclusions : pandas.DataFrame
        Columns :data:`EXCLUSION_COLUMNS`; ``modality`` is ``"all"`` when the
        whole participant (or session) is left out.
    control_labels : tuple of str
        The ``group.control_labels`` used for ``is_control``.
    """

    participants: pd.DataFrame
    inputs: dict[str, ModalityInput]
    exclusions: pd.DataFrame
    control_labels: tuple[str, ...] = field(default=())

    def __post_init__(self):
        index = self.participants.index
        for name, inp in self.inputs.items():
            if not inp.table.index.equals(index):
                raise ValueError(
                    f"inputs[{name!r}]: rows are not aligned with participants.index; build a "
                    "CohortData with load_cohort or subset()"
                )

    def arrays(self, modalities=None) -> dict[str, np.ndarray]:
        """Tabular features as float32 arrays, rows aligned with :attr:`participants`.

        Parameters
        ----------
        modalities : sequence of str, optional
            Which inputs; default every tabular one (``maps`` inputs are skipped).

        Returns
        -------
        dict of str to numpy.ndarray of shape (n_rows, n_features)

        Raises
        ------
        GroupLevelError
            A requested modality is unknown or of kind ``maps`` (paths, not features).
        """
        if modalities is None:
            modalities = [m for m, inp in self.inputs.items() if inp.features is not None]
        out = {}
        for name in modalities:
            if name not in self.inputs:
                raise GroupLevelError(
                    f"modality {name!r} is not an input of this cohort ({', '.join(self.inputs)})"
                )
            inp = self.inputs[name]
            if inp.features is None:
                raise GroupLevelError(
                    f"input {name!r} is of kind 'maps' (paths to MNI-space images), which has no "
                    f"feature table; read CohortData.inputs[{name!r}].paths, or use a regional/"
                    "connectivity input for tabular models"
                )
            out[name] = inp.features.to_numpy(dtype=np.float32)
        return out

    def subset(self, keys) -> CohortData:
        """Return the rows ``keys`` (in that order), with the same inputs and exclusions.

        Raises
        ------
        KeyError
            Naming keys that are not rows of this cohort.
        """
        keys = pd.Index([str(k) for k in keys], name=self.participants.index.name)
        unknown = keys.difference(self.participants.index)
        if len(unknown):
            raise KeyError(f"not rows of this cohort: {', '.join(unknown[:5])}")
        inputs = {
            name: ModalityInput(
                name=inp.name, kind=inp.kind,
                features=None if inp.features is None else inp.features.loc[keys],
                paths=None if inp.paths is None else inp.paths.loc[keys],
                spec=inp.spec,
            )
            for name, inp in self.inputs.items()
        }
        return CohortData(self.participants.loc[keys], inputs, self.exclusions,
                          self.control_labels)

    @property
    def spec(self) -> dict:
        """What a model trained on this cohort needs: ``{"inputs": {...}, "control_labels": [...]}``."""
        return {
            "inputs": {name: dict(inp.spec) for name, inp in self.inputs.items()},
            "control_labels": list(self.control_labels),
        }


# --------------------------------------------------------------------------- modalities
def _stage_problem(root: Path, label: str, stage: str, cache: dict) -> tuple[str, str]:
    """Why a participant has no derivatives of ``stage``, from its provenance record."""
    from ..provenance import read_record
    from ..stages import record_path

    if (label, stage) not in cache:
        record = read_record(record_path(root, label, stage)) or {}
        status = record.get("status")
        log = derivative_path(root, subject=label, datatype="log", desc=stage, suffix="log",
                              extension=".txt").relative_to(root)
        if status == "failed":
            error = record.get("error") or {}
            message = " ".join(str(error.get("message") or "no message recorded").split())
            found = (f"the participant stage failed ({message}); see {log.as_posix()}",
                     "participant stage failed")
        elif status == "excluded":
            reason = (record.get("summary") or {}).get("reason") or "no reason recorded"
            found = (f"excluded by the participant stage ({reason})",
                     "excluded by the participant stage")
        elif (record.get("summary") or {}).get("skipped"):
            found = (f"the participant stage was skipped ({record['summary']['skipped']})",
                     "participant stage skipped")
        else:
            found = ("no derivatives (run the participant level)", "no derivatives")
        cache[(label, stage)] = found
    return cache[(label, stage)]


def _read(root: Path, unit: Unit, spec, qc) -> readers.Read:
    if spec.kind == "regional":
        return readers.read_regional(root, unit.label, unit.session, spec.atlas, spec.tissue,
                                     spec.normalize)
    if spec.kind == "connectivity":
        return readers.read_connectivity(root, unit.label, unit.session, spec.atlas, qc)
    if spec.kind == "parcels":
        return map_features.read_parcels(root, unit.label, unit.session, spec, qc)
    if spec.kind == "tissue":
        return readers.read_tissue(root, unit.label, unit.session, spec.normalize)
    if spec.kind == "whole_brain":
        return map_features.read_whole_brain(root, unit.label, unit.session, spec, qc)
    return readers.read_maps(root, unit.label, unit.session, spec, qc)


def _reference_names(reads: dict) -> tuple[str, ...] | None:
    """Return the feature names most participants have (ties: the longest, then sorted)."""
    counts = Counter(tuple(r.names) for r in reads.values())
    if not counts:
        return None
    return min(counts, key=lambda names: (-counts[names], -len(names), names))


def _align(reads: dict, reference: tuple[str, ...], name: str) -> dict:
    """Reorder each read to ``reference``; reads with other features become problems."""
    ref_set = set(reference)
    position = {n: i for i, n in enumerate(reference)}
    n_ref = sum(1 for r in reads.values() if tuple(r.names) == reference)
    out = {}
    for key, read in reads.items():
        names = tuple(read.names)
        if names == reference:
            out[key] = read
            continue
        if set(names) == ref_set and len(names) == len(reference):
            order = np.array([position[n] for n in names])
            values = np.empty(len(reference))
            values[order] = read.values
            out[key] = readers.Read(values=values, names=reference)
            continue
        missing = [n for n in reference if n not in set(names)]
        extra = [n for n in names if n not in ref_set]
        out[key] = readers.Read(
            problem=f"its features differ from the cohort's ({len(missing)} missing: "
            f"{', '.join(missing[:3]) or '-'}; {len(extra)} extra: {', '.join(extra[:3]) or '-'}; "
            f"the cohort's are those of {n_ref} participant row(s)); rerun the participant level "
            f"for this participant with the same {name} configuration as the others",
            category="features differ from the cohort's",
        )
    return out


def _features(reads, index, names) -> pd.DataFrame:
    """One row per read (its values, or NaN where it has a problem), columns ``names``."""
    matrix = np.full((len(reads), len(names)), np.nan)
    for i, read in enumerate(reads):
        if read.problem is None:
            matrix[i] = read.values
    return pd.DataFrame(matrix, index=index, columns=list(names), copy=False)


# --------------------------------------------------------------------------- loading
def _summary(rows: list) -> str:
    counts = Counter(c for row in rows for c in row[4])
    return "; ".join(f"{c}: {n}" for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def load_cohort(bids_dir, derivatives_dir, group_config, *, spec: dict | None = None) -> CohortData:
    """Read participants.tsv and the participant stages' derivatives into a :class:`CohortData`.

    Parameters
    ----------
    bids_dir : path-like
        The raw BIDS dataset (its ``participants.tsv``, ``sub-*/ses-*`` folders
        and ``sub-*/sub-*_sessions.tsv``).
    derivatives_dir : path-like
        ``OUTPUT_DIR`` of the participant level.
    group_config : brainage.config.GroupConfig
        ``config.group``: inputs, QC thresholds, control labels, groups,
        ``missing_modality``.
    spec : dict, optional
        A trained model bundle's :attr:`CohortData.spec`: the cohort must then
        provide exactly those inputs, and tabular features come in the bundle's
        order.

    Returns
    -------
    CohortData

    Raises
    ------
    ParticipantsTableError
        ``participants.tsv`` is missing or malformed.
    GroupLevelError
        No participant is left (the message counts the exclusions per reason), a
        modality has no usable participant at all, the ComBat batch column is
        missing, or the inputs differ from ``spec``'s.
    """
    bids_dir = Path(bids_dir)
    root = Path(derivatives_dir)
    cfg = group_config
    if not root.is_dir():
        raise GroupLevelError(
            f"derivatives folder {root} does not exist; run `brainage {bids_dir} {root} "
            "participant` first"
        )
    wanted = check_spec_inputs(spec, cfg.inputs) if spec is not None else None
    units, listed, extra = participant_units(bids_dir, root, cfg)
    rows = []  # (participant_id, session, modality, reason, categories)
    for name in sorted(set(subfolders(root, "sub-")) - {f"sub-{x}" for x in listed}):
        rows.append((name, None, "all", "in the derivatives but not in participants.tsv; add a "
                     "row with its age (and group) to participants.tsv", ("not in participants.tsv",)))
    if cfg.qc.min_registration_similarity is not None:
        threshold = cfg.qc.min_registration_similarity
        for unit in units:
            value, _ = readers.registration_similarity(root, unit.label, unit.session)
            if value is not None and value < threshold:
                unit.reasons.append((f"anat: registration similarity {value:.3f} < {threshold:g} "
                                     "(group.qc.min_registration_similarity)",
                                     "QC: registration similarity"))
    # read every modality of every row that is not excluded already
    candidates = [u for u in units if not u.reasons]
    reads: dict[str, dict[str, readers.Read]] = {m: {} for m in cfg.inputs}
    stage_cache: dict = {}
    for unit in candidates:
        for name, inp in cfg.inputs.items():
            read = _read(root, unit, inp, cfg.qc)
            if not read.found:
                text, category = _stage_problem(root, unit.label, inp.stage, stage_cache)
                read = readers.Read(problem=text, category=category, found=False)
            reads[name][unit.key] = read
    # one feature set per tabular modality; the bundle's order when a spec is given
    feature_names = {}
    for name, inp in cfg.inputs.items():
        if inp.kind == "maps":
            continue
        good = {k: r for k, r in reads[name].items() if r.problem is None}
        reference = _reference_names(good)
        if wanted is not None and reference is not None:
            reference = check_spec_features(name, reference, wanted[name])
        if reference is not None:
            reads[name].update(_align(good, reference, name))
        feature_names[name] = reference
    # keep or exclude each row
    kept = []
    for unit in units:
        if unit.reasons:
            rows.append((unit.participant_id, unit.session_id, "all",
                         "; ".join(t for t, _ in unit.reasons), tuple(c for _, c in unit.reasons)))
            continue
        problems = [(m, r) for m, r in ((m, reads[m][unit.key]) for m in cfg.inputs)
                    if r.problem is not None]
        have = [m for m in cfg.inputs if reads[m][unit.key].problem is None]
        texts = [f"{m}: {r.problem}" for m, r in problems]
        categories = tuple(f"{m}: {r.category}" for m, r in problems)
        if not have or (problems and cfg.missing_modality == "exclude"):
            reason = "; ".join(texts)
            if have:
                reason += (f" (missing {', '.join(m for m, _ in problems)}; "
                           "group.missing_modality 'exclude' needs every modality, 'available' "
                           "keeps the ones a participant has)")
            rows.append((unit.participant_id, unit.session_id, "all", reason, categories))
            continue
        for (m, _), text, category in zip(problems, texts, categories):
            rows.append((unit.participant_id, unit.session_id, m, text, (category,)))
        kept.append((unit, have))
    n_listed = len(units)
    if not kept:
        raise GroupLevelError(
            f"no participant is left for the group level: all {n_listed} participant row(s) of "
            f"participants.tsv are excluded ({_summary(rows) or 'no participants'})"
            + (f"; e.g. {rows[0][0]}: {rows[0][3]}" if rows else "")
            + ". Run the participant level for them, fix what the reasons name, or relax group.qc"
        )
    kept.sort(key=lambda item: item[0].key)
    keys = pd.Index([u.key for u, _ in kept], name="key", dtype=object)
    if cfg.combat.enabled and cfg.combat.batch not in {"site", *extra}:
        raise GroupLevelError(
            f"group.combat.batch: participants.tsv has no column {cfg.combat.batch!r} "
            f"(columns: site, {', '.join(extra) or 'no others'}); set batch to one of them"
        )
    inputs = {}
    for name, inp in cfg.inputs.items():
        rows_of = [reads[name][u.key] for u, _ in kept]
        if all(r.problem is not None for r in rows_of):
            raise GroupLevelError(
                f"{name}: no kept participant has a usable {name} input "
                f"({_summary([r_ for r_ in rows if r_[2] in (name, 'all')]) or 'see the exclusions'}); "
                f"remove {name} from group.inputs (and the models using it), or run the "
                "participant level"
            )
        ispec = input_spec(inp)
        if inp.kind == "maps":
            paths = pd.DataFrame(
                [[(r.paths or {}).get(m) for m in inp.maps] for r in rows_of],
                index=keys, columns=list(inp.maps), dtype=object,
            )
            inputs[name] = ModalityInput(name, inp.kind, None, paths, ispec)
            continue
        names = feature_names[name]
        ispec["feature_names"] = list(names)
        inputs[name] = ModalityInput(name, inp.kind, _features(rows_of, keys, names), None, ispec)
    participants = pd.DataFrame(
        {
            "participant_id": [u.participant_id for u, _ in kept],
            "session": pd.Series([u.session_id for u, _ in kept], dtype=object),
            "age": np.array([u.age for u, _ in kept], dtype=np.float64),
            "sex": [u.columns["sex"] for u, _ in kept],
            "site": [u.columns["site"] for u, _ in kept],
            "group": [u.columns["group"] for u, _ in kept],
            "is_control": np.array([u.columns["is_control"] for u, _ in kept], dtype=bool),
            "modalities": ["+".join(have) for _, have in kept],
            **{c: pd.Series([u.columns[c] for u, _ in kept], dtype=object) for c in extra},
        }
    )
    participants.index = keys
    rows.sort(key=lambda r: (r[0], r[1] or "", r[2]))
    exclusions = pd.DataFrame([r[:4] for r in rows], columns=list(EXCLUSION_COLUMNS), dtype=object)
    logger.info("cohort: %d participant row(s) kept, %d exclusion(s)%s", len(kept), len(rows),
                f" ({_summary(rows)})" if rows else "")
    return CohortData(participants, inputs, exclusions, tuple(cfg.control_labels))


def _labels(parts: pd.DataFrame):
    """Yield ``(key, participant label, session label or None)`` of each participants row."""
    for key, pid, session in zip(parts.index, parts["participant_id"], parts["session"]):
        ses = str(session).removeprefix("ses-") if isinstance(session, str) and session else None
        yield key, str(pid).removeprefix("sub-"), ses


def read_connectivity_input(derivatives_dir, cohort: CohortData, atlas: str, qc,
                            name: str = "func_connectivity") -> ModalityInput | None:
    """Read the connectivity edges on ``atlas`` of a cohort's participants, beside its inputs.

    For analyses that need connectivity when the models read other functional
    inputs (the atlas PID when ``func`` is ``kind: maps``). Rows without a usable
    matrix, or with other edges than most, are NaN; none of it enters the
    cohort's models or its bundle spec.

    Parameters
    ----------
    derivatives_dir : path-like
        ``OUTPUT_DIR`` of the participant level.
    cohort : CohortData
    atlas : str
        Atlas id of the ``meas-FisherZ_relmat`` files.
    qc : brainage.config.GroupQCConfig
        Run exclusions, as for a model input.
    name : str
        Modality name of the returned input.

    Returns
    -------
    ModalityInput or None
        None when no participant has a usable matrix on ``atlas``.
    """
    root = Path(derivatives_dir)
    parts = cohort.participants
    reads = {key: readers.read_connectivity(root, label, ses, atlas, qc)
             for key, label, ses in _labels(parts)}
    good = {k: r for k, r in reads.items() if r.problem is None and r.found}
    reference = _reference_names(good)
    if reference is None:
        return None
    aligned = _align(good, reference, name)
    rows = [aligned.get(key, readers.Read(problem="unusable")) for key in parts.index]
    spec = {"kind": "connectivity", "space": TEMPLATE_SPACE, "atlas": atlas, "resolution": None,
            "feature_names": list(reference)}
    return ModalityInput(name, "connectivity", _features(rows, parts.index, reference), None, spec)


def read_functional_maps(derivatives_dir, cohort: CohortData, qc, maps=("falff", "reho"),
                         name: str = "func_maps") -> ModalityInput | None:
    """Paths of a cohort's functional MNI maps, beside its inputs.

    For analyses that need the parcels' fALFF or ReHo when the models read connectivity
    (the atlas PID of a ``kind: connectivity`` cohort). The grid is the ``res-`` at which
    most of the cohort's participants have one of ``maps``; of ``maps``, those written at
    that grid for at least one participant are read. A participant without them, or
    whose runs fail ``qc``, has None; none of it enters the cohort's models or its
    bundle spec.

    Parameters
    ----------
    derivatives_dir : path-like
        ``OUTPUT_DIR`` of the participant level.
    cohort : CohortData
    qc : brainage.config.GroupQCConfig
        Run exclusions, as for a model input.
    maps : sequence of str
        Functional map names (``desc-<name>_boldmap``), in the order of the columns.
    name : str
        Modality name of the returned input.

    Returns
    -------
    ModalityInput or None
        ``kind: maps``; None when no participant has any of ``maps``.
    """
    from ..config.group import GroupInputConfig

    root = Path(derivatives_dir)
    parts = cohort.participants
    units = list(_labels(parts))
    grids = {key: readers.functional_map_grids(root, label, ses) for key, label, ses in units}
    per_res = Counter(res for found in grids.values() for res in {r for m, r in found if m in maps})
    if not per_res:
        return None
    mm = {r: float(r.replace("p", ".")) for r in per_res}  # res label -> mm ("1p5" -> 1.5)
    res = max(per_res, key=lambda r: (per_res[r], -mm[r]))  # ties: the finer grid
    present = [m for m in maps if any((m, res) in found for found in grids.values())]
    spec = GroupInputConfig(kind="maps", maps=present, resolution=mm[res])
    rows = []
    for key, label, ses in units:
        read = readers.read_maps(root, label, ses, spec, qc) if grids[key] else readers.Read(found=False)
        rows.append([(read.paths or {}).get(m) if read.problem is None else None for m in present])
    paths = pd.DataFrame(rows, index=parts.index, columns=present, dtype=object)
    return ModalityInput(name, "maps", None, paths, input_spec(spec))
