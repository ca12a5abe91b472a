"""Atlas attributions of models on 3D maps: captum ablation / integrated gradients, out of fold."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage.cohort.data import CohortData, ModalityInput
from brainage.group.transforms import FeatureTransforms
from brainage.interpret.map_regions import concat_attributions, map_attributions, map_units
from brainage.interpret.regions import attribution_image, participant_regions, region_summary
from tests._group import assert_out_of_fold, make_cohort

torch = pytest.importorskip("torch")
pytest.importorskip("captum")

ATLAS = "HarvardOxford"
#: The tiny functional grid of tests/test_group_maps.py (4 mm voxels from the MNI origin).
SHAPE, AFFINE = (12, 14, 12), np.diag([4.0, 4.0, 4.0, 1.0])
#: Right_Cingulate_Gyrus_anterior_division on that grid (109 voxels), limbic lobe.
LABEL = 58


def _labels():
    from brainage.atlases import load_atlas

    img = nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE)
    return np.asarray(load_atlas(ATLAS).resample_to(img).dataobj).astype(np.int64)


def _cohort(root, n=30, *, seed=0, signal=True):
    """make_cohort's participants and tabular anat, plus a fALFF-like map whose LABEL region follows age."""
    rng = np.random.default_rng(seed)
    base = make_cohort(n, seed=seed)
    parts = base.participants
    inside = _labels() == LABEL
    paths = []
    for key, age in zip(parts.index, parts["age"]):
        vol = rng.normal(0.5, 0.05, SHAPE)
        if signal:
            vol[inside] += (age - 50) / 100
        path = root / f"{key}_falff.nii.gz"
        nib.save(nib.Nifti1Image(vol.astype(np.float32), AFFINE), path)
        paths.append(str(path))
    maps = ModalityInput("func", "maps", None, pd.DataFrame({"falff": paths}, index=parts.index),
                         {"kind": "maps", "maps": ["falff"], "resolution": 4.0})
    inputs = {"anat": base.inputs["anat"], "func": maps}
    return CohortData(parts, inputs, base.exclusions, ("control",))


class _OneRegionNet(torch.nn.Module):
    """Predicted age = 40 + 3 × mean of the map over one label (+ 0.5 × the first anat feature)."""

    def __init__(self, inside, anat_gain=0.5):
        super().__init__()
        self.register_buffer("inside", torch.from_numpy(inside))
        self.anat_gain = anat_gain

    def forward(self, x, modalities=None):
        v = x["func"][:, 0][:, self.inside].mean(1)
        return {"pred": 3.0 * v + self.anat_gain * x["anat"][:, 0]}


class OneRegion:
    """A fitted 'estimator' shaped like PIDRegressor whose network reads one atlas region."""

    def __init__(self, n_anat):
        self.model_ = _OneRegionNet(_labels() == LABEL)
        self.modalities_ = ["anat", "func"]
        self.y_mean_, self.y_scale_ = 40.0, 1.0
        self.input_mean_ = {"anat": np.zeros(n_anat, np.float32)}
        self.input_scale_ = {"anat": np.ones(n_anat, np.float32)}
        self.device = "cpu"


def _explain(cohort, model, **kw):
    keys = list(cohort.participants.index)
    controls = [k for k in keys if cohort.participants.loc[k, "is_control"]]
    return map_attributions(model, FeatureTransforms(), cohort, controls, keys, ["anat", "func"], **kw), controls


@pytest.mark.parametrize("method", ["ablation", "integrated_gradients"])
def test_a_model_using_one_region_puts_it_first(tmp_path, method):
    cohort = _cohort(tmp_path)
    model = OneRegion(cohort.inputs["anat"].features.shape[1])
    attr, controls = _explain(cohort, model, method=method)
    units = attr.units
    assert set(units["modality"]) == {"func"} and set(units["atlas"]) == {ATLAS}
    region = units.index[(units["level"] == "region") & (units["index"] == LABEL)][0]
    others = units.index[(units["level"] == "region") & (units["index"] != LABEL)]
    # exact for this linear network: 3 × (region mean of the map − region mean of the controls' mean map)
    vols = {k: nib.load(cohort.inputs["func"].paths.loc[k, "falff"]).get_fdata() for k in cohort.participants.index}
    inside = _labels() == LABEL
    baseline = np.mean([vols[k] for k in controls], axis=0)[inside].mean()
    expected = [3.0 * (vols[k][inside].mean() - baseline) for k in cohort.participants.index]
    np.testing.assert_allclose(attr.values[region], expected, atol=2e-4)
    assert np.abs(attr.values[others].to_numpy()).max() < 1e-4
    assert units.loc[region, "n_features"] == int(inside.sum())
    table = region_summary(attr, cohort.participants)
    first = table[table["rank"] == 1].set_index("level")
    assert first.loc["region", "region"] == "Right_Cingulate_Gyrus_anterior_division"
    assert first.loc["region", "index"] == LABEL
    assert first.loc["lobe", "region"] == first.loc["region", "lobe"] == "limbic"
    assert "network" not in set(table["level"])  # HarvardOxford has no networks
    long = participant_regions(attr, cohort.participants)
    assert len(long) == len(cohort.participants) * int((table["level"] == "region").sum())
    image = attribution_image(table, "func")
    assert image is not None and float(np.asarray(image.dataobj).max()) == pytest.approx(
        first.loc["region", "attribution"], rel=1e-5)


def test_map_units_without_a_region_table():
    labels = np.zeros((3, 3, 3), int)
    labels[0], labels[2] = 7, 9
    units = map_units(labels, None, modality="m", atlas="custom", n_channels=2)
    assert list(units.table["region"]) == ["label_7", "label_9"]
    assert list(units.table["n_features"]) == [18, 18] and set(units.masks) == {"region"}
    assert set(np.unique(units.masks["region"])) == {0, 1, 2}


def test_concat_keeps_both_modalities_side_by_side(tmp_path):
    from brainage.interpret.regions import ablation_attributions

    cohort = _cohort(tmp_path, n=20)
    model = OneRegion(cohort.inputs["anat"].features.shape[1])
    maps, controls = _explain(cohort, model)
    keys = list(cohort.participants.index)

    class Tabular:  # predict() of the same network, for the tabular ablation
        def predict(self, X):
            return 40.0 + 0.5 * np.asarray(X["anat"], dtype=float)[:, 0]

    tab = ablation_attributions(Tabular(), FeatureTransforms(), cohort, controls, keys, ["anat", "func"])
    both = concat_attributions([tab, None, maps])
    assert list(both.units["modality"].unique()) == ["anat", "func"]
    assert both.values.shape == (len(keys), len(tab.units) + len(maps.units))
    np.testing.assert_allclose(both.values.iloc[:, len(tab.units):].to_numpy(), maps.values.to_numpy())
    assert concat_attributions([None]) is None


# --------------------------------------------------------------------------- out of fold
CNN = {"max_epochs": 3, "latent_dim": 4, "hidden": [8], "batch_size": 8, "lr": 0.01,
       "encoders": {"func": {"channels": [4], "final_channels": 4}}}


def _cfg():
    from brainage.config import GroupConfig

    return GroupConfig(inputs={"func": {"kind": "maps", "maps": ["falff"], "resolution": 4.0}},
                       models=["unimodal_func"], primary_model="unimodal_func",
                       model_params={"unimodal_func": CNN}, cv={"n_splits": 3, "inner_splits": 2},
                       bias_correction={"method": "none"})


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    from brainage.group.cv import cross_validate

    torch.set_num_threads(1)
    full = _cohort(tmp_path_factory.mktemp("maps"), n=30, seed=2)
    cohort = CohortData(full.participants, {"func": full.inputs["func"]}, full.exclusions, ("control",))
    cfg = _cfg()
    return cohort, cfg, cross_validate(cohort, cfg, device="cpu")


def _direct(cohort, cfg, train, target, k):
    """Attributions of ``target`` by the CNN fitted directly on ``train`` (the fold's recipe)."""
    from brainage.group.cv import _fit

    seed = cfg.cv.seed + 1000 * (k + 1)
    tf = FeatureTransforms.fit(cohort, train, cfg, ["func"], seed=seed)
    est = _fit("unimodal_func", ["func"], dict(CNN), seed, "cpu", tf.inputs(cohort, train, ["func"]),
               cohort.participants.loc[train, "age"].to_numpy(float))
    return map_attributions(est, tf, cohort, train, target, ["func"]).values


def test_map_attributions_of_each_participant_come_from_models_that_did_not_train_on_it(cv_run):
    cohort, cfg, res = cv_run
    attr = res.runs["unimodal_func"].region_attributions
    assert attr is not None and set(attr.units["modality"]) == {"func"}
    assert_out_of_fold(attr, cohort.participants, res.folds,
                       lambda train, target, k: _direct(cohort, cfg, train, target, k))
    assert all("attribution_seconds" in f for f in res.runs["unimodal_func"].folds)


def test_cross_validated_map_attributions_feed_the_region_tables(cv_run):
    cohort, _, res = cv_run
    attr = res.runs["unimodal_func"].region_attributions
    table = region_summary(attr, cohort.participants)
    assert set(table["level"]) == {"region", "lobe"} and table["attribution"].notna().all()
    assert (table["n"] == int(cohort.participants["is_control"].sum())).all()
    assert attribution_image(table, "func") is not None


def test_the_input_atlas_key_chooses_the_regions(tmp_path):
    import dataclasses

    cohort = _cohort(tmp_path, n=12)
    func = cohort.inputs["func"]
    cohort.inputs["func"] = dataclasses.replace(func, spec={**func.spec, "atlas": "AAL"})
    attr, _ = _explain(cohort, OneRegion(cohort.inputs["anat"].features.shape[1]))
    assert set(attr.units["atlas"]) == {"AAL"}
    assert "Cingulate_Ant_R" in set(attr.units["region"])  # an AAL (AAL3) name, not a HarvardOxford one
