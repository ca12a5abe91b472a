import json

import numpy as np
import pytest
import torch

from brainage.exceptions import ModelBundleError
from brainage.models.bundle import FORMAT_VERSION, read_bundle_metadata
from brainage.models.regressor import PIDRegressor
from brainage.simulate.tabular import make_pid_dataset


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    d = make_pid_dataset("redundancy", 300, n_features=6, seed=0)
    reg = PIDRegressor(latent_dim=3, hidden=(8,), max_epochs=4, batch_size=64,
                       random_state=2).fit(d.X, d.y)
    return reg, d


@pytest.fixture
def bundle(tmp_path, fitted):
    reg, _ = fitted
    path = tmp_path / "model"
    reg.save(path)
    return path


def test_save_load_predict_identical(bundle, fitted):
    reg, d = fitted
    loaded = PIDRegressor.load(bundle)
    np.testing.assert_array_equal(loaded.predict(d.X), reg.predict(d.X))
    np.testing.assert_array_equal(
        loaded.predict({"m1": d.X["m1"]}, modalities=["m1"]),
        reg.predict({"m1": d.X["m1"]}, modalities=["m1"]),
    )
    assert loaded.get_params() == reg.get_params() | {"hidden": [8]}
    assert loaded.config_ == reg.config_
    assert loaded.fusion_weights_ == reg.fusion_weights_
    assert loaded.pid_ == reg.pid_


def test_bundle_contents_have_no_pickle_and_full_metadata(bundle):
    names = sorted(p.name for p in bundle.iterdir())
    assert names == ["config.json", "metadata.json", "model.safetensors"]
    info = read_bundle_metadata(bundle)
    assert info["config"]["format_version"] == FORMAT_VERSION
    meta = info["metadata"]
    assert {"brainage", "torch", "monai", "python"} <= set(meta["versions"])
    assert meta["training_data"]["n_participants"] == 300
    assert set(meta["pid"]["atoms"]["m1|m2"]) >= {"U1", "U2", "R", "S"}
    assert "fusion_weights" in meta["pid"] and "gaussianity" in meta["pid"]


def test_refuses_other_major_version(bundle):
    cfg_path = bundle / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["format_version"] = "2.0"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelBundleError, match="format version '2.0'.*reads format 1.x"):
        PIDRegressor.load(bundle)


def test_accepts_newer_minor_version(bundle, fitted):
    cfg_path = bundle / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["format_version"] = "1.7"
    cfg_path.write_text(json.dumps(cfg))
    reg, d = fitted
    np.testing.assert_array_equal(PIDRegressor.load(bundle).predict(d.X), reg.predict(d.X))


def test_refuses_tampered_weights(bundle):
    w = bundle / "model.safetensors"
    raw = bytearray(w.read_bytes())
    raw[-5] ^= 0xFF
    w.write_bytes(bytes(raw))
    with pytest.raises(ModelBundleError, match="does not match the checksum"):
        PIDRegressor.load(bundle)


def test_refuses_unknown_estimator_and_foreign_folder(bundle, tmp_path):
    cfg_path = bundle / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["estimator"] = "os.system"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelBundleError, match="unknown estimator 'os.system'"):
        PIDRegressor.load(bundle)
    with pytest.raises(ModelBundleError, match="config.json: is missing"):
        PIDRegressor.load(tmp_path / "nothing")
    cfg_path.write_text("{not json")
    with pytest.raises(ModelBundleError, match="not valid JSON"):
        PIDRegressor.load(bundle)


def test_refuses_weights_of_another_architecture(bundle):
    cfg_path = bundle / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["config"]["latent_dim"] = 5
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelBundleError, match="does not fit the architecture"):
        PIDRegressor.load(bundle)
