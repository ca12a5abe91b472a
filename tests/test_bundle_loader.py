"""The bundle loader's defences: architecture bounds, shapes checked before building, the digest."""

import json

import numpy as np
import pytest
import torch

from brainage.estimators import bundle as bundle_mod
from brainage.estimators.bundle import MAX_LAYERS, MAX_WIDTH, bundle_digest, load_bundle
from brainage.estimators.regressor import PIDRegressor
from brainage.exceptions import ModelBundleError
from brainage.simulate.tabular import make_pid_dataset


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    d = make_pid_dataset("redundancy", 200, n_features=6, seed=1)
    return PIDRegressor(latent_dim=3, hidden=(8,), max_epochs=2, batch_size=64, random_state=0).fit(d.X, d.y), d


@pytest.fixture
def bundle(tmp_path, fitted):
    path = tmp_path / "model"
    fitted[0].save(path)
    return path


def _edit_config(path, change):
    cfg_path = path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    change(cfg)
    cfg_path.write_text(json.dumps(cfg))


def _never_built_for_real(monkeypatch):
    """Fail the test if the loader builds the network anywhere but on the meta device."""
    real = PIDRegressor._build_model

    def build(self, config, specs):
        assert torch.get_default_device().type == "meta", "network built before its shapes were checked"
        return real(self, config, specs)

    monkeypatch.setattr(PIDRegressor, "_build_model", build)


def test_huge_width_is_refused_before_anything_is_built(bundle, monkeypatch):
    _edit_config(bundle, lambda c: c["encoder_specs"]["m1"].update(hidden=[10**9]))
    _never_built_for_real(monkeypatch)
    with pytest.raises(ModelBundleError, match=f"layer size of 1000000000 .*0 to {MAX_WIDTH}"):
        load_bundle(bundle)


def test_too_many_layers_are_refused(bundle, monkeypatch):
    _edit_config(bundle, lambda c: c["encoder_specs"]["m1"].update(hidden=[4] * (MAX_LAYERS + 1),
                                                                  dropout=[0.0] * (MAX_LAYERS + 1)))
    _never_built_for_real(monkeypatch)
    with pytest.raises(ModelBundleError, match=f"asks for {MAX_LAYERS + 1} layers"):
        load_bundle(bundle)


def test_a_wider_architecture_within_bounds_is_caught_on_the_meta_device(bundle, monkeypatch):
    # 4096 × 4096 units are allowed sizes, but the stored weights are 8 wide: refused from the
    # shapes alone, naming the tensor, without allocating the 4096-wide network
    _edit_config(bundle, lambda c: c["encoder_specs"]["m1"].update(hidden=[4096, 4096], dropout=[0.0, 0.0]))
    _never_built_for_real(monkeypatch)
    with pytest.raises(ModelBundleError, match=r"wrong shape \(first: encoders\.m1\..*needs \[4096"):
        load_bundle(bundle)


def test_missing_and_unexpected_tensors_are_named(bundle):
    from safetensors.torch import load_file, save_file

    w = bundle / "model.safetensors"
    tensors = load_file(str(w))
    name = sorted(k for k in tensors if k.startswith("model."))[0]
    tensors["model.rogue.weight"] = tensors.pop(name)
    save_file(tensors, str(w))
    _edit_config(bundle, lambda c: c.update(weights_sha256=bundle_mod.sha256_file(w)))
    with pytest.raises(ModelBundleError, match=rf"1 tensor\(s\) missing \(first: {name[6:]}\).*"
                                               r"lacks \(first: rogue\.weight\)"):
        load_bundle(bundle)


def test_valid_bundle_still_loads_and_predicts_identically(bundle, fitted):
    reg, d = fitted
    np.testing.assert_array_equal(load_bundle(bundle).predict(d.X), reg.predict(d.X))


def test_digest_covers_every_file(bundle):
    digest = bundle_digest(bundle)
    assert digest.startswith("sha256:") and len(digest) == 7 + 64
    assert bundle_digest(bundle) == digest
    meta = bundle / "metadata.json"
    meta.write_text(meta.read_text().replace("{", "{ ", 1))  # metadata has no checksum of its own
    assert bundle_digest(bundle) != digest
    changed = bundle_digest(bundle)
    (bundle / "notes.txt").write_text("added later")
    assert bundle_digest(bundle) != changed
    with pytest.raises(ModelBundleError, match="config.json: is missing"):
        bundle_digest(bundle.parent / "elsewhere")
