"""Region attributions: ablation of raw features, aggregation to regions/lobes/networks, out of fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainage.atlases import region_table
from brainage.cohort.data import CohortData, ModalityInput
from brainage.group.transforms import FeatureTransforms
from brainage.interpret.regions import (
    ablation_attributions,
    ablation_units,
    participant_regions,
    region_summary,
)
from tests._group import assert_out_of_fold, make_cohort

ATLAS = "HarvardOxford"
#: Left/right frontal pole (frontal), left insula (insula), left hippocampus (limbic), left caudate.
INDICES = (1, 2, 3, 103, 99)


def _cohort(n=40, *, seed=0, signal=None):
    """Regional (tissue + HarvardOxford volumes) and connectivity inputs named as the readers name them.

    ``signal``: the one regional feature that follows age (the others are noise).
    """
    rng = np.random.default_rng(seed)
    base = make_cohort(n, seed=seed)
    parts = base.participants
    age = parts["age"].to_numpy()
    names = ["gm_ml", "wm_ml", "csf_ml", "tiv_ml", "ventricles_ml", *(f"{ATLAS}_{i}" for i in INDICES)]
    anat = rng.normal(0, 1, (n, len(names)))
    if signal is not None:
        anat[:, names.index(signal)] = (age - 50) / 17 + rng.normal(0, 0.1, n)
    regions = region_table(ATLAS).set_index("index").loc[list(INDICES), "name"].tolist()
    edges = [f"{regions[i]}--{regions[j]}" for i in range(len(regions)) for j in range(i + 1, len(regions))]
    func = rng.normal(0, 1, (n, len(edges)))

    def tab(name, kind, values, cols):
        frame = pd.DataFrame(values, index=parts.index, columns=cols)
        return ModalityInput(name, kind, frame, None, {"kind": kind, "atlas": ATLAS, "feature_names": cols})

    inputs = {"anat": tab("anat", "regional", anat, names), "func": tab("func", "connectivity", func, edges)}
    return CohortData(parts, inputs, base.exclusions, ("control",)), regions, edges


class OneFeature:
    """A fitted 'model' that reads one column of one modality and ignores everything else."""

    def __init__(self, modality, column, gain=3.0):
        self.modality, self.column, self.gain = modality, column, gain

    def predict(self, X):
        return 40.0 + self.gain * np.asarray(X[self.modality], dtype=float)[:, self.column]


def _explain(cohort, model):
    keys = list(cohort.participants.index)
    controls = [k for k in keys if cohort.participants.loc[k, "is_control"]]
    return ablation_attributions(model, FeatureTransforms(), cohort, controls, keys, ["anat", "func"])


def _rows(attr, modality, level):
    units = attr.units
    return units.index[(units["modality"] == modality) & (units["level"] == level)]


def test_a_model_using_one_region_puts_it_first():
    cohort, _, _ = _cohort()
    column = list(cohort.inputs["anat"].features.columns).index(f"{ATLAS}_103")
    attr = _explain(cohort, OneFeature("anat", column))
    units = attr.units
    hippo = units.index[(units["region"] == "Left_Hippocampus") & (units["level"] == "region")][0]
    others = [u for u in _rows(attr, "anat", "region") if u != hippo]
    # exact: the prediction moves by gain × (value − control mean) when the region is ablated
    feats = cohort.inputs["anat"].features
    mean = feats.loc[cohort.participants["is_control"], f"{ATLAS}_103"].mean()
    np.testing.assert_allclose(attr.values[hippo], 3.0 * (feats[f"{ATLAS}_103"] - mean), atol=1e-4)
    assert np.abs(attr.values[others].to_numpy()).max() == 0
    assert np.abs(attr.values[list(_rows(attr, "func", "region"))].to_numpy()).max() == 0
    table = region_summary(attr, cohort.participants)
    anat = table[(table["modality"] == "anat")]
    first = anat[anat["rank"] == 1].set_index("level")
    assert first.loc["region", "region"] == "Left_Hippocampus"
    assert first.loc["region", "index"] == 103 and first.loc["region", "lobe"] == "limbic"
    assert first.loc["lobe", "region"] == "limbic"  # the group ablation of its lobe
    row = anat[(anat["level"] == "region") & (anat["region"] == "Left_Hippocampus")].iloc[0]
    assert row["ci_low"] < row["attribution"] < row["ci_high"]
    assert row["n"] == int(cohort.participants["is_control"].sum())


def test_tissue_totals_are_regions_of_their_own():
    cohort, _, _ = _cohort()
    column = list(cohort.inputs["anat"].features.columns).index("ventricles_ml")
    attr = _explain(cohort, OneFeature("anat", column))
    table = region_summary(attr, cohort.participants)
    anat = table[table["modality"] == "anat"]
    assert set(anat.loc[anat["level"] == "region", "region"]) >= {
        "Total_GM", "Total_WM", "Total_CSF", "TIV", "Lateral_Ventricles", "Left_Caudate"}
    for level in ("region", "lobe"):
        first = anat[(anat["level"] == level) & (anat["rank"] == 1)].iloc[0]
        assert first["region"] == "Lateral_Ventricles" and pd.isna(first["index"])
    # HarvardOxford gives no region a network: no network level
    assert "network" not in set(anat["level"])


def test_connectivity_edges_aggregate_to_both_regions_they_join():
    cohort, regions, edges = _cohort()
    edge = f"{regions[0]}--{regions[2]}"  # Left_Frontal_Pole -- Left_Insular_Cortex
    attr = _explain(cohort, OneFeature("func", edges.index(edge)))
    units = attr.units
    func = units[(units["modality"] == "func") & (units["level"] == "region")]
    assert list(func["region"]) == regions and (func["n_features"] == len(regions) - 1).all()
    moved = func.index[np.abs(attr.values[func.index]).max().to_numpy() > 0]
    assert list(func.loc[moved, "region"]) == [regions[0], regions[2]]
    np.testing.assert_allclose(attr.values[moved[0]], attr.values[moved[1]])
    lobes = units[(units["modality"] == "func") & (units["level"] == "lobe")]
    moved_lobes = lobes.index[np.abs(attr.values[lobes.index]).max().to_numpy() > 0]
    assert set(lobes.loc[moved_lobes, "region"]) == {"frontal", "insula"}
    # the frontal lobe's unit holds every edge touching a frontal region, once
    frontal = lobes.index[lobes["region"] == "frontal"][0]
    n = len(regions)
    assert lobes.loc[frontal, "n_features"] == (n - 1) + (n - 2)


def test_ablation_units_without_a_region_table():
    frame = pd.DataFrame(np.zeros((1, 3)), columns=["a", "b", "c"])
    units = ablation_units(ModalityInput("anat", "regional", frame, None, {"atlas": "NotInRegistry"}))
    assert list(units.table["region"]) == ["a", "b", "c"] and set(units.table["level"]) == {"region"}


# --------------------------------------------------------------------------- out of fold
def _cfg(**kw):
    from brainage.config import GroupConfig

    base = {"inputs": {"anat": {"kind": "regional", "atlas": ATLAS},
                       "func": {"kind": "connectivity", "atlas": ATLAS}},
            "models": ["ridge"], "primary_model": "ridge",
            "cv": {"n_splits": 3, "inner_splits": 3}, "bias_correction": {"method": "none"}}
    base.update(kw)
    return GroupConfig(**base)


@pytest.fixture(scope="module")
def cv_run():
    from brainage.group.cv import cross_validate

    cohort, _, _ = _cohort(60, seed=3, signal=f"{ATLAS}_103")
    cfg = _cfg()
    return cohort, cfg, cross_validate(cohort, cfg)


def _direct(cohort, cfg, train, target, k):
    """Attributions of ``target`` by a ridge fitted directly on ``train`` (the fold's recipe)."""
    from brainage.estimators.registry import make_estimator

    tf = FeatureTransforms.fit(cohort, train, cfg, ["anat", "func"], seed=cfg.cv.seed + 1000 * (k + 1))
    est = make_estimator("ridge", modalities=["anat", "func"], params={}, random_state=0)
    est.fit(tf.inputs(cohort, train, ["anat", "func"]), cohort.participants.loc[train, "age"].to_numpy(float))
    return ablation_attributions(est, tf, cohort, train, target, ["anat", "func"]).values


def test_each_participant_is_explained_by_models_that_did_not_train_on_it(cv_run):
    cohort, cfg, res = cv_run
    attr = res.runs["ridge"].region_attributions
    assert_out_of_fold(attr, cohort.participants, res.folds,
                       lambda train, target, k: _direct(cohort, cfg, train, target, k))


def test_cross_validated_attributions_find_the_one_ageing_region(cv_run):
    cohort, _, res = cv_run
    table = region_summary(res.runs["ridge"].region_attributions, cohort.participants)
    first = table[(table["modality"] == "anat") & (table["rank"] == 1)].set_index("level")["region"]
    assert first["region"] == "Left_Hippocampus" and first["lobe"] == "limbic"
    long = participant_regions(res.runs["ridge"].region_attributions, cohort.participants)
    n_regions = int(((table["level"] == "region")).sum())
    assert len(long) == len(cohort.participants) * n_regions
    assert list(long.columns) == ["participant_id", "session", "group", "modality", "atlas", "region",
                                  "attribution"]


def test_attributions_can_be_switched_off():
    from brainage.group.cv import cross_validate

    cohort, _, _ = _cohort(30, seed=4)
    res = cross_validate(cohort, _cfg(attributions=False))
    assert res.runs["ridge"].region_attributions is None


@pytest.mark.parametrize("name", ["pidreg", "late_fusion"])
def test_predicting_from_latents_equals_predicting_from_inputs(name):
    from brainage.estimators.registry import make_estimator

    cohort, _, _ = _cohort(30, seed=5, signal=f"{ATLAS}_103")
    keys = list(cohort.participants.index)
    X = FeatureTransforms().inputs(cohort, keys, ["anat", "func"])
    est = make_estimator(name, modalities=["anat", "func"], random_state=0,
                         params={"max_epochs": 5, "latent_dim": 3, "hidden": [8]})
    est.fit(X, cohort.participants["age"].to_numpy(float))
    fixed = est.transform(X, modalities=["func"])
    np.testing.assert_allclose(est.predict_from_latents({"anat": X["anat"]}, fixed), est.predict(X),
                               rtol=1e-5, atol=1e-4)


def test_ablation_encodes_the_fixed_modality_once_with_the_same_result():
    from brainage.estimators.registry import make_estimator

    cohort, _, _ = _cohort(30, seed=6, signal=f"{ATLAS}_103")
    keys = list(cohort.participants.index)
    controls = [k for k in keys if cohort.participants.loc[k, "is_control"]]
    X = FeatureTransforms().inputs(cohort, keys, ["anat", "func"])
    est = make_estimator("pidreg", modalities=["anat", "func"], random_state=0,
                         params={"max_epochs": 5, "latent_dim": 3, "hidden": [8]})
    est.fit(X, cohort.participants["age"].to_numpy(float))
    calls = []

    class Counted:
        """The estimator, counting the rows each of its encoders sees."""

        takes_latents = True

        def __getattr__(self, attr):
            return getattr(est, attr)

        def transform(self, X, modalities=None):
            calls.append(("transform", len(X[modalities[0]])))
            return est.transform(X, modalities)

    fast = ablation_attributions(Counted(), FeatureTransforms(), cohort, controls, keys, ["anat", "func"])

    class Plain:
        takes_latents = False

        def predict(self, X):
            return est.predict(X)

    slow = ablation_attributions(Plain(), FeatureTransforms(), cohort, controls, keys, ["anat", "func"])
    np.testing.assert_allclose(fast.values.to_numpy(), slow.values.to_numpy(), atol=1e-4)
    # each modality's fixed partner is encoded once for the 30 targets, not once per ablated unit
    assert calls == [("transform", 30), ("transform", 30)]
    with pytest.raises(Exception, match="one encoder over all"):
        early = make_estimator("early_fusion", modalities=["anat", "func"], random_state=0,
                               params={"max_epochs": 2, "latent_dim": 3, "hidden": [8]})
        early.fit(X, cohort.participants["age"].to_numpy(float))
        early.predict_from_latents({"anat": X["anat"]}, {"func": np.zeros((30, 3))})
