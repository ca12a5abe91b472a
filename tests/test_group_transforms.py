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
