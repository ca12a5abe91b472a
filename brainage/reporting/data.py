"""What the reports show, read from the group level's files (and the participants' QC files).

The reports never recompute a model: they read ``OUTPUT_DIR/group/`` (the files of
the last run, as its ``provenance.json`` or ``applied.json`` lists them) and the
participant level's QC records and figures. A file that is missing or unreadable
leaves its part of the report empty, with the reason listed in the report.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["ReportData", "load_report_data", "participant_qc", "read_table"]

#: Group outputs a report may use (name → file under OUTPUT_DIR/group).
GROUP_FILES = {
    "predictions": "predictions.tsv",
    "exclusions": "exclusions.tsv",
    "groups": "groups.tsv",
    "metrics": "metrics.json",
    "pid": "pid.json",
    "contributions": "contributions.tsv",
    "regions": "regions.tsv",
    "regions_participants": "regions_participants.tsv",
    "regions_pid": "regions_pid.tsv",
    "deviations": "deviations.tsv",
}


@dataclass
class ReportData:
    """Everything the reports display, as loaded from disk.

    Attributes
    ----------
    output_dir : pathlib.Path
        The derivatives root (``OUTPUT_DIR``).
    mode : str
        ``"train"`` (cross-validated training) or ``"apply"`` (a bundle applied to this cohort).
    tables : dict
        Name → DataFrame for each TSV of :data:`GROUP_FILES` that was written by the last run.
    metrics, pid : dict
        ``metrics.json`` and ``pid.json`` (empty when absent).
    record : dict
        ``provenance.json`` (training) or ``applied.json`` (applying a bundle).
    bundle : dict
        The bundle's ``extra.json`` (configuration, versions, training cohort), when readable.
    qc : pandas.DataFrame
        One row per participant (and session): motion, registration, flags, QC figure paths.
    problems : list of str
        Files that could not be read, with the reason (listed in the report's errors).
    pipeline : dict
        ``name`` and ``config`` (path) of the participant level's latest effective configuration
        (``OUTPUT_DIR/logs/*_config.yaml``), when there is one.
    """

    output_dir: Path
    mode: str
    tables: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    pid: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)
    bundle: dict = field(default_factory=dict)
    qc: pd.DataFrame | None = None
    problems: list = field(default_factory=list)
    pipeline: dict = field(default_factory=dict)

    @property
    def primary(self) -> str:
        """The model whose predictions the report is about."""
        return str(self.metrics.get("primary_model") or self.record.get("model") or "")

    @property
    def control_labels(self) -> list[str]:
        """Group labels of the controls as they are spelled in the data.

        ``group.control_labels`` (else ``control``) matched case-insensitively, as the
        cohort loader matches them, plus the configured spellings.
        """
        cfg = self.bundle.get("group_config") or {}
        wanted = [str(x) for x in cfg.get("control_labels", ["control"])]
        lower = {w.lower() for w in wanted}
        pred = self.tables.get("predictions")
        present = [] if pred is None else sorted({str(g) for g in pred["group"].dropna()
                                                   if str(g).lower() in lower})
        return list(dict.fromkeys([*present, *wanted]))

    def table(self, name: str) -> pd.DataFrame | None:
        """Return a group table, or None when this run did not write it."""
        return self.tables.get(name)

    def primary_predictions(self) -> pd.DataFrame | None:
        """Rows of ``predictions.tsv`` for the primary model."""
        pred = self.table("predictions")
        if pred is None:
            return None
        return pred[pred["model"] == self.primary].reset_index(drop=True)


def read_table(path) -> pd.DataFrame:
    """Read a brainage TSV (``n/a`` is missing; labels stay strings)."""
    return pd.read_csv(
        path,
        sep="\t",
        na_values=["n/a"],
        keep_default_na=False,
        dtype={"participant_id": str, "session": str, "site": str, "group": str},
    )


def _json(path: Path, problems: list) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        problems.append(f"{path}: cannot be read ({exc}); rerun the group level")
        return {}


def _run_files(gdir: Path, problems: list) -> tuple[str, dict, set[str]]:
    """Which run wrote the group folder last, its record, and the names of its files."""
    record = _json(gdir / "provenance.json", problems)
    mode = "train"
    if not record:
        record = _json(gdir / "applied.json", problems)
        mode = "apply"
    if not record:
        raise FileNotFoundError(
            f"{gdir} holds no finished group run (neither provenance.json nor applied.json); "
            "run `brainage BIDS OUT group --train` (or `--model BUNDLE`) first"
        )
    listed = {Path(p).name for p in record.get("files", {}).values()}
    if not listed:  # an applied run of an older version: the common tables
        listed = {"predictions.tsv", "exclusions.tsv", "groups.tsv", "metrics.json"}
    return mode, record, listed


def load_report_data(output_dir) -> ReportData:
    """Load the last group run's outputs under ``OUTPUT_DIR/group`` and the participants' QC.

    Raises
    ------
    FileNotFoundError
        When no group run has finished in ``OUTPUT_DIR`` (the message says what to run).
    """
    output_dir = Path(output_dir)
    gdir = output_dir / "group"
    problems: list[str] = []
    mode, record, listed = _run_files(gdir, problems)
    data = ReportData(output_dir=output_dir, mode=mode, record=record, problems=problems)
    for name, fname in GROUP_FILES.items():
        path = gdir / fname
        if fname not in listed or not path.exists():
            continue
        if fname.endswith(".json"):
            setattr(data, name, _json(path, problems))
            continue
        try:
            data.tables[name] = read_table(path)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            problems.append(f"{path}: cannot be read ({exc}); rerun the group level")
    bundle_dir = Path(record.get("bundle") or gdir / "model")
    data.bundle = _json(bundle_dir / "extra.json", problems)
    data.qc = participant_qc(output_dir)
    data.pipeline = participant_pipeline(output_dir)
    return data


def participant_pipeline(output_dir) -> dict:
    """Name and path of the participant level's latest effective configuration (empty when none)."""
    import yaml

    configs = sorted(Path(output_dir).glob("logs/*_config.yaml"), key=lambda p: p.stat().st_mtime)
    for path in reversed(configs):
        try:
            spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue
        return {"name": str(spec.get("name", path.stem)), "config": str(path)}
    return {}


def _mean(values) -> float:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def _unit_of(path: Path, root: Path) -> tuple[str, str | None]:
    parts = path.relative_to(root).parts
    session = parts[1] if len(parts) > 2 and parts[1].startswith("ses-") else None
    return parts[0], session


def participant_qc(output_dir) -> pd.DataFrame:
    """One row per participant (and session) with the participant level's QC numbers and figures.

    Columns: ``participant_id``, ``session``, ``registration_similarity``, ``anat_flags``,
    ``mean_fd`` (mm, mean over rest runs), ``percent_scrubbed``, ``func_flags``,
    ``func_excluded``, ``anat_mosaic`` and ``func_carpet`` (paths of the QC figures or None).
    """
    root = Path(output_dir)
    rows: dict = {}

    def row(path):
        key = _unit_of(path, root)
        return rows.setdefault(key, {"participant_id": key[0], "session": key[1]})

    for path in sorted(root.glob("sub-*/**/anat/*desc-qc_anat.json")):
        qc = _json(path, [])
        r = row(path)
        r["registration_similarity"] = qc.get("registration_similarity")
        r["anat_flags"] = "; ".join(qc.get("flags", []))
    func: dict = {}
    for path in sorted(root.glob("sub-*/**/func/*desc-qc_bold.json")):
        func.setdefault(_unit_of(path, root), []).append(_json(path, []))
    for key, runs in func.items():
        r = rows.setdefault(key, {"participant_id": key[0], "session": key[1]})
        r["mean_fd"] = _mean(q.get("mean_fd") for q in runs)
        r["percent_scrubbed"] = _mean(q.get("percent_scrubbed") for q in runs)
        r["func_flags"] = "; ".join(f for q in runs for f in q.get("flags", []))
        r["func_excluded"] = any(bool(q.get("excluded")) for q in runs)
    for kind, pattern in (("anat_mosaic", "*desc-mosaic_T1w.svg"), ("func_carpet", "*desc-carpet_bold.svg")):
        for path in sorted(root.glob(f"sub-*/**/figures/{pattern}")):
            key = _unit_of(path, root)
            rows.setdefault(key, {"participant_id": key[0], "session": key[1]}).setdefault(kind, path)
    columns = [
        "participant_id",
        "session",
        "registration_similarity",
        "anat_flags",
        "mean_fd",
        "percent_scrubbed",
        "func_flags",
        "func_excluded",
        "anat_mosaic",
        "func_carpet",
    ]
    frame = pd.DataFrame(list(rows.values()), columns=columns)
    return frame.sort_values(["participant_id", "session"], na_position="first").reset_index(drop=True)
