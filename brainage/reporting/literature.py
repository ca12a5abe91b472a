"""Published brain-age gaps, and which of them a cohort's clinical groups can be set beside.

The table ``reports/literature.tsv`` ships with brainage: one row per published
estimate (condition, synonyms, modality, gap in years with its interval or SE,
effect size, sample size, citation, DOI), from the reference values collected in
the project's brain-age field notes. A cohort group matches a row when its label,
normalized (case, punctuation, plural ``s``), equals the condition or one of its
synonyms, or when ``group.conditions`` maps the label to the condition.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd

from ..resources import data_dir

__all__ = ["CAVEAT", "comparison_rows", "load_literature", "match_groups", "normalize_label"]

logger = logging.getLogger(__name__)

#: What setting a cohort's gap beside published gaps can and cannot mean.
CAVEAT = (
    "Published gaps come from other models, cohorts, age ranges and accuracies: a gap depends on the "
    "model's MAE, its age-bias correction and the age range (de Lange et al. 2022), so the comparison "
    "says whether this cohort's effect has the direction and rough size reported before, not whether "
    "the two agree within error. Compare like with like: structural with structural, functional with "
    "functional (fMRI-based gaps in depression are larger than sMRI-based ones)."
)


def normalize_label(text: str) -> str:
    """Lower-case, keep letters and digits, drop a possessive and a plural ``s``.

    Examples
    --------
    >>> normalize_label("Schizophrenics")
    'schizophrenic'
    >>> normalize_label("Alzheimer’s disease")
    'alzheimer disease'
    """
    words = re.findall(r"[a-z0-9]+", re.sub(r"['’]s\b", "", str(text).lower()))
    return " ".join(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words)


def load_literature() -> pd.DataFrame:
    """Read the shipped table of published gaps (``reports/literature.tsv``).

    Returns
    -------
    pandas.DataFrame
        One row per published estimate, the file's columns (numbers as floats, ``n/a`` as
        NaN) and ``interval``: ``"95 % CI"`` where the source gives one, ``"± 1.96 SE"``
        where ``ci_low``/``ci_high`` are computed from its SE, ``""`` where it gives neither
        (drawn as a point).
    """
    path = data_dir("reports") / "literature.tsv"
    frame = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
    for col in ("gap_years", "ci_low", "ci_high", "se", "n_patients", "n_controls"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    # An interval from the SE where the source gives only that (normal approximation).
    from_se = frame["ci_low"].isna() & frame["se"].notna()
    frame.loc[from_se, "ci_low"] = frame.loc[from_se, "gap_years"] - 1.96 * frame.loc[from_se, "se"]
    frame.loc[from_se, "ci_high"] = frame.loc[from_se, "gap_years"] + 1.96 * frame.loc[from_se, "se"]
    frame["interval"] = np.where(from_se, "± 1.96 SE", np.where(frame["ci_low"].notna(), "95 % CI", ""))
    return frame


def match_groups(groups, literature: pd.DataFrame, overrides: dict | None = None) -> dict[str, str]:
    """Map each cohort group label to a literature condition (labels without a match are left out).

    Parameters
    ----------
    groups : iterable of str
        The cohort's non-control group labels.
    literature : pandas.DataFrame
        :func:`load_literature`.
    overrides : dict, optional
        ``group.conditions``: label → condition (matched by normalized name or synonym).
        An override naming no condition of the table is logged and its label left out.

    Returns
    -------
    dict
        Cohort label → the table's ``condition``.
    """
    names: dict[str, str] = {}
    for condition, synonyms in zip(literature["condition"], literature["synonyms"].fillna("")):
        for name in [condition, *str(synonyms).split(";")]:
            if name.strip():
                names.setdefault(normalize_label(name), condition)
    found = {}
    overrides = {normalize_label(k): v for k, v in (overrides or {}).items()}
    for label in groups:
        key = normalize_label(label)
        target = normalize_label(overrides[key]) if key in overrides else key
        if target in names:
            found[str(label)] = names[target]
        elif key in overrides:
            logger.warning("group.conditions maps %r to %r, which is no condition or synonym of "
                           "reports/literature.tsv; %r is not compared with published gaps",
                           str(label), overrides[key], str(label))
    return found


def comparison_rows(groups_table: pd.DataFrame | None, literature: pd.DataFrame, matches: dict,
                    modality: str) -> pd.DataFrame:
    """Rows for the comparison figure and table: the cohort's adjusted gaps, then the matched studies.

    When no group matches, every published row is returned (for orientation), without cohort rows
    of a condition.

    Parameters
    ----------
    groups_table : pandas.DataFrame or None
        ``groups.tsv``; its ``scope == "all"`` rows with a finite ``mean_gap`` become cohort rows.
    literature : pandas.DataFrame
        :func:`load_literature`.
    matches : dict
        :func:`match_groups`: cohort label → condition.
    modality : str
        What the cohort's gaps were predicted from (shown on the cohort rows).

    Returns
    -------
    pandas.DataFrame
        ``label, gap, ci_low, ci_high, source ('cohort' | 'published'), modality, citation, doi``.
    """
    rows = []
    if groups_table is not None and len(groups_table):
        overall = groups_table[groups_table["scope"] == "all"]
        for _, r in overall.iterrows():
            if pd.isna(r.get("mean_gap")):
                continue
            condition = matches.get(str(r["group"]))
            same = condition and normalize_label(condition) == normalize_label(r["group"])
            label = f"this cohort: {r['group']}" + (f" ({condition})" if condition and not same else "")
            rows.append({"label": label, "gap": r["mean_gap"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                         "source": "cohort", "modality": modality, "citation": "this report", "doi": ""})
    wanted = set(matches.values())
    lit = literature[literature["condition"].isin(wanted)] if wanted else literature
    for _, r in lit.iterrows():
        rows.append({"label": f"{r['condition']}: {r['citation'].split(',')[0]}", "gap": r["gap_years"],
                     "ci_low": r["ci_low"], "ci_high": r["ci_high"], "source": "published",
                     "modality": r["modality"], "citation": r["citation"],
                     "doi": r["doi"] if isinstance(r["doi"], str) else ""})
    return pd.DataFrame(rows, columns=["label", "gap", "ci_low", "ci_high", "source", "modality",
                                       "citation", "doi"])
