"""BIDS input discovery and BIDS-derivatives output paths.

Inputs are found with pybids; ``participants.tsv`` is checked for what
brain-age work needs (unique ids, numeric ages). :func:`validate_bids` runs
the official BIDS validator (``bids-validator``) when it is installed. Output paths are built from
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
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .exceptions import BIDSError, ParticipantsTableError, UsageError

__all__ = [
    "PATTERNS",
    "TEMPLATE_SPACE",
    "BoldRun",
    "ParticipantInputs",
    "bold_repetition_time",
    "check_bids_root",
    "derivative_path",
    "discover_inputs",
    "find_bids_validator",
    "normalize_labels",
    "read_participants",
    "validate_bids",
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
        mode, space, res, atlas, label, desc, meas``; or, for the group level's
        files under ``OUTPUT_DIR/group/``, ``datatype="group"`` with ``suffix``,
        ``extension`` and optionally ``task``, ``atlas``, ``desc`` (no subject).
        Values must be alphanumeric (BIDS labels).

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
            "least subject, datatype (anat|func|log|figures), suffix and extension, or "
            "datatype 'group', suffix and extension"
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


def bold_repetition_time(run: BoldRun) -> tuple[float | None, str]:
    """Return a BOLD run's repetition time (s) and where it was read.

    From the sidecar's ``RepetitionTime``, else from the NIfTI header
    (``pixdim[4]``, if positive); ``(None, "")`` when neither gives one (the
    functional stage reports that for its participant).
    """
    if run.sidecar is not None:
        try:
            tr = json.loads(run.sidecar.read_text(encoding="utf-8")).get("RepetitionTime")
        except (OSError, ValueError, AttributeError):
            tr = None
        if isinstance(tr, (int, float)) and not isinstance(tr, bool) and tr > 0:
            return float(tr), f"RepetitionTime of {run.sidecar.name}"
    try:
        import nibabel as nib

        zooms = nib.load(str(run.path)).header.get_zooms()
    except Exception:  # an unreadable image fails its participant in the stage, not here
        return None, ""
    if len(zooms) > 3 and zooms[3] > 0:
        return float(zooms[3]), "the NIfTI header"
    return None, ""


def check_bids_root(bids_dir: Path) -> None:
    """Refuse a BIDS_DIR that is missing, a file, or has no dataset_description.json (no pybids)."""
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
        Whether pybids ignores files that are not valid BIDS names (the
        official validator is :func:`validate_bids`, run before this).
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
    check_bids_root(bids_dir)
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


# --------------------------------------------------------------------------- validation
#: Environment variable naming the ``bids-validator`` executable to use, or ``off``.
VALIDATOR_ENV = "BRAINAGE_BIDS_VALIDATOR"
#: How to install the validator (the version the test suite is checked against).
VALIDATOR_INSTALL = "npm install -g bids-validator@1.15.0"
_OFF = ("", "0", "off", "no", "none", "false")


def find_bids_validator() -> str | None:
    """Return the ``bids-validator`` executable to run, or None when there is none.

    Looked up in order: the ``BRAINAGE_BIDS_VALIDATOR`` environment variable
    (a path; ``off`` turns validation off), ``bids-validator`` on ``PATH``,
    and ``.tools/node_modules/.bin/bids-validator`` of a source checkout
    (``make tools``).
    """
    configured = os.environ.get(VALIDATOR_ENV)
    if configured is not None:
        return None if configured.strip().lower() in _OFF else configured
    found = shutil.which("bids-validator")
    if found:
        return found
    local = Path(__file__).resolve().parent.parent / ".tools" / "node_modules" / ".bin" / "bids-validator"
    return str(local) if local.is_file() else None


def _issue_files(issue: dict) -> list[str]:
    out = []
    for entry in issue.get("files") or []:
        file = (entry or {}).get("file") or {}
        name = file.get("relativePath") or file.get("path") or file.get("name")
        if name:
            out.append(str(name))
    return out


def _describe_issue(issue: dict) -> str:
    files = _issue_files(issue)
    where = ""
    if files:
        more = f" and {len(files) - 1} more file(s)" if len(files) > 1 else ""
        where = f" in {files[0]}{more}"
    reason = " ".join(str(issue.get("reason", "")).split()).rstrip(".")
    reason = reason if len(reason) <= 120 else reason[:117].rstrip() + " (...)"
    first = (issue.get("files") or [{}])[0] or {}
    evidence = " ".join(str(first.get("evidence") or "").split())
    if evidence and not (files and files[0].endswith(evidence)):
        reason += f" ({evidence[:100]})"
    return f"[{issue.get('code')} {issue.get('key')}]{where}: {reason}"


def validate_bids(bids_dir: str | Path, *, max_shown: int = 3, timeout: float = 600) -> dict | None:
    """Check a dataset with the official BIDS validator, as BIDS Apps do.

    Warnings are logged in one line. Without an installed validator one line
    says so and how to install it; a validator that crashes or times out is
    reported and the dataset is used as it is.

    Parameters
    ----------
    bids_dir : path-like
        BIDS dataset root.
    max_shown : int
        How many errors the message lists (the rest are counted).
    timeout : float
        Seconds the validator may take.

    Returns
    -------
    dict or None
        The validator's JSON report, or None when it was not run.

    Raises
    ------
    BIDSError
        The validator found errors; the message lists the first ones with
        their codes and files.
    """
    bids_dir = Path(bids_dir)
    if os.environ.get(VALIDATOR_ENV, "x").strip().lower() in _OFF:
        logger.debug("BIDS validation is off (%s=%s)", VALIDATOR_ENV, os.environ[VALIDATOR_ENV])
        return None
    exe = find_bids_validator()
    if exe is None:
        logger.info(
            "BIDS validation skipped: bids-validator is not installed (install it with `%s`; "
            "--skip-bids-validation silences this)", VALIDATOR_INSTALL,
        )
        return None
    try:
        proc = subprocess.run([exe, str(bids_dir), "--json"], capture_output=True, text=True,
                              timeout=timeout, check=False)
        report = json.loads(proc.stdout)
        issues = report["issues"]
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError, TypeError) as exc:
        logger.warning("bids-validator (%s) could not check %s (%s); going on without validation",
                       exe, bids_dir, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None
    warnings = issues.get("warnings") or []
    if warnings:
        logger.warning(
            "bids-validator: %d warning(s) in %s: %s", len(warnings), bids_dir,
            "; ".join(f"{w.get('key')} (code {w.get('code')}, {len(_issue_files(w))} file(s))"
                      for w in warnings),
        )
    errors = issues.get("errors") or []
    if errors:
        shown = "; ".join(_describe_issue(e) for e in errors[:max_shown])
        more = f"; and {len(errors) - max_shown} more" if len(errors) > max_shown else ""
        raise BIDSError(
            f"BIDS_DIR {bids_dir} is not valid BIDS: bids-validator found {len(errors)} error(s): "
            f"{shown}{more}. Fix them (run `bids-validator {bids_dir}` for details), or pass "
            "--skip-bids-validation to run anyway"
        )
    logger.info("bids-validator: %s is valid BIDS", bids_dir)
    return report


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
    from .writing import atomic_write_json

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
