"""Rows of the cohort from ``participants.tsv``: one per participant, or per participant × session.

See :mod:`brainage.cohort.data` for the conventions (keys, optional columns,
session ages). Participant-level reasons to exclude a row (no numeric age, an
unknown or disallowed group, a label that is not a BIDS label) are attached to
the row; reading the derivatives is :mod:`brainage.cohort.readers`' job.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..bids import read_participants

__all__ = ["DEFAULT_GROUP", "PARTICIPANT_COLUMNS", "UNKNOWN_SEX", "UNKNOWN_SITE", "Unit",
           "participant_units", "subfolders"]

#: Site given to participants without one (a constant covariate).
UNKNOWN_SITE = "site-unknown"
#: Sex given to participants without one.
UNKNOWN_SEX = "n/a"
#: Group of every participant when participants.tsv has no group column.
DEFAULT_GROUP = "control"
#: Columns of :attr:`~brainage.cohort.data.CohortData.participants`, in order (any other
#: participants.tsv columns follow).
PARTICIPANT_COLUMNS = ("participant_id", "session", "age", "sex", "site", "group", "is_control",
                       "modalities")
_SESSIONS_PATTERN = "sub-{subject}/sub-{subject}_{suffix<sessions>}{extension<.tsv>}"
_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")


@dataclass
class Unit:
    """One row of the cohort being built (a participant, or a participant × session)."""

    label: str
    session: str | None
    age: float
    columns: dict
    reasons: list = field(default_factory=list)  # [(text, category)] excluding the whole unit

    @property
    def participant_id(self) -> str:
        """``sub-<label>``."""
        return f"sub-{self.label}"

    @property
    def session_id(self) -> str | None:
        """``ses-<label>``, or None without sessions."""
        return None if self.session is None else f"ses-{self.session}"

    @property
    def key(self) -> str:
        """The row key: ``sub-01`` or ``sub-01_ses-1``."""
        return self.participant_id if self.session is None else f"{self.participant_id}_ses-{self.session}"


def subfolders(path: Path, prefix: str) -> list[str]:
    """Names of the folders in ``path`` starting with ``prefix`` (none if ``path`` is absent)."""
    try:
        return [e.name for e in os.scandir(path) if e.is_dir() and e.name.startswith(prefix)]
    except OSError:
        return []


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    value = str(value).strip()
    return value or None


def _session_ages(bids_dir: Path, label: str):
    """Ages per session label from ``sub-XX/sub-XX_sessions.tsv``; ``{}`` if absent; str if corrupt."""
    from bids.layout.writing import build_path

    path = bids_dir / build_path({"subject": label, "suffix": "sessions", "extension": ".tsv"},
                                 [_SESSIONS_PATTERN])
    if not path.is_file():
        return {}
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, na_values=["n/a", ""],
                            keep_default_na=False)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        return f"{path}: not a readable TSV file ({type(exc).__name__}); fix or remove it"
    if "session_id" not in table.columns or "age" not in table.columns:
        return {}
    ages = pd.to_numeric(table["age"], errors="coerce")
    return {str(s).removeprefix("ses-"): float(a)
            for s, a in zip(table["session_id"], ages) if _text(s) is not None and np.isfinite(a)}


def participant_units(bids_dir: Path, root: Path, cfg):
    """Rows of the cohort from participants.tsv, with the reasons that exclude a whole row."""
    table = read_participants(bids_dir, require_age=False)
    controls = {c.casefold() for c in cfg.control_labels}
    allowed = None if cfg.groups is None else {g.casefold() for g in cfg.groups}
    has = {c: c in table.columns for c in ("age", "sex", "site", "group")}
    reserved = {"participant_id", "key", *PARTICIPANT_COLUMNS}
    extra = [c for c in table.columns if c not in reserved]
    ages = pd.to_numeric(table["age"], errors="coerce") if has["age"] else None
    units = []
    for label, row in zip(table.index, table.itertuples(index=False, name=None)):
        values = dict(zip(table.columns, row))
        group = _text(values.get("group")) if has["group"] else DEFAULT_GROUP
        columns = {
            "sex": (_text(values.get("sex")) or UNKNOWN_SEX) if has["sex"] else UNKNOWN_SEX,
            "site": (_text(values.get("site")) or UNKNOWN_SITE) if has["site"] else UNKNOWN_SITE,
            "group": group or "n/a",
            "is_control": group is not None and group.casefold() in controls,
            **{c: _text(values.get(c)) for c in extra},
        }
        reasons = []
        if not _LABEL_RE.match(label):
            reasons.append((f"participant_id sub-{label} is not a BIDS label (letters and digits "
                            "only); rename the participant", "invalid label"))
        if group is None:
            reasons.append((f"no group in participants.tsv (group: n/a); fill it in (controls: "
                            f"{', '.join(cfg.control_labels)}) or drop the row", "no group"))
        elif allowed is not None and group.casefold() not in allowed:
            reasons.append((f"group {group!r} is not in group.groups ({', '.join(cfg.groups)})",
                            "group not in group.groups"))
        sessions = sorted({s.removeprefix("ses-") for s in
                           subfolders(bids_dir / f"sub-{label}", "ses-")
                           + subfolders(root / f"sub-{label}", "ses-")}) if not reasons else []
        for bad in [s for s in sessions if not _LABEL_RE.match(s)]:
            reasons.append((f"session folder ses-{bad} is not a BIDS label (letters and digits "
                            "only); rename it", "invalid label"))
        session_ages = _session_ages(bids_dir, label) if sessions else {}
        if isinstance(session_ages, str):
            reasons.append((session_ages, "corrupt file"))
            session_ages = {}
        base_age = float(ages[label]) if ages is not None else float("nan")
        for session in sessions or [None]:
            age = session_ages.get(session, base_age)
            unit = Unit(label, session, age, dict(columns), list(reasons))
            if not np.isfinite(age):
                given = values.get("age") if has["age"] else None
                shown = "no age column" if not has["age"] else f"age: {_text(given) or 'n/a'}"
                where = f" or sub-{label}_sessions.tsv" if session is not None else ""
                unit.reasons.append((f"no numeric age in participants.tsv{where} ({shown}); fill "
                                     "in the age in years", "no numeric age"))
            units.append(unit)
    return units, set(table.index), extra
