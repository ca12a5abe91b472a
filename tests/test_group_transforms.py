"""Feature transforms of one fit (ComBat, PCA): fitted on training rows only, stored in the bundle."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from brainage.config import GroupConfig
from brainage.group.transforms import FeatureTransforms, PCAReduction

from ._group import make_cohort


def _cfg(**inputs_extra):
    inputs = {"anat": {"kind": "regional", "atlas": "HarvardOxford"},
              "func": {"kind": "connectivity", "atlas": "HarvardOxford", "pca": 3}}
    for m, extra in inputs_extra.items():
        inputs[m] |= extra
    return GroupConfig(inputs=inputs, models=["ridge"], primary_model="ridge")


def test_pca_matches_scikit_learn_on_the_training_rows():
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 9)) @ rng.normal(size=(9, 9))
    red = PCAReduction.fit(X[:30], 4)
    Z = StandardScaler().fit(X[:30])
    ref = PCA(4, svd_solver="full").fit(Z.transform(X[:30]))
    np.testing.assert_allclose(np.abs(red.transform(X[30:])), np.abs(ref.transform(Z.transform(X[30:]))),
                               atol=1e-10)
    assert red.summary()["n_components"] == 4 and 0 < red.summary()["explained_variance"] <= 1


def test_pca_keeps_fewer_components_than_training_rows():
    X = np.random.default_rng(1).normal(size=(5, 20))
    red = PCAReduction.fit(X, 10)
    assert red.components.shape == (4, 20) and red.summary()["n_requested"] == 10


def test_transforms_use_only_the_training_participants():
    cohort = make_cohort(60, seed=3)
    cfg = _cfg()
    keys = list(cohort.participants.index)
    train, test = keys[:40], keys[40:]
    tf = FeatureTransforms.fit(cohort, train, cfg, ["anat", "func"])
    before = tf.inputs(cohort, train, ["anat", "func"])["func"]
    # Scrambling the held-out participants' features changes nothing fitted on the training rows.
    func = cohort.inputs["func"].features
    func.loc[test] = np.random.default_rng(0).normal(50, 10, size=(len(test), func.shape[1]))
    tf2 = FeatureTransforms.fit(cohort, train, cfg, ["anat", "func"])
    np.testing.assert_array_equal(tf2.inputs(cohort, train, ["anat", "func"])["func"], before)
    assert before.shape == (40, 3)
    assert tf.inputs(cohort, train, ["anat"])["anat"].shape == (40, 12)  # anat not reduced


def test_combat_then_pca_round_trip_through_the_bundle_arrays():
    cohort = make_cohort(60, seed=4, site_shift=2.0)
    cfg = _cfg(anat={"pca": 2})
    cfg = cfg.model_copy(update={"combat": cfg.combat.model_copy(update={"enabled": True})})
    keys = list(cohort.participants.index)
    tf = FeatureTransforms.fit(cohort, keys[:45], cfg, ["anat", "func"])
    assert sorted(tf.combat) == ["anat", "func"] and sorted(tf.pca) == ["anat", "func"]
    meta, arrays = tf.to_bundle()
    back = FeatureTransforms.from_bundle(meta, arrays)
    for m in ("anat", "func"):
        np.testing.assert_allclose(back.inputs(cohort, keys[45:], [m])[m], tf.inputs(cohort, keys[45:], [m])[m],
                                   rtol=1e-6)
    arrays.pop("pca.func.components")
    with pytest.raises(Exception, match="pca.func.components"):
        FeatureTransforms.from_bundle(meta, arrays)


def test_pca_is_refused_on_maps_and_below_one():
    with pytest.raises(ValidationError, match="pca"):
        GroupConfig(inputs={"anat": {"kind": "maps", "maps": ["GM"], "resolution": 2.0, "pca": 5},
                            "func": {"kind": "connectivity", "atlas": "HarvardOxford"}})
    with pytest.raises(ValidationError, match="pca"):
        GroupConfig(inputs={"anat": {"kind": "regional", "atlas": "HarvardOxford", "pca": 0},
                            "func": {"kind": "connectivity", "atlas": "HarvardOxford"}})


def test_selection_keeps_the_age_features_of_the_training_rows_only():
    from brainage.group.transforms import select_features

    rng = np.random.default_rng(5)
    age = rng.uniform(20, 80, 60)
    X = rng.normal(size=(60, 30))
    X[:, [4, 17, 22]] += age[:, None] / 10
    assert select_features(X, age, 3).tolist() == [4, 17, 22]
    X[:, 9] = 1.0  # constant: never selected
    assert 9 not in select_features(X, age, 29)

    cohort = make_cohort(60, seed=6)
    cfg = _cfg(func={"select": 4, "pca": None})
    keys = list(cohort.participants.index)
    tf = FeatureTransforms.fit(cohort, keys[:40], cfg, ["anat", "func"])
    assert tf.inputs(cohort, keys[40:], ["func"])["func"].shape == (20, 4)
    chosen = tf.selected["func"].copy()
    # The held-out participants' ages do not move the selection.
    cohort.participants.loc[keys[40:], "age"] = 20.0
    again = FeatureTransforms.fit(cohort, keys[:40], cfg, ["anat", "func"])
    np.testing.assert_array_equal(again.selected["func"], chosen)
    meta, arrays = tf.to_bundle()
    back = FeatureTransforms.from_bundle(meta, arrays)
    np.testing.assert_array_equal(back.selected["func"], chosen)
    arrays.pop("selected.func")
    with pytest.raises(Exception, match="selected.func"):
        FeatureTransforms.from_bundle(meta, arrays)
