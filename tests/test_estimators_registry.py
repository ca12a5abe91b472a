import numpy as np
import pytest
import torch

from brainage.estimators.baselines import BaselineRegressor
from brainage.estimators.bundle import load_bundle, save_bundle
from brainage.estimators.classical import ClassicalRegressor
from brainage.estimators.registry import (
    MODEL_NAMES,
    available_models,
    make_estimator,
    predict_by_modality,
)
from brainage.estimators.regressor import PIDRegressor
from brainage.exceptions import UsageError
from brainage.simulate.tabular import make_pid_dataset

MODS = ["anat", "func"]
NAMES = available_models(MODS)
SMALL = {"latent_dim": 4, "hidden": (16,), "max_epochs": 2, "batch_size": 64}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    d = make_pid_dataset("redundancy", 160, n_features=6, seed=0)
    return {"anat": d.X["m1"], "func": d.X["m2"]}, d.y


def _params(name):
    return {} if name.split("_")[0] in ("ridge", "gpr") else dict(SMALL)


def test_available_models():
    assert NAMES == ["pidreg", "pidreg_faithful", "unimodal_anat", "unimodal_func", "early_fusion",
                     "late_fusion", "ridge", "gpr", "ridge_anat", "ridge_func", "gpr_anat", "gpr_func"]
    assert available_models(["anat"]) == ["unimodal_anat", "ridge", "gpr"]
    documented = {n if n.removesuffix("_anat").removesuffix("_func") == n else
                  n.rsplit("_", 1)[0] + "_<modality>" for n in NAMES}
    assert documented == set(MODEL_NAMES)


def test_per_modality_classical_models_use_one_modality():
    est = make_estimator("ridge_func", modalities=MODS)
    assert (est.kind, est.modalities) == ("ridge", ["func"])
    assert make_estimator("gpr_anat", modalities=MODS).modalities == ["anat"]
    assert make_estimator("ridge", modalities=MODS).modalities == MODS
    # the group level passes a one-modality model only its own modality
    assert make_estimator("ridge_anat", modalities=["anat"]).modalities == ["anat"]


@pytest.mark.parametrize(
    ("name", "cls", "attrs"),
    [
        ("pidreg", PIDRegressor, {"preset": "default"}),
        ("pidreg_faithful", PIDRegressor, {"preset": "faithful"}),
        ("unimodal_func", BaselineRegressor, {"kind": "unimodal", "modality": "func"}),
        ("early_fusion", BaselineRegressor, {"kind": "early"}),
        ("late_fusion", BaselineRegressor, {"kind": "late"}),
        ("ridge", ClassicalRegressor, {"kind": "ridge", "modalities": MODS}),
        ("gpr", ClassicalRegressor, {"kind": "gpr", "modalities": MODS}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_names_build_the_documented_estimators(name, cls, attrs):
    est = make_estimator(name, modalities=MODS, random_state=3, device="cpu")
    assert type(est) is cls
    assert {k: getattr(est, k) for k in attrs} == attrs
    assert est.random_state == 3
    if cls is not ClassicalRegressor:
        assert est.device == "cpu"


@pytest.mark.parametrize("name", NAMES)
def test_every_name_trains_predicts_and_round_trips(name, data, tmp_path):
    X, y = data
    est = make_estimator(name, modalities=MODS, params=_params(name), random_state=1, device="cpu")
    assert est.fit(X, y) is est
    pred = est.predict(X)
    assert pred.shape == (160,) and np.all(np.isfinite(pred))
    assert est.training_summary_["n_participants"] == 160
    by_mod = predict_by_modality(est, X)
    if name.startswith("pidreg"):
        assert sorted(by_mod) == MODS
        np.testing.assert_array_equal(by_mod["anat"], est.predict({"anat": X["anat"]}, modalities=["anat"]))
        assert not np.allclose(by_mod["anat"], by_mod["func"])
    else:
        assert by_mod == {}
    loaded = load_bundle(save_bundle(est, tmp_path / name))
    assert type(loaded) is type(est)
    np.testing.assert_array_equal(loaded.predict(X), pred)
    for m, p in predict_by_modality(loaded, X).items():
        np.testing.assert_array_equal(p, by_mod[m])


def test_params_are_passed_to_the_constructor():
    est = make_estimator("late_fusion", modalities=MODS, params={"latent_dim": 8, "max_epochs": 30})
    assert (est.latent_dim, est.max_epochs, est.kind) == (8, 30, "late")
    ridge = make_estimator("ridge", modalities=MODS, params={"alphas": [0.1, 1.0]})
    assert ridge.alphas == [0.1, 1.0]
    gpr = make_estimator("gpr", modalities=["func"])
    assert gpr.modalities == ["func"]
    assert make_estimator("unimodal_anat", modalities=["anat"]).modality == "anat"


@pytest.mark.parametrize(
    ("name", "mods", "match"),
    [
        ("pidrge", MODS, "By 'pidrge', did you mean 'pidreg'\\? 'pidrge' is not a model name. "
                         "Available models: pidreg, pidreg_faithful, unimodal_anat"),
        ("unimodal_fmri", MODS, "did you mean 'unimodal_func'"),
        ("unimodal_dwi", MODS, "names modality 'dwi', which is not one of \\['anat', 'func'\\]"),
        ("xgboost", MODS, "^'xgboost' is not a model name. Available models: .*ridge, gpr"),
        ("pidreg", ["anat"], "fuses two or more modalities, but only \\['anat'\\].*unimodal_anat, ridge, gpr"),
        ("early_fusion", ["anat"], "fuses two or more modalities"),
    ],
    ids=["typo", "typo-modality", "other-modality", "unknown", "pidreg-one-modality", "early-one-modality"],
)
def test_unknown_names(name, mods, match):
    with pytest.raises(UsageError, match=match):
        make_estimator(name, modalities=mods)


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("pidreg", {"max_epoch": 3}, "did you mean 'max_epochs'\\? 'max_epoch' is not a parameter of "
                                     "model 'pidreg' \\(PIDRegressor\\). Parameters that can be set: .*latent_dim"),
        ("ridge", {"alpha": [1.0]}, "did you mean 'alphas'"),
        ("gpr", {"n_restarts": 2}, "^'n_restarts' is not a parameter of model 'gpr'"),
        ("pidreg", {"preset": "faithful"}, "'preset' of model 'pidreg' is set by the model name"),
        ("unimodal_anat", {"modality": "func"}, "'modality' .* is set by the model name"),
        ("late_fusion", {"random_state": 4}, "set by make_estimator\\(random_state=...\\)"),
        ("ridge", {"modalities": ["anat"]}, "set by make_estimator\\(modalities=...\\)"),
    ],
    ids=["typo", "ridge-typo", "unknown", "preset", "modality", "seed", "modalities"],
)
def test_unknown_or_fixed_params(name, params, match):
    with pytest.raises(UsageError, match=match):
        make_estimator(name, modalities=MODS, params=params)


def test_modalities_must_be_a_list():
    with pytest.raises(UsageError, match="write modalities=\\['anat'\\]"):
        make_estimator("ridge", modalities="anat")
    with pytest.raises(UsageError, match="each modality once"):
        available_models(["anat", "anat"])
