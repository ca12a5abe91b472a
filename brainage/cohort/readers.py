"""Reading one participant's group-level inputs from the participant stages' derivatives.

Each reader takes the derivatives root, a participant label, a session (or
None) and one ``group.inputs`` entry, and returns a :class:`Read`: the values
and their names (tabular kinds), the map paths (``maps``), or a problem (why
this participant's modality cannot be used: missing derivatives, a failed QC
threshold, a corrupt file). A reader never raises for a participant's files:
one broken participant never stops the cohort.

Paths are built from BIDS entities with :func:`brainage.bids.derivative_path`
and the stages' entity tables (:func:`brainage.outputs.output_entities`,
:func:`brainage.outputs.atlas_entities`). Structural outputs are looked up
in the session folder first, then in the participant folder (the structural
stage processes one T1w per participant and writes no ``ses-`` entity).
"""

from __future__ import annotations

import csv
import functools
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bids import TEMPLATE_SPACE, derivative_path
from ..outputs import atlas_entities, output_entities, res_label

__all__ = [
    "ANAT_MAP_FIELDS",
    "REST_TASK",
    "TISSUE_COLUMNS",
    "Read",
    "functional_map_grids",
    "read_connectivity",
    "read_maps",
    "read_regional",
    "read_tissue",
    "registration_similarity",
]

#: Tissue totals of ``desc-tissue_morph.tsv`` used as features (``tissue: true``), in order.
TISSUE_COLUMNS = ("gm_ml", "wm_ml", "csf_ml", "tiv_ml", "ventricles_ml")
#: ``group.inputs.*.maps`` names of structural maps -> field of ``output_entities``.
ANAT_MAP_FIELDS = {
    "GM_modulated": "gm_modulated_mni",
    "GM": "gm_mni",
    "WM": "wm_mni",
    "CSF": "csf_mni",
    "T1w": "t1w_mni",
}
#: The BIDS task whose runs give the functional inputs.
REST_TASK = "rest"
_RUN_KEYS = {"ses": "session", "task": "task", "acq": "acquisition", "run": "run"}


@dataclass(frozen=True)
class Read:
    """What a reader found for one participant × session × modality.

    Attributes
    ----------
    values : numpy.ndarray or None
        Float64 feature vector (tabular kinds), in the order of ``names``.
    names : tuple of str or None
        Feature names (tabular kinds).
    paths : dict or None
        Map name -> absolute path string (``maps``).
    problem : str or None
        Why the modality cannot be used (without the modality prefix); None if usable.
    category : str or None
        Short reason class used to count exclusions (``"no derivatives"``, ``"corrupt
        file"``, ``"QC: mean FD"``, …).
    found : bool
        Whether any derivative of the stage exists for this participant (False: the
        caller words the problem from the stage's provenance record).
    """

    values: np.ndarray | None = None
    names: tuple[str, ...] | None = None
    paths: dict | None = None
    problem: str | None = None
    category: str | None = None
    found: bool = True


def _missing() -> Read:
    return Read(problem="no derivatives", category="no derivatives", found=False)


def _bad(path, problem: str, fix: str = "rerun the participant level for this participant") -> Read:
    return Read(problem=f"{path}: {problem}; {fix}", category="corrupt file")


# --------------------------------------------------------------------------- helpers
def _anat_path(root, label: str, session: str | None, entities: dict) -> Path:
    """Return the session's structural output if it exists, else the participant's."""
    if session is not None:
        path = derivative_path(root, subject=label, session=session, **entities)
        if path.is_file():
            return path
    return derivative_path(root, subject=label, **entities)


def _read_tsv(path: Path):
    """Header and rows of a TSV file (strings), or an error text.

    The csv module rather than pandas: a cohort reads thousands of small
    tables, and pandas' per-call overhead would dominate.
    """
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            rows = [row for row in csv.reader(handle, delimiter="\t") if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return f"not a readable TSV file ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    if not rows:
        return "empty file (no header)"
    header, body = rows[0], rows[1:]
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            return f"line {number} has {len(row)} fields, the header {len(header)}"
    return header, body


def _floats(cells) -> np.ndarray:
    """Parse TSV cells as float64 (``n/a`` -> NaN); ValueError on anything else."""
    return np.array([np.nan if c == "n/a" else c for c in cells], dtype=np.float64)


def _read_json(path: Path):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"not a readable JSON file ({type(exc).__name__}: {exc})"
    if not isinstance(data, dict):
        return f"expected a JSON object, found {type(data).__name__}"
    return data


def _fmt(value: float, threshold: float) -> str:
    """``value`` with 2 decimals, or more when 2 would not show that it exceeds ``threshold``."""
    text = f"{value:.2f}"
    return text if float(text) > threshold else f"{value:.6g}"


# --------------------------------------------------------------------------- anat
def registration_similarity(root, label: str, session: str | None = None):
    """Return the structural stage's T1w-to-MNI similarity and the QC file it came from.

    Returns
    -------
    (float or None, Path or None)
        None when no QC record exists or it has no ``registration_similarity``.
    """
    ents = output_entities()["qc"]
    path = _anat_path(root, label, session, ents)
    if not path.is_file():  # a failed registration leaves its record in log/
        path = derivative_path(root, subject=label, **{**ents, "datatype": "log"})
        if not path.is_file():
            return None, None
    data = _read_json(path)
    if isinstance(data, str):
        return None, path
    value = data.get("registration_similarity")
    try:
        return (float(value) if value is not None else None), path
    except (TypeError, ValueError):
        return None, path


def read_regional(root, label: str, session: str | None, atlas: str, tissue: bool,
                  normalize: str = "none") -> Read:
    """Regional GM volumes of ``atlas`` (and tissue totals) of one participant.

    Features are named ``<atlas>_<region index>`` (the atlas' integer label,
    stable when region names are edited) after, with ``tissue``, the
    :data:`TISSUE_COLUMNS`. With ``normalize="tiv"`` every volume except
    ``tiv_ml`` itself is divided by the participant's total intracranial volume
    (the proportional head-size correction), so the features are fractions of TIV.
    """
    table_path = _anat_path(root, label, session, atlas_entities(atlas))
    tissue_path = _anat_path(root, label, session, output_entities()["tissue_morph"])
    if not table_path.is_file():
        if tissue_path.is_file():
            return Read(
                problem=f"no atlas-{atlas} regional GM table ({table_path}); add {atlas} to "
                "anat.atlases and rerun the participant level",
                category=f"no atlas-{atlas} table",
            )
        return _missing()
    table = _read_tsv(table_path)
    if isinstance(table, str):
        return _bad(table_path, table)
    header, body = table
    needed = [c for c in ("index", "gm_volume_ml") if c not in header]
    if needed:
        return _bad(table_path, f"no column(s) {', '.join(needed)} "
                    f"(found: {', '.join(header) or 'none'})")
    if not body:
        return _bad(table_path, "no region rows")
    try:
        index = _floats(row[header.index("index")] for row in body)
        volumes = _floats(row[header.index("gm_volume_ml")] for row in body)
    except ValueError:
        return _bad(table_path, "non-numeric index or gm_volume_ml values")
    if not np.all(np.isfinite(index)) or not np.all(index == np.round(index)):
        return _bad(table_path, "region indices must be integers")
    if len(set(index.tolist())) != len(index):
        return _bad(table_path, "duplicate region indices")
    if not np.all(np.isfinite(volumes)):
        n = int((~np.isfinite(volumes)).sum())
        return _bad(table_path, f"{n} region volume(s) are n/a")
    names = [f"{atlas}_{int(i)}" for i in index]
    if not tissue and normalize == "none":
        return Read(values=volumes, names=tuple(names))
    got = _tissue_totals(tissue_path, normalize, why="set tissue: false for this input" if
                         normalize == "none" else "set normalize: none and tissue: false for this input")
    if isinstance(got, Read):
        return got
    totals, tiv = got
    if tiv is not None:
        volumes = volumes / tiv
    if not tissue:
        return Read(values=volumes, names=tuple(names))
    return Read(values=np.concatenate([totals, volumes]), names=(*TISSUE_COLUMNS, *names))


def _tissue_totals(tissue_path: Path, normalize: str, why: str):
    """Return ``(totals, tiv)`` of a tissue table, or the Read that says what is wrong.

    With ``normalize="tiv"`` every total but ``tiv_ml`` is divided by the TIV, which is
    returned for the caller's other volumes; otherwise ``tiv`` is None.
    """
    totals = _read_totals(tissue_path, why=why)
    if isinstance(totals, Read) or normalize != "tiv":
        return totals if isinstance(totals, Read) else (totals, None)
    tiv = float(totals[TISSUE_COLUMNS.index("tiv_ml")])
    if not tiv > 0:
        return _bad(tissue_path, f"tiv_ml is {tiv}, so volumes cannot be divided by it")
    return np.where(np.array(TISSUE_COLUMNS) == "tiv_ml", totals, totals / tiv), tiv


def _read_totals(tissue_path: Path, why: str) -> np.ndarray | Read:
    """Return the :data:`TISSUE_COLUMNS` of a tissue table, or the Read that says what is wrong."""
    if not tissue_path.is_file():
        return Read(problem=f"no tissue table ({tissue_path}); rerun the participant level "
                    f"(or {why})", category="no tissue table")
    totals = _read_tsv(tissue_path)
    if isinstance(totals, str):
        return _bad(tissue_path, totals)
    header, body = totals
    absent = [c for c in TISSUE_COLUMNS if c not in header]
    if absent:
        return _bad(tissue_path, f"no column(s) {', '.join(absent)} "
                    f"(found: {', '.join(header) or 'none'})")
    if len(body) != 1:
        return _bad(tissue_path, f"expected one row, found {len(body)}")
    try:
        row = _floats(body[0][header.index(c)] for c in TISSUE_COLUMNS)
    except ValueError:
        return _bad(tissue_path, "non-numeric tissue volumes")
    if not np.all(np.isfinite(row)):
        return _bad(tissue_path, "tissue volumes are n/a")
    return row


# --------------------------------------------------------------------------- func
def _entities_of(name: str) -> dict:
    """``session, task, acquisition, run`` of a derivative file name (parsing, not building)."""
    out = {}
    for part in name.split("_")[1:]:
        key, sep, value = part.partition("-")
        if sep and key in _RUN_KEYS:
            out[_RUN_KEYS[key]] = value
    return out


def _func_files(root, label: str, session: str | None) -> list[str]:
    """Names of the files in a participant's (session's) ``func/`` derivatives folder (none: [])."""
    probe = derivative_path(root, subject=label, session=session, task=REST_TASK,
                            datatype="func", desc="qc", suffix="bold", extension=".json")
    try:
        return [e.name for e in os.scandir(probe.parent) if e.is_file()]
    except OSError:
        return []


def _rest_runs(root, label: str, session: str | None) -> list[dict]:
    """Entities of every resting-state run with a QC record or a derivative in ``func/``."""
    names = _func_files(root, label, session)
    runs = {}
    for name in names:
        ents = _entities_of(name)
        if ents.get("task") != REST_TASK or ents.get("session") != session:
            continue
        key = (ents.get("acquisition") or "", ents.get("run") or "")
        runs[key] = {k: ents.get(k) for k in ("session", "task", "acquisition", "run")}
    return [runs[k] for k in sorted(runs, key=lambda k: (k[0], k[1].zfill(8)))]


def functional_map_grids(root, label: str, session: str | None) -> set[tuple[str, str]]:
    """Return the ``(map, res label)`` pairs of a participant's resting-state ``desc-<map>_boldmap`` files.

    What the participant level wrote, whatever the configuration asks; for choosing the
    grid of maps read beside the model inputs (:func:`brainage.cohort.data.read_functional_maps`).
    """
    found = set()
    for name in _func_files(root, label, session):
        if not name.endswith("_boldmap.nii.gz") or f"_task-{REST_TASK}_" not in name:
            continue
        ents = dict(part.partition("-")[::2] for part in name.split("_")[1:-1] if "-" in part)
        if ents.get("space") == TEMPLATE_SPACE and ents.get("res") and ents.get("desc"):
            found.add((ents["desc"], ents["res"]))
    return found


def _run_name(ents: dict) -> str:
    parts = [f"{k}-{ents[v]}" for k, v in (("acq", "acquisition"), ("run", "run")) if ents.get(v)]
    return "_".join(parts) or "run"


def _check_run_qc(root, label: str, ents: dict, qc) -> tuple[str, str] | None:
    """QC problem of one BOLD run as (text, category), or None when it passes."""
    path = derivative_path(root, subject=label, datatype="func", desc="qc", suffix="bold",
                           extension=".json", **ents)
    if not path.is_file():
        return (f"no QC record ({path}); rerun the participant level", "no QC record")
    data = _read_json(path)
    if isinstance(data, str):
        return (f"{path}: {data}; rerun the participant level", "corrupt file")
    if data.get("excluded"):
        reason = data.get("reason") or "no reason recorded"
        return (f"excluded by the participant stage ({reason})", "excluded by the participant stage")
    try:
        mean_fd = float(data["mean_fd"])
        scrubbed = float(data["percent_scrubbed"]) / 100.0
    except (KeyError, TypeError, ValueError):
        return (f"{path}: no numeric mean_fd and percent_scrubbed; rerun the participant level",
                "corrupt file")
    failed = []
    if mean_fd > qc.max_mean_fd:
        failed.append((f"mean FD {_fmt(mean_fd, qc.max_mean_fd)} mm > {qc.max_mean_fd:g} "
                       "(group.qc.max_mean_fd)", "QC: mean FD above group.qc.max_mean_fd"))
    if scrubbed > qc.max_scrubbed_fraction:
        failed.append((f"scrubbed fraction {_fmt(scrubbed, qc.max_scrubbed_fraction)} > "
                       f"{qc.max_scrubbed_fraction:g} (group.qc.max_scrubbed_fraction)",
                       "QC: scrubbed fraction above group.qc.max_scrubbed_fraction"))
    if failed:
        return "; ".join(t for t, _ in failed), failed[0][1]
    return None


def _no_usable_run(problems: list[tuple[str, str, str]]) -> Read:
    """Return a Read naming why each run is unusable (a single run: its problem alone)."""
    if len(problems) == 1:
        _, text, category = problems[0]
        return Read(problem=text, category=category)
    text = "; ".join(f"{name}: {text}" for name, text, _ in problems)
    return Read(problem=f"no usable run ({text})", category=problems[0][2])


def _read_relmat(path: Path):
    """Region names and the upper triangle (row-major, no diagonal) of a ``relmat.tsv``.

    Returns an error text for an unusable file. Only the upper-triangle cells
    are parsed (the matrix is symmetric): a 113-region matrix has 6,328 of
    them, and a cohort thousands of matrices.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return f"not a readable TSV file ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    lines = [line for line in text.splitlines() if line]
    if not lines:
        return "empty file (no header)"
    cols = lines[0].split("\t")[1:]
    rows, cells = [], []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(cols) + 1:
            return f"line {number} has {len(fields)} fields, the header {len(cols) + 1}"
        rows.append(fields[0])
        cells.extend(fields[len(rows) + 1:])  # row i (1-based): columns after the diagonal
    if len(rows) != len(cols):
        return (f"not a square matrix ({len(rows)} rows, {len(cols)} region columns); "
                "expected one row and one column per region")
    if rows != cols:
        return "the row and column regions differ; expected the same regions in the same order"
    if len(rows) < 2:
        return f"{len(rows)} region(s); a connectivity matrix needs at least 2"
    if len(set(rows)) != len(rows):
        return "duplicate region names"
    try:
        values = _floats(cells)
    except ValueError:
        return "non-numeric values"
    return tuple(rows), values


@functools.lru_cache(maxsize=8)
def _edge_names(regions: tuple[str, ...]) -> tuple[str, ...]:
    """``<A>--<B>`` for the upper triangle (row-major, no diagonal); one tuple per region set."""
    iu = np.triu_indices(len(regions), k=1)
    return tuple(f"{regions[i]}--{regions[j]}" for i, j in zip(*iu))


def read_connectivity(root, label: str, session: str | None, atlas: str, qc) -> Read:
    """Upper triangle (no diagonal) of the resting-state Fisher-z matrix of ``atlas``.

    Runs failing ``group.qc`` or excluded by the stage are dropped; the
    matrices of the remaining runs are averaged edge by edge (over the runs
    where the edge is defined). Features are named ``<region A>--<region B>``
    in row-major upper-triangle order. A participant with any undefined edge
    left (a region outside the BOLD field of view) is unusable, with a reason
    giving the count and the regions.
    """
    runs = _rest_runs(root, label, session)
    if not runs:
        return _missing()
    problems, edges, regions, sources = [], [], None, []
    for ents in runs:
        name = _run_name(ents)
        issue = _check_run_qc(root, label, ents, qc)
        if issue is not None:
            problems.append((name, *issue))
            continue
        path = derivative_path(root, subject=label, datatype="func", atlas=atlas,
                               meas="FisherZ", suffix="relmat", extension=".tsv", **ents)
        if not path.is_file():
            problems.append((name, f"no atlas-{atlas} FisherZ connectivity matrix ({path}); "
                             f"add {atlas} to func.atlases and rerun the participant level",
                             f"no atlas-{atlas} connectivity"))
            continue
        got = _read_relmat(path)
        if isinstance(got, str):
            problems.append((name, f"{path}: {got}; rerun the participant level for this "
                             "participant", "corrupt file"))
            continue
        names, values = got
        if regions is not None and names != regions:
            problems.append((name, f"{path}: its regions differ from those of {sources[0].name}",
                             "corrupt file"))
            continue
        regions = names
        edges.append(values)
        sources.append(path)
    if not edges:
        return _no_usable_run(problems)
    if len(edges) == 1:
        values = edges[0]
    else:
        with warnings.catch_warnings():  # an edge n/a in every run stays n/a
            warnings.simplefilter("ignore", RuntimeWarning)
            values = np.nanmean(np.stack(edges), axis=0)
    bad = ~np.isfinite(values)
    if bad.any():
        n = len(regions)
        full = np.zeros((n, n), bool)
        full[np.triu_indices(n, k=1)] = bad
        full |= full.T
        np.fill_diagonal(full, True)
        empty = [regions[i] for i in range(n) if full[i].all()]
        where = f" (regions without signal: {', '.join(empty[:5])}" + (
            f" and {len(empty) - 5} more)" if len(empty) > 5 else ")") if empty else ""
        files = ", ".join(p.name for p in sources)
        return Read(
            problem=f"{int(bad.sum())} of {bad.size} connectivity edges are n/a in {files}{where}; "
            "check the BOLD field of view, or keep the participant's other modalities with "
            "group.missing_modality: available",
            category="missing connectivity edges",
        )
    return Read(values=values, names=_edge_names(regions))


# --------------------------------------------------------------------------- maps
def read_maps(root, label: str, session: str | None, spec, qc) -> Read:
    """Paths of a participant's MNI-space maps at ``spec.resolution`` (checked to exist).

    Structural maps come from :func:`~brainage.outputs.output_entities`; functional
    maps are ``desc-<name>_boldmap`` of the first resting-state run (in run order) that
    passes ``group.qc`` (maps are not averaged across runs).
    """
    res = res_label(spec.resolution)
    if spec.stage == "anat":
        ents = output_entities(spec.resolution)
        paths = {m: _anat_path(root, label, session, ents[ANAT_MAP_FIELDS[m]]) for m in spec.maps}
        absent = [m for m, p in paths.items() if not p.is_file()]
        if len(absent) == len(paths):
            other = _anat_path(root, label, session, output_entities()["tissue_morph"])
            if not other.is_file():
                return _missing()
        if absent:
            return Read(
                problem=f"no {absent[0]} map at res-{res} ({paths[absent[0]]}); set "
                f"anat.output_resolution to {spec.resolution:g} and rerun the participant level",
                category=f"no maps at res-{res}",
            )
        return Read(paths={m: str(p.resolve()) for m, p in paths.items()})
    runs = _rest_runs(root, label, session)
    if not runs:
        return _missing()
    problems = []
    for ents in runs:
        name = _run_name(ents)
        issue = _check_run_qc(root, label, ents, qc)
        if issue is not None:
            problems.append((name, *issue))
            continue
        paths = {m: derivative_path(root, subject=label, datatype="func", space=TEMPLATE_SPACE,
                                    res=res, desc=m, suffix="boldmap", extension=".nii.gz",
                                    **ents) for m in spec.maps}
        absent = [m for m, p in paths.items() if not p.is_file()]
        if absent:
            problems.append((name, f"no {absent[0]} map at res-{res} ({paths[absent[0]]}); "
                             f"add {absent[0]} to func.maps, set func.output_resolution to "
                             f"{spec.resolution:g} and rerun the participant level",
                             f"no maps at res-{res}"))
            continue
        return Read(paths={m: str(p.resolve()) for m, p in paths.items()})
    return _no_usable_run(problems)


# --------------------------------------------------------------------------- tissue totals
def read_tissue(root, label: str, session: str | None, normalize: str = "none") -> Read:
    """Tissue totals :data:`TISSUE_COLUMNS` of one participant (``kind: tissue``).

    With ``normalize="tiv"`` every total but ``tiv_ml`` is a fraction of TIV, as for
    ``kind: regional``.
    """
    tissue_path = _anat_path(root, label, session, output_entities()["tissue_morph"])
    if not tissue_path.is_file():
        return _missing()
    got = _tissue_totals(tissue_path, normalize, why="use another kind of anat input")
    return got if isinstance(got, Read) else Read(values=got[0], names=TISSUE_COLUMNS)
