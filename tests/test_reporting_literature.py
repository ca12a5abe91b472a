"""The shipped table of published brain-age gaps, and matching a cohort's groups to it."""

from __future__ import annotations

import doctest
import logging
import re

import numpy as np
import pandas as pd
import pytest

from brainage.reporting import literature as L
from brainage.reporting.literature import comparison_rows, load_literature, match_groups, normalize_label
from brainage.resources import data_dir

DOI = re.compile(r"^10\.\d{4,9}/\S+$")


@pytest.fixture(scope="module")
def lit():
    return load_literature()


# --------------------------------------------------------------------------- the table
def test_the_table_ships_with_the_package():
    path = data_dir("reports") / "literature.tsv"
    assert path.is_file()
    header = path.read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert header == ["condition", "synonyms", "modality", "gap_years", "ci_low", "ci_high", "se", "effect",
                      "n_patients", "n_controls", "citation", "doi", "note"]


def test_every_row_has_a_condition_modality_finite_gap_and_citation(lit):
    assert len(lit) >= 10
    for col in ("condition", "modality", "citation"):
        text = lit[col].astype(str).str.strip()
        assert lit[col].notna().all() and (text != "").all() and (text.str.lower() != "nan").all(), col
    assert np.isfinite(lit["gap_years"].to_numpy(float)).all()
    # a citation names its authors and year
    assert lit["citation"].str.match(r"^[A-Z][\w' -]+ (et al\. |& [A-Z]\w+ )?\d{4}").all()


def test_intervals_are_consistent_where_the_source_gives_one(lit):
    ci_low, ci_high, se, gap = (lit[c].to_numpy(float) for c in ("ci_low", "ci_high", "se", "gap_years"))
    has_ci = np.isfinite(ci_low)
    assert (np.isfinite(ci_high) == has_ci).all()  # both bounds or neither
    assert (ci_low[has_ci] < gap[has_ci]).all() and (gap[has_ci] < ci_high[has_ci]).all()
    assert (se[np.isfinite(se)] > 0).all()
    raw = pd.read_csv(data_dir("reports") / "literature.tsv", sep="\t", na_values=["n/a"], keep_default_na=False)
    from_se = raw["ci_low"].isna() & raw["se"].notna()
    np.testing.assert_allclose(lit.loc[from_se, "ci_low"], raw.loc[from_se, "gap_years"] - 1.96 * raw.loc[from_se, "se"])
    np.testing.assert_allclose(lit.loc[from_se, "ci_high"], raw.loc[from_se, "gap_years"] + 1.96 * raw.loc[from_se, "se"])
    assert set(lit.loc[from_se, "interval"]) == {"± 1.96 SE"}
    assert set(lit.loc[raw["ci_low"].notna(), "interval"]) == {"95 % CI"}
    # rows whose source (docs' field notes) gives no CI or SE are drawn as a point, never invented
    none = ~has_ci
    assert set(lit.loc[none, "interval"]) == {""}
    assert raw.loc[none, ["ci_low", "ci_high", "se"]].isna().all().all()
    assert none.sum() < len(lit) / 2


def test_dois_look_like_dois_or_are_na(lit):
    raw = pd.read_csv(data_dir("reports") / "literature.tsv", sep="\t", dtype=str, keep_default_na=False)
    for doi in raw["doi"]:
        assert doi == "n/a" or DOI.match(doi), doi
    assert lit["doi"].dropna().map(lambda d: bool(DOI.match(d))).all()
    assert lit["doi"].notna().sum() >= len(lit) / 2


def test_synonyms_point_to_one_condition(lit):
    owner = {}
    for condition, synonyms in zip(lit["condition"], lit["synonyms"].fillna("")):
        for name in [condition, *synonyms.split(";")]:
            key = normalize_label(name)
            assert owner.setdefault(key, condition) == condition, f"{name!r} names two conditions"


# --------------------------------------------------------------------------- labels
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Schizophrenia", "schizophrenia"),
        ("Schizophrenics", "schizophrenic"),
        ("SCZ", "scz"),
        ("  Major-Depressive   Disorder ", "major depressive disorder"),
        ("Alzheimer's disease", "alzheimer disease"),
        ("Alzheimer’s disease", "alzheimer disease"),
        ("HIV+", "hiv"),
        ("patients", "patient"),
        ("MS", "ms"),  # short words keep their s
        ("illness", "illness"),  # a double s is not a plural
        ("Bipolar II", "bipolar ii"),
        (3, "3"),
    ],
    ids=lambda v: str(v),
)
def test_normalize_label(text, expected):
    assert normalize_label(text) == expected


def test_match_groups_by_name_and_synonym(lit):
    found = match_groups(["Schizophrenia", "SCZ", "schizophrenics", "MDD", "Depression", "bipolar"], lit)
    assert found == {"Schizophrenia": "schizophrenia", "SCZ": "schizophrenia", "schizophrenics": "schizophrenia",
                     "MDD": "major depressive disorder", "Depression": "major depressive disorder",
                     "bipolar": "bipolar disorder"}


def test_unknown_labels_are_left_out(lit):
    found = match_groups(["patients with MDD", "patient", "long covid", "", np.nan], lit)
    assert found == {}


def test_overrides_map_a_label_to_a_condition(lit, caplog):
    assert match_groups(["patient"], lit, overrides={"patient": "schizophrenia"}) == {"patient": "schizophrenia"}
    # the override's key is matched like a label; its value may be a synonym
    assert match_groups(["Patients"], lit, overrides={"patient": "SCZ"}) == {"Patients": "schizophrenia"}
    with caplog.at_level(logging.WARNING, logger="brainage.reporting.literature"):
        assert match_groups(["patient"], lit, overrides={"patient": "long covid"}) == {}
    assert "group.conditions maps 'patient' to 'long covid'" in caplog.text


# --------------------------------------------------------------------------- comparison rows
def _groups_table():
    return pd.DataFrame({
        "scope": ["all", "site A", "pooled", "all", "all"],
        "group": ["SCZ", "SCZ", "SCZ", "MDD", "other"],
        "mean_gap": [4.1, 3.0, 3.9, 1.5, np.nan],
        "ci_low": [2.0, 0.5, 2.1, 0.2, np.nan],
        "ci_high": [6.2, 5.5, 5.7, 2.8, np.nan],
    })


def test_comparison_rows_put_the_cohort_first_then_only_the_matched_studies(lit):
    matches = match_groups(["SCZ"], lit)
    rows = comparison_rows(_groups_table(), lit, matches, "anat")
    assert list(rows.columns) == ["label", "gap", "ci_low", "ci_high", "source", "modality", "citation", "doi"]
    cohort = rows[rows["source"] == "cohort"]
    assert list(rows["source"]) == ["cohort"] * 2 + ["published"] * (len(rows) - 2)
    # the 'all' scope only, groups without an estimate left out
    assert list(cohort["label"]) == ["this cohort: SCZ (schizophrenia)", "this cohort: MDD"]
    assert list(cohort["gap"]) == [4.1, 1.5] and set(cohort["modality"]) == {"anat"}
    published = rows[rows["source"] == "published"]
    n_scz = int((lit["condition"] == "schizophrenia").sum())
    assert len(published) == n_scz >= 2
    assert published["label"].str.startswith("schizophrenia: ").all()
    assert "schizophrenia: Constantinides et al. 2023" in set(published["label"])
    assert published["doi"].isin([*lit["doi"].dropna().tolist(), ""]).all()


def test_comparison_rows_without_a_match_show_every_published_row(lit):
    rows = comparison_rows(_groups_table(), lit, {}, "anat")
    assert (rows["source"] == "published").sum() == len(lit)
    assert list(rows.loc[rows["source"] == "cohort", "label"]) == ["this cohort: SCZ", "this cohort: MDD"]
    only_published = comparison_rows(None, lit, {}, "anat")
    assert len(only_published) == len(lit) and (only_published["source"] == "published").all()


def test_a_group_named_like_its_condition_is_not_repeated(lit):
    table = pd.DataFrame({"scope": ["all"], "group": ["Schizophrenia"], "mean_gap": [3.0], "ci_low": [1.0],
                          "ci_high": [5.0]})
    rows = comparison_rows(table, lit, match_groups(["Schizophrenia"], lit), "anat")
    assert rows["label"].iloc[0] == "this cohort: Schizophrenia"


def test_docstring_examples():
    result = doctest.testmod(L)
    assert result.attempted >= 2 and result.failed == 0
