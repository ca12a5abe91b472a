"""Cross-validation folds: by participant, age-stratified, sessions together, leave-site-out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainage.exceptions import GroupLevelError
from brainage.group.folds import NOT_IN_FOLDS, assign_folds


def cohort(rng, n=100, *, sessions=1, n_sites=3, patient_fraction=0.3):
    ids = [f"sub-{i:03d}" for i in range(n)]
    base = pd.DataFrame(
        {
            "participant_id": ids,
            "age": rng.uniform(20, 80, n).round(1),
            "site": rng.choice([f"site{k}" for k in range(n_sites)], n),
            "group": np.where(rng.random(n) < patient_fraction, "patient", "control"),
        }
    )
    if sessions == 1:
        return base
    rows = [base.assign(session=f"{s + 1:02d}") for s in range(sessions)]
    return pd.concat(rows, ignore_index=True).sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_each_control_in_exactly_one_fold_and_patients_in_none(rng):
    t = cohort(rng, 120)
    controls = (t["group"] == "control").to_numpy()
    folds = assign_folds(t, train=controls, n_splits=5, seed=3)
    assert set(folds[controls]) == {0, 1, 2, 3, 4}
    assert (folds[~controls] == NOT_IN_FOLDS).all()
    sizes = np.bincount(folds[controls])
    assert sizes.max() - sizes.min() <= 1


def test_sessions_of_a_participant_stay_together(rng):
    t = cohort(rng, 60, sessions=3)
    folds = assign_folds(t, n_splits=4, seed=0)
    per_participant = pd.Series(folds).groupby(t["participant_id"]).nunique()
    assert (per_participant == 1).all()
    assert len(set(folds)) == 4


def test_folds_are_stratified_by_age(rng):
    t = cohort(rng, 200, patient_fraction=0.0)
    folds = assign_folds(t, n_splits=5, seed=1)
    # 200 participants -> 10 age bins of 20; each fold holds 4 of each bin
    bins = pd.qcut(t["age"].rank(method="first"), 10, labels=False)
    counts = pd.crosstab(bins, folds)
    assert (counts.to_numpy() == 4).all()
    spread = t.groupby(folds)["age"].mean()
    assert spread.max() - spread.min() < 3.0


def test_seeded_and_reproducible(rng):
    t = cohort(rng, 80)
    a = assign_folds(t, seed=7)
    assert (a == assign_folds(t, seed=7)).all()
    assert (a != assign_folds(t, seed=8)).any()
    # the row order of the table does not matter, only the seed
    shuffled = t.sample(frac=1.0, random_state=1)
    b = pd.Series(assign_folds(shuffled, seed=7), index=shuffled["participant_id"])
    assert (b.loc[t["participant_id"]].to_numpy() == a).all()


def test_leave_site_out_gives_one_fold_per_site(rng):
    t = cohort(rng, 90, n_sites=3)
    controls = (t["group"] == "control").to_numpy()
    folds = assign_folds(t, train=controls, scheme="leave_site_out")
    expected = t["site"].map({"site0": 0, "site1": 1, "site2": 2}).to_numpy()
    assert (folds[controls] == expected[controls]).all()
    assert (folds[~controls] == NOT_IN_FOLDS).all()


@pytest.mark.parametrize(
    ("edit", "kwargs", "match"),
    [
        (lambda t: t.drop(columns="age"), {}, "missing column"),
        (lambda t: t.assign(age=np.r_[np.nan, t["age"].to_numpy()[1:]]), {}, "no numeric age"),
        (lambda t: t.iloc[:3], {}, "need at least 5 trained participants, found 3"),
        (lambda t: t, {"n_splits": 1}, "at least 2"),
        (lambda t: t, {"scheme": "bootstrap"}, "choose one of kfold, leave_site_out"),
        (lambda t: t.assign(site="site0"), {"scheme": "leave_site_out"}, "at least 2 sites"),
        (lambda t: t, {"train": [True]}, "one per row"),
    ],
    ids=["no-age-column", "missing-age", "too-few", "one-split", "unknown-scheme", "one-site", "train-length"],
)
def test_bad_input_is_refused(rng, edit, kwargs, match):
    with pytest.raises(GroupLevelError, match=match):
        assign_folds(edit(cohort(rng, 40)), **kwargs)


def test_a_participant_whose_sessions_disagree_is_named(rng):
    t = cohort(rng, 20, sessions=2)
    first = t.index[t["participant_id"] == "sub-004"][0]
    t.loc[first, "age"] += 10
    with pytest.raises(GroupLevelError, match="sub-004 have different 'age' values"):
        assign_folds(t, n_splits=2)
