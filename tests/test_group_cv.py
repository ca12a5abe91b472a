"""Cross-validation at the group level: every control once out of fold, patients never trained on, no leakage."""

from __future__ import annotations

import numpy as np
import pytest

from brainage.exceptions import GroupLevelError
from brainage.group.cv import cross_validate
from brainage.group.folds import NOT_IN_FOLDS, assign_folds
from tests._group import make_cohort


def group_cfg(**overrides):
    from brainage.config import GroupConfig

    base = {"models": ["ridge"], "primary_model": "ridge", "cv": {"n_splits": 4, "inner_splits": 3}}
    base.update(overrides)
    return GroupConfig(**base)


@pytest.fixture(scope="module")
def cohort():
    return make_cohort(90, seed=1)


@pytest.fixture
def spy(monkeypatch):
    """Record the rows of every fit: (X dict of arrays, y)."""
    from brainage.estimators import registry

    calls = []
    real = registry.make_estimator

    def make(*args, **kwargs):
        est = real(*args, **kwargs)
        fit = est.fit

        def recording_fit(X, y, **kw):
            calls.append(({m: np.asarray(v).copy() for m, v in X.items()}, np.asarray(y).copy()))
            return fit(X, y, **kw)

        est.fit = recording_fit
        return est

    monkeypatch.setattr(registry, "make_estimator", make)
    return calls


def _rows_of(cohort, X):
    """Participant keys of the rows of a fitted X (matched on the anat features)."""
    table = cohort.inputs["anat"].features.astype(np.float32)
    lookup = {tuple(r): k for k, r in zip(table.index, table.to_numpy())}
    return [lookup[tuple(r)] for r in X["anat"].astype(np.float32)]


def test_each_control_once_out_of_fold_and_patients_never_fitted(cohort, spy):
    res = cross_validate(cohort, group_cfg())
    pred = res.runs["ridge"].predictions
    parts = cohort.participants
    controls = parts.index[parts["is_control"]]
    patients = parts.index[~parts["is_control"]]
    assert set(pred.index) == set(parts.index)
    assert (pred.loc[controls, "n_models"] == 1).all()
    assert (pred.loc[patients, "n_models"] == 4).all()
    assert (pred.loc[patients, "fold"] == NOT_IN_FOLDS).all()
    assert (pred.loc[controls, "fold"].to_numpy() == res.folds.loc[controls].to_numpy()).all()
    # 4 outer fits + 4 x 3 inner fits; no patient in any of them, and no fit ever contains
    # a control of the fold whose model predicts it
    assert len(spy) == 4 + 4 * 3
    fitted = [set(_rows_of(cohort, X)) for X, _ in spy]
    assert all(not (rows & set(patients)) for rows in fitted)
    outer = [rows for rows in fitted if len(rows) > 40]  # ~47 controls; inner fits have ~31
    assert len(outer) == 4
    for k in range(4):
        held = set(res.folds.index[res.folds == k])
        assert sum(1 for rows in outer if not (rows & held)) >= 1
    for rows in outer:
        held_out = set(controls) - rows
        assert len({int(res.folds[h]) for h in held_out}) == 1  # exactly one fold left out


SELECT_PCA = {"anat": {"kind": "regional", "atlas": "HarvardOxford", "select": 8, "pca": 4},
              "func": {"kind": "connectivity", "atlas": "HarvardOxford", "select": 5}}


@pytest.mark.parametrize("inputs", [None, SELECT_PCA], ids=["raw", "select+pca"])
def test_held_out_ages_never_reach_a_fit(cohort, inputs):
    """Canary: scrambling the ages of one fold's controls and of every patient changes no
    uncorrected prediction of theirs (no fit saw those ages) and no fitted correction; also
    with the supervised feature selection and PCA fitted in each fold."""
    cfg = group_cfg(**({"inputs": inputs} if inputs else {}))
    parts = cohort.participants
    folds = assign_folds(parts, train=parts["is_control"].to_numpy(), n_splits=4, seed=0)
    a = cross_validate(cohort, cfg, folds=folds).runs["ridge"]
    scrambled = parts.copy()
    target = (folds == 0) | (folds == NOT_IN_FOLDS)
    rng = np.random.default_rng(5)
    scrambled.loc[target, "age"] = rng.uniform(20, 80, int(target.sum()))
    other = type(cohort)(participants=scrambled, inputs=cohort.inputs, exclusions=cohort.exclusions)
    b = cross_validate(other, cfg, folds=folds).runs["ridge"]
    keys = parts.index[folds == 0]
    np.testing.assert_array_equal(a.predictions.loc[keys, "predicted_age"], b.predictions.loc[keys, "predicted_age"])
    assert a.folds[0]["bias_correction"] == b.folds[0]["bias_correction"]
    # the other folds trained on the scrambled ages, so their predictions do change: the
    # comparison above can fail
    changed = parts.index[folds == 1]
    assert not np.allclose(a.predictions.loc[changed, "predicted_age"], b.predictions.loc[changed, "predicted_age"])


def test_patient_gap_is_recovered_by_the_corrected_gap(cohort):
    res = cross_validate(cohort, group_cfg(bias_correction={"method": "cole"}))
    pred = res.runs["ridge"].predictions
    parts = cohort.participants
    gap = pred["predicted_age_corrected"] - parts.loc[pred.index, "age"]
    diff = gap[~parts["is_control"]].mean() - gap[parts["is_control"]].mean()
    assert 2.0 < diff < 8.0   # true 5 years; n = 90


def test_too_few_controls_is_refused():
    small = make_cohort(14, seed=2)
    with pytest.raises(GroupLevelError, match="too few for 4 outer × 3 inner folds"):
        cross_validate(small, group_cfg())


def test_precomputed_folds_must_leave_patients_out(cohort):
    bad = np.zeros(len(cohort.participants), dtype=int)
    with pytest.raises(GroupLevelError, match="-1 for everyone else"):
        cross_validate(cohort, group_cfg(), folds=bad)


def test_validation_split_spans_ages_and_is_empty_when_tiny():
    from brainage.group.cv import validation_split

    y = np.linspace(20, 80, 200)
    val = validation_split(y, seed=0)
    assert len(val) == 30 and len(set(val)) == 30
    assert y[val].min() < 23 and y[val].max() > 77          # spans the age range
    assert (validation_split(y, seed=0) == val).all()
    assert len(validation_split(np.linspace(20, 80, 40), seed=0)) == 0   # 6 would be too few


def test_groups_table_leaves_out_a_confounded_site():
    import pandas as pd

    from brainage.group.summary import groups_table

    rng = np.random.default_rng(0)
    n = 60
    group = np.where(np.arange(n) < 20, "patient", "control")
    table = pd.DataFrame({
        "gap_corrected": rng.normal(0, 3, n) + 4.0 * (group == "patient"),
        "group": group, "age": rng.uniform(20, 80, n), "sex": rng.choice(["F", "M"], n),
        "site": np.where(group == "patient", "siteP", rng.choice(["siteA", "siteB"], n)),
        "is_control": group == "control",
    })
    out = groups_table(table, reference=["control"])
    overall = out[out["scope"] == "all"].iloc[0]
    assert overall["group"] == "patient" and np.isfinite(overall["mean_gap"])
    assert "site left out: confounded" in overall["note"]
    assert overall["n"] == 20
    assert "C(site)" not in overall["model"]
