"""BIDS input discovery and BIDS-derivatives output paths.

Inputs are found with pybids; ``participants.tsv`` is checked for what
brain-age work needs (unique ids, numeric ages). Output paths are built from
entities with pybids' ``build_path`` and the :data:`PATTERNS` table, never by
string concatenation.

Examples
--------
>>> derivative_path("/out", subject="01", datatype="anat", space="MNI152NLin2009aSym",
...                 res="2", label="GM", suffix="probseg", extension=".nii.gz").as_posix()
'/out/sub-01/anat/sub-01_space-MNI152NLin2009aSym_res-2_label-GM_probseg.nii.gz'
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .exceptions import BIDSError, ParticipantsTableError, UsageError

__all__ = [
    "PATTERNS",
    "TEMPLATE_SPACE",
    "BoldRun",
    "ParticipantInputs",
    "derivative_path",
    "discover_inputs",
    "normalize_labels",
    "read_participants",
    "validate_output_dir",
    "write_dataset_description",
]

logger = logging.getLogger(__name__)

#: The template space of every MNI-space output (the template nilearn ships).
TEMPLATE_SPACE = "MNI152NLin2009aSym"

_ENTITY_ORDER = (
    "[_ses-{session}][_task-{task}][_acq-{acquisition}][_run-{run}][_from-{from}][_to-{to}]"
    "[_mode-{mode}][_hemi-{hemi}][_space-{space}][_res-{res}][_atlas-{atlas}][_roi-{roi}]"
    "[_label-{label}][_desc-{desc}][_meas-{meas}][_stat-{stat}]"
)

#: Path patterns of brainage derivatives (pybids ``build_path`` syntax).
PATTERNS = (
    "sub-{subject}[/ses-{session}]/{datatype<anat|func|log|figures>}/sub-{subject}"
    + _ENTITY_ORDER
    + "_{suffix}{extension}",
    "{datatype<group>}/[task-{task}_][atlas-{atlas}_][desc-{desc}_]{suffix}{extension}",
)

_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")


def derivative_path(root: str | Path, **entities) -> Path:
    """Build the path of a derivative file from its BIDS entities.

    Parameters
    ----------
    root : path-like
        The derivatives dataset root (``OUTPUT_DIR``).
    **entities
        ``subject``, ``datatype`` (anat, func, log, figures), ``suffix``,
        ``extension`` and any of ``session, task, run, from_ (or "from"), to,
        mode, space, res, atlas, label, desc, meas``. Values must be
        alphanumeric (BIDS labels).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        If an entity value is not a BIDS label or no pattern fits the entities.
    """
    from bids.layout.writing import build_path

    if "from_" in entities:
        entities["from"] = entities.pop("from_")
    ents = {k: str(v) for k, v in entities.items() if v is not None}
    for key, value in ents.items():
        if key in ("extension", "datatype"):
            continue
        if key == "subject":
            value = value.removeprefix("sub-")
            ents[key] = value
        if not _LABEL_RE.match(value):
            raise ValueError(
                f"BIDS entity {key}={value!r} must be alphanumeric (letters and digits only); "
                "remove '_', '-' and other characters"
            )
    if "extension" in ents and not ents["extension"].startswith("."):
        ents["extension"] = "." + ents["extension"]
    built = build_path(ents, list(PATTERNS), strict=True)
    if built is None:
        raise ValueError(
            f"no brainage derivative pattern fits the entities {sorted(ents)}; a file needs at "
            "least subject, datatype (anat|func|log|figures), suffix and extension"
        )
    return Path(root) / built


def normalize_labels(labels) -> list[str]:
    """Strip an optional ``sub-`` prefix from participant labels (``"sub-01"`` → ``"01"``)."""
    if labels is None:
        return []
    return [str(label).removeprefix("sub-") for label in labels]


# --------------------------------------------------------------------------- participants
def read_participants(bids_dir: str | Path, *, require_age: bool = True):
    """Read and check ``participants.tsv``.

    Parameters
    ----------
    bids_dir : path-like
        BIDS dataset root.
    require_age : bool
        Whether every participant must have a numeric ``age``.

    Returns
    -------
    pandas.DataFrame
        Indexed by the label without ``sub-``; ``age`` as float.

    Raises
    ------
    ParticipantsTableError
        Missing file or column, duplicate ids, missing or non-numeric ages.
    """
    import pandas as pd

    path = Path(bids_dir) / "participants.tsv"
    if not path.is_file():
        raise ParticipantsTableError(
            f"{path}: not found; brain-age needs participants.tsv with participant_id and age columns"
        )
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, na_values=["n/a", ""], keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ParticipantsTableError(f"{path}: not a readable TSV file ({exc})") from None
    if "participant_id" not in table.columns:
        raise ParticipantsTableError(
            f"{path}: no participant_id column (found: {', '.join(table.columns)}); "
            "add one with values like sub-01"
        )
    ids = table["participant_id"].astype(str)
    dupes = sorted(set(ids[ids.duplicated()]))
    if dupes:
        raise ParticipantsTableError(
            f"{path}: duplicate participant_id {', '.join(dupes)}; each participant must appear once"
        )
    table.index = pd.Index(normalize_labels(ids), name="label")
    if require_age:
        if "age" not in table.columns:
            raise ParticipantsTableError(
                f"{path}: no age column (found: {', '.join(table.columns)}); add age in years"
            )
        ages = pd.to_numeric(table["age"], errors="coerce")
        missing = list(table.index[table["age"].isna()])
        bad = list(table.index[table["age"].notna() & ages.isna()])
        if missing:
            raise ParticipantsTableError(
                f"{path}: age is missing for sub-{', sub-'.join(missing)}; fill in the age in years "
                "(or drop those rows)"
            )
        if bad:
            shown = ", ".join(f"sub-{b}={table.loc[b, 'age']!r}" for b in bad[:5])
            raise ParticipantsTableError(
                f"{path}: age must be a number of years; got {shown}"
            )
        table["age"] = ages.astype(float)
    return table


# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class BoldRun:
    """One BOLD run and its JSON sidecar."""

    path: Path
    sidecar: Path | None
    entities: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ParticipantInputs:
    """Everything the participant-level stages read for one participant."""

    subject: str
    t1w: tuple[Path, ...]
    bold: tuple[BoldRun, ...]
    sessions: tuple[str, ...] = ()
    t1w_entities: tuple[dict, ...] = ()

    def files(self) -> list[Path]:
        """All input files (images and sidecars), for provenance checksums."""
        out = list(self.t1w)
        for run in self.bold:
            out.append(run.path)
            if run.sidecar is not None:
                out.append(run.sidecar)
        return out


def _check_bids_root(bids_dir: Path) -> None:
    if not bids_dir.exists():
        raise BIDSError(f"BIDS_DIR {bids_dir} does not exist; pass the root of a BIDS dataset")
    if not bids_dir.is_dir():
        raise BIDSError(f"BIDS_DIR {bids_dir} is a file; pass the root folder of a BIDS dataset")
    description = bids_dir / "dataset_description.json"
    if not description.is_file():
        raise BIDSError(
            f"BIDS_DIR {bids_dir} is not a BIDS dataset (no dataset_description.json); "
            "pass the dataset root, or create one with `brainage simulate DIR` to try brainage"
        )
    try:
        json.loads(description.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BIDSError(f"{description}: not valid JSON ({exc}); fix the file") from None


def discover_inputs(
    bids_dir: str | Path,
    *,
    participant_labels=None,
    modalities=("anat", "func"),
    validate: bool = True,
    t1w_required: bool = True,
) -> list[ParticipantInputs]:
    """Find each participant's T1w and BOLD runs with pybids.

    Parameters
    ----------
    bids_dir : path-like
        BIDS dataset root.
    participant_labels : list of str, optional
        Labels with or without ``sub-``; default all participants.
    modalities : sequence of {"anat", "func"}
        What will be processed; a participant needs a T1w for ``anat`` and a
        BOLD run for ``func``.
    validate : bool
        Whether pybids ignores files that are not valid BIDS names.
    t1w_required : bool
        Whether a dataset without any T1w is refused. False when only the
        functional stage runs from fMRIPrep derivatives, which needs no T1w.

    Returns
    -------
    list of ParticipantInputs

    Raises
    ------
    BIDSError
        Not a BIDS dataset, or no T1w in the whole dataset (when ``t1w_required``).
    UsageError
        A requested participant label does not exist (the message lists those that do).
    """
    from bids import BIDSLayout, BIDSLayoutIndexer

    bids_dir = Path(bids_dir).resolve()
    _check_bids_root(bids_dir)
    # sidecars are read by the stages (a broken one fails only its participant), not indexed here
    layout = BIDSLayout(
        str(bids_dir),
        validate=validate,
        derivatives=False,
        indexer=BIDSLayoutIndexer(validate=validate, index_metadata=False),
    )
    existing = sorted(layout.get_subjects())
    if not existing:
        raise BIDSError(f"BIDS_DIR {bids_dir} has no sub-* folders; nothing to process")
    wanted = normalize_labels(participant_labels) or existing
    unknown = [label for label in wanted if label not in existing]
    if unknown:
        raise UsageError(
            f"unknown participant label(s) {', '.join(unknown)}; "
            f"participants in {bids_dir}: {', '.join(existing)}"
        )
    found = []
    for subject in wanted:
        t1w = layout.get(
            subject=subject, datatype="anat", suffix="T1w", extension=[".nii", ".nii.gz"]
        )
        bold = layout.get(
            subject=subject, datatype="func", suffix="bold", extension=[".nii", ".nii.gz"]
        )
        runs = []
        for image in bold:
            sidecar = Path(image.path[: -len(image.entities["extension"])] + ".json")
            ents = {
                k: v
                for k, v in image.get_entities().items()
                if k in ("session", "task", "run", "acquisition")
            }
            runs.append(BoldRun(Path(image.path), sidecar if sidecar.is_file() else None, ents))
        found.append(
            ParticipantInputs(
                subject=subject,
                t1w=tuple(Path(f.path) for f in t1w),
                bold=tuple(runs),
                sessions=tuple(sorted(layout.get_sessions(subject=subject))),
                t1w_entities=tuple(
                    {k: v for k, v in f.get_entities().items() if k in ("session", "run", "acquisition")}
                    for f in t1w
                ),
            )
        )
    if t1w_required and ("anat" in modalities or "func" in modalities):
        if not any(p.t1w for p in found):
            raise BIDSError(
                f"no T1w image found in {bids_dir} for "
                f"{'participants ' + ', '.join(wanted) if participant_labels else 'any participant'} "
                "(expected sub-<label>/anat/sub-<label>_T1w.nii[.gz]); brainage needs a T1w per participant"
            )
    if "func" in modalities and not any(p.bold for p in found) and "anat" not in modalities:
        raise BIDSError(
            f"no BOLD run found in {bids_dir} "
            "(expected sub-<label>/func/sub-<label>_task-<name>_bold.nii[.gz]); "
            "run with --modalities anat, or add the functional data"
        )
    return found


# --------------------------------------------------------------------------- outputs
def validate_output_dir(bids_dir: str | Path, output_dir: str | Path) -> Path:
    """Refuse an OUTPUT_DIR equal to BIDS_DIR or inside it, other than under ``derivatives/``.

    Raises
    ------
    UsageError
        With the suggested ``BIDS_DIR/derivatives/brainage``.
    """
    bids_dir = Path(bids_dir).resolve()
    output_dir = Path(output_dir).resolve()
    suggestion = bids_dir / "derivatives" / "brainage"
    if output_dir == bids_dir:
        raise UsageError(
            f"OUTPUT_DIR must not be BIDS_DIR ({bids_dir}); use {suggestion}"
        )
    if bids_dir in output_dir.parents and (bids_dir / "derivatives") not in (
        output_dir,
        *output_dir.parents,
    ):
        raise UsageError(
            f"OUTPUT_DIR {output_dir} is inside BIDS_DIR and would mix outputs with raw data; "
            f"use {suggestion}"
        )
    if output_dir == bids_dir / "derivatives":
        raise UsageError(f"OUTPUT_DIR must be a folder inside derivatives/; use {suggestion}")
    return output_dir


def write_dataset_description(output_dir: str | Path, bids_dir: str | Path | None = None) -> Path:
    """Write (or refresh) the derivative dataset's ``dataset_description.json``.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    from . import __version__
    from .io import atomic_write_json

    output_dir = Path(output_dir)
    description = {
        "Name": "brainage derivatives",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "brainage",
                "Version": __version__,
                "Description": "Multimodal brain-age prediction (PIDReg)",
            }
        ],
    }
    if bids_dir is not None:
        bids_dir = Path(bids_dir).resolve()
        source = {"URL": bids_dir.as_uri()}
        try:
            raw = json.loads((bids_dir / "dataset_description.json").read_text(encoding="utf-8"))
            if raw.get("DatasetDOI"):
                source["DOI"] = raw["DatasetDOI"]
            if raw.get("Name"):
                description["Name"] = f"brainage derivatives of {raw['Name']}"
        except (OSError, json.JSONDecodeError):
            logger.warning("could not read %s/dataset_description.json", bids_dir)
        description["SourceDatasets"] = [source]
    return atomic_write_json(output_dir / "dataset_description.json", description)
