import contextlib
import json

import numpy as np
import pytest
import torch

from brainage.estimators.bundle import (
    FORMAT_VERSION,
    load_bundle,
    read_bundle_extra,
    read_bundle_metadata,
    save_bundle,
)
from brainage.estimators.classical import ClassicalRegressor
from brainage.estimators.regressor import PIDRegressor
from brainage.exceptions import ModelBundleError, UsageError
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


@contextlib.contextmanager
def _edited_json(path):
    """Read a bundle's JSON file, let the caller change it, write it back."""
    data = json.loads(path.read_text())
    yield data
    path.write_text(json.dumps(data))


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


def _assert_no_pickle(path):
    """Every file of a bundle is plain JSON or safetensors: no pickle, no torch.save zip."""
    from safetensors.torch import load_file

    for f in sorted(path.iterdir()):
        raw = f.read_bytes()
        # pickle starts with the PROTO opcode 0x80; torch.save writes a zip ("PK\x03\x04")
        assert raw[:1] != b"\x80" and raw[:4] != b"PK\x03\x04", f"{f.name} looks like a pickle"
        if f.suffix == ".json":
            json.loads(raw.decode("utf-8"))
            continue
        assert f.suffix == ".safetensors", f.name
        # safetensors: an 8-byte little-endian header length, a JSON header, then raw bytes
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n].decode("utf-8"))
        header.pop("__metadata__", None)
        assert max(end for entry in header.values() for end in entry["data_offsets"]) == len(raw) - 8 - n
        assert set(load_file(str(f))) == set(header)


def test_bundle_contents_have_no_pickle_and_full_metadata(bundle, fitted):
    from safetensors.torch import load_file

    names = sorted(p.name for p in bundle.iterdir())
    assert names == ["config.json", "metadata.json", "model.safetensors"]
    _assert_no_pickle(bundle)
    reg, _ = fitted
    weights = load_file(str(bundle / "model.safetensors"))
    state = reg.model_.state_dict()
    assert set(weights) >= {f"model.{k}" for k in state}
    for k, v in state.items():
        torch.testing.assert_close(weights[f"model.{k}"], v.detach().cpu(), rtol=0, atol=0)
    info = read_bundle_metadata(bundle)
    assert info["config"]["format_version"] == FORMAT_VERSION
    meta = info["metadata"]
    assert {"brainage", "torch", "monai", "python"} <= set(meta["versions"])
    assert meta["training_data"]["n_participants"] == 300
    assert set(meta["pid"]["atoms"]["m1|m2"]) >= {"U1", "U2", "R", "S"}
    assert "fusion_weights" in meta["pid"] and "gaussianity" in meta["pid"]


def test_refuses_other_major_version(bundle):
    with _edited_json(bundle / "config.json") as cfg:
        cfg["format_version"] = "2.0"
    with pytest.raises(ModelBundleError, match="format version '2.0'.*reads format 1.x"):
        PIDRegressor.load(bundle)


def test_accepts_newer_minor_version(bundle, fitted):
    with _edited_json(bundle / "config.json") as cfg:
        cfg["format_version"] = "1.7"
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
    with _edited_json(cfg_path) as cfg:
        cfg["estimator"] = "os.system"
    with pytest.raises(ModelBundleError, match="unknown estimator 'os.system'"):
        PIDRegressor.load(bundle)
    with pytest.raises(ModelBundleError, match="config.json: is missing"):
        PIDRegressor.load(tmp_path / "nothing")
    cfg_path.write_text("{not json")
    with pytest.raises(ModelBundleError, match="not valid JSON"):
        PIDRegressor.load(bundle)


def test_refuses_weights_of_another_architecture(bundle):
    with _edited_json(bundle / "config.json") as cfg:
        cfg["config"]["latent_dim"] = 5
    with pytest.raises(ModelBundleError, match="does not fit the architecture"):
        PIDRegressor.load(bundle)


# ------------------------------------------------------------------ format 1.1
EXTRA_JSON = {"kind": "group", "combat": {"anat": {"batches": ["a", "b"], "n": np.int64(3)}},
              "order": ["z", "a"], "shape": (2, 3), "scale": np.float64(0.5), "missing": float("nan")}


def _extra_arrays():
    rng = np.random.default_rng(0)
    return {"combat.anat.gamma": rng.normal(size=(2, 5)), "sites": np.array([1, 2, 2], dtype=np.int32),
            "mask": np.array([True, False]), "half": np.ones(3, dtype=np.float16)}


@pytest.fixture
def bundle_with_extra(tmp_path, fitted):
    reg, _ = fitted
    return save_bundle(reg, tmp_path / "model", extra_json=EXTRA_JSON, extra_arrays=_extra_arrays())


def test_extra_json_and_arrays_round_trip(bundle_with_extra, fitted):
    reg, d = fitted
    names = sorted(p.name for p in bundle_with_extra.iterdir())
    assert names == ["config.json", "extra.json", "extra.safetensors", "metadata.json", "model.safetensors"]
    _assert_no_pickle(bundle_with_extra)
    data, arrays = read_bundle_extra(bundle_with_extra)
    assert data == {"kind": "group", "combat": {"anat": {"batches": ["a", "b"], "n": 3}},
                    "order": ["z", "a"], "shape": [2, 3], "scale": 0.5, "missing": None}
    assert list(data) == list(EXTRA_JSON)  # insertion order kept
    expected = _extra_arrays()
    assert set(arrays) == set(expected)
    for k, v in expected.items():
        assert arrays[k].dtype == v.dtype
        np.testing.assert_array_equal(arrays[k], v)
    cfg = read_bundle_metadata(bundle_with_extra)["config"]
    assert set(cfg["extra_files"]) == {"extra.json", "extra.safetensors"}
    np.testing.assert_array_equal(load_bundle(bundle_with_extra).predict(d.X), reg.predict(d.X))


def test_bundle_without_extra_reads_empty(bundle):
    assert read_bundle_extra(bundle) == ({}, {})
    assert read_bundle_metadata(bundle)["config"]["extra_files"] == {}


@pytest.mark.parametrize("name", ["extra.json", "extra.safetensors"])
def test_refuses_tampered_extra(bundle_with_extra, name):
    f = bundle_with_extra / name
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    f.write_bytes(bytes(raw))
    with pytest.raises(ModelBundleError, match=f"{name}: does not match the checksum recorded in config.json"):
        read_bundle_extra(bundle_with_extra)
    with pytest.raises(ModelBundleError, match=f"{name}: does not match the checksum.*copy the bundle again"):
        load_bundle(bundle_with_extra)


def test_refuses_truncated_extra_arrays_even_with_a_matching_checksum(bundle_with_extra):
    from brainage.provenance import sha256_file as _sha256

    f = bundle_with_extra / "extra.safetensors"
    f.write_bytes(f.read_bytes()[:40])
    with _edited_json(bundle_with_extra / "config.json") as cfg:
        cfg["extra_files"]["extra.safetensors"] = _sha256(f)
    with pytest.raises(ModelBundleError, match="extra.safetensors: cannot be read"):
        read_bundle_extra(bundle_with_extra)


def test_refuses_missing_extra_file(bundle_with_extra):
    (bundle_with_extra / "extra.json").unlink()
    with pytest.raises(ModelBundleError, match="extra.json: is missing .*copy the whole bundle folder"):
        read_bundle_extra(bundle_with_extra)


def test_refuses_unrecorded_extra_file(bundle):
    (bundle / "extra.json").write_text("{}")
    with pytest.raises(ModelBundleError, match="extra.json: is not recorded in config.json"):
        read_bundle_extra(bundle)
    with pytest.raises(ModelBundleError, match="extra.json: is not recorded"):
        load_bundle(bundle)


def test_extra_that_cannot_be_stored_is_refused_before_writing(fitted, tmp_path):
    reg, _ = fitted
    with pytest.raises(UsageError, match="extra_json cannot be written as JSON"):
        save_bundle(reg, tmp_path / "a", extra_json={"f": object()})
    with pytest.raises(UsageError, match=r"extra_arrays\['names'\] has dtype <U1"):
        save_bundle(reg, tmp_path / "a", extra_arrays={"names": np.array(["a", "b"])})
    assert not (tmp_path / "a").exists()


def test_save_replaces_a_bundle_whole_and_refuses_other_folders(bundle_with_extra, fitted, tmp_path):
    reg, _ = fitted
    save_bundle(reg, bundle_with_extra)  # no extras this time: the old ones go
    assert sorted(p.name for p in bundle_with_extra.iterdir()) == [
        "config.json", "metadata.json", "model.safetensors"]
    assert read_bundle_extra(bundle_with_extra) == ({}, {})
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folders left
    other = tmp_path / "results"
    other.mkdir()
    (other / "predictions.tsv").write_text("x\n")
    with pytest.raises(UsageError, match="not part of a model bundle.*predictions.tsv"):
        save_bundle(reg, other)
    assert (other / "predictions.tsv").exists()
    with pytest.raises(UsageError, match="is a file"):
        save_bundle(reg, other / "predictions.tsv")


def test_reads_a_format_1_0_bundle(bundle, fitted):
    """1.0 bundles (PIDRegressor only, no extra_files, epochs in the PID block) still load."""
    reg, d = fitted
    with _edited_json(bundle / "config.json") as cfg:
        cfg["format_version"] = "1.0"
        del cfg["extra_files"]
    with _edited_json(bundle / "metadata.json") as meta:
        del meta["fit"]
    loaded = load_bundle(bundle)
    np.testing.assert_array_equal(loaded.predict(d.X), reg.predict(d.X))
    assert loaded.best_epoch_ == reg.best_epoch_ and loaded.n_epochs_ == reg.n_epochs_
    assert read_bundle_extra(bundle) == ({}, {})


def test_refuses_unknown_estimator_types(tmp_path):
    from sklearn.linear_model import Ridge

    with pytest.raises(TypeError, match="Cannot bundle a Ridge; supported: .*ClassicalRegressor"):
        save_bundle(Ridge().fit(np.eye(3), np.arange(3.0)), tmp_path / "m")


@pytest.mark.parametrize("kind", ["unimodal", "early", "late"])
def test_baseline_bundles_round_trip(kind, fitted, tmp_path):
    from brainage.estimators.baselines import BaselineRegressor

    _, d = fitted
    reg = BaselineRegressor(kind=kind, modality="m2", latent_dim=3, hidden=(8,), max_epochs=2,
                            batch_size=64).fit(d.X, d.y)
    reg.save(tmp_path / "b")
    loaded = BaselineRegressor.load(tmp_path / "b")
    assert (loaded.kind, loaded.modality, loaded.modalities_) == (kind, "m2", reg.modalities_)
    np.testing.assert_array_equal(loaded.predict(d.X), reg.predict(d.X))
    assert loaded.best_epoch_ == reg.best_epoch_ and loaded.history_ == reg.history_
    meta = read_bundle_metadata(tmp_path / "b")["metadata"]
    assert "pid" not in meta and meta["fit"]["n_epochs"] == reg.n_epochs_
    with pytest.raises(UsageError, match="holds a BaselineRegressor, not a ClassicalRegressor"):
        ClassicalRegressor.load(tmp_path / "b")
