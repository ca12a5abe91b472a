import numpy as np
import pytest
import torch

from brainage.models.encoders import MLPEncoder
from brainage.models.pidreg import PIDReg, fusion_weights_from_atoms
from brainage.models.presets import PRESETS, get_preset


def _atoms(u1, u2, r, s):
    return {"U1": u1, "U2": u2, "R": r, "S": s, "I1": u1 + r, "I2": u2 + r}


def _net(k=2, d=4):
    torch.manual_seed(0)
    encs = {f"m{i}": MLPEncoder(3 + i, out_dim=d, hidden=(8,), dropout=0.0) for i in range(k)}
    return PIDReg(encs, latent_dim=d, hidden=(8,), dropout=(0.0,))


def test_two_modalities_coin_flip_matches_published_rule():
    atoms = {"a|b": _atoms(0.4, 0.0, 0.3, 0.3)}
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        w = fusion_weights_from_atoms(atoms, ["a", "b"], redundancy="coin", rng=rng)
        assert w["a|b"] == pytest.approx(0.3)
        seen.add((round(w["a"], 6), round(w["b"], 6)))
    # all of R goes to one modality: (U1 + R)/T, U2/T  or  U1/T, (U2 + R)/T
    assert seen == {(0.7, 0.0), (0.4, 0.3)}


def test_proportional_redundancy_is_deterministic_and_shares_by_information():
    atoms = {"a|b": _atoms(0.3, 0.0, 0.3, 0.0)}  # I1 = 0.6, I2 = 0.3
    w = fusion_weights_from_atoms(atoms, ["a", "b"])
    assert w == fusion_weights_from_atoms(atoms, ["a", "b"])
    assert w["a"] == pytest.approx((0.3 + 0.3 * 2 / 3) / 0.6)
    assert w["b"] == pytest.approx(0.3 / 3 / 0.6)
    assert sum(w.values()) == pytest.approx(1.0)


def test_negative_atoms_count_as_zero_and_no_information_gives_average():
    w = fusion_weights_from_atoms({"a|b": _atoms(-0.01, 0.0, 0.0, -0.02)}, ["a", "b"])
    assert w == {"a": 0.5, "b": 0.5, "a|b": 0.0}


def test_three_modalities_reduce_to_pairwise_rule():
    atoms = {
        "a|b": _atoms(0.0, 0.0, 0.6, 0.1),
        "a|c": _atoms(0.6, 0.0, 0.0, 0.4),
        "b|c": _atoms(0.6, 0.0, 0.0, 0.0),
    }
    w = fusion_weights_from_atoms(atoms, ["a", "b", "c"])
    assert set(w) == {"a", "b", "c", "a|b", "a|c", "b|c"}
    assert sum(w.values()) == pytest.approx(1.0)
    assert w["c"] == pytest.approx(0.0)  # c alone carries nothing
    assert w["a|c"] > w["a|b"] > w["b|c"] == 0.0


def test_missing_pair_is_named():
    with pytest.raises(KeyError, match="a\\|c"):
        fusion_weights_from_atoms({"a|b": _atoms(0, 0, 0, 0)}, ["a", "b", "c"])


def test_bottleneck_noise_only_in_training():
    net = _net()
    x = {"m0": torch.randn(16, 3), "m1": torch.randn(16, 4)}
    net.eval()
    out1, out2 = net(x), net(x)
    assert torch.equal(out1["pred"], out2["pred"])
    assert torch.equal(out1["z"]["m0"], out1["a"]["m0"])
    with torch.no_grad():
        net.theta["m0"].fill_(-10.0)  # λ → 0.001: z is almost pure noise
    net.train()
    out = net(x)
    lam = 0.001
    noise_part = (out["z"]["m0"] - lam * out["a"]["m0"]) / (1 - lam)
    # the noise has the batch mean and sd of a, and is not a itself
    a = out["a"]["m0"].detach()
    assert torch.allclose(noise_part.mean(0), a.mean(0), atol=1.0)
    assert not torch.allclose(noise_part, a, atol=0.1)


def test_fusion_uses_weights_and_hadamard_term():
    net = _net().eval()
    x = {"m0": torch.randn(5, 3), "m1": torch.randn(5, 4)}
    net.set_fusion_weights({"m0": 0.2, "m1": 0.3, "m0|m1": 0.5})
    out = net(x)
    a0, a1 = out["a"]["m0"], out["a"]["m1"]
    assert torch.allclose(out["fused"], 0.2 * a0 + 0.3 * a1 + 0.5 * a0 * a1, atol=1e-6)
    assert net.fusion_weights_dict() == pytest.approx({"m0": 0.2, "m1": 0.3, "m0|m1": 0.5})


def test_subset_prediction_replaces_missing_latent_by_training_mean():
    net = _net()
    x = {"m0": torch.randn(64, 3), "m1": torch.randn(64, 4)}
    net.train()
    for _ in range(30):
        net(x)
    net.eval()
    out = net({"m0": x["m0"]}, modalities=["m0"])
    a0 = out["a"]["m0"]
    mean1 = net.latent_mean[1]
    w = net.fusion_weights
    expected = w[0] * a0 + w[1] * mean1 + w[2] * a0 * mean1
    assert torch.allclose(out["fused"], expected, atol=1e-6)
    assert "m1" not in out["a"]
    with pytest.raises(ValueError, match="this model knows"):
        net(x, modalities=["m0", "nope"])


def test_pidreg_needs_two_modalities():
    with pytest.raises(ValueError, match="two or more modalities"):
        PIDReg({"a": MLPEncoder(3, out_dim=2, hidden=(4,), dropout=0.0)}, latent_dim=2)


def test_presets_differ_where_documented():
    f, d = PRESETS["faithful"], PRESETS["default"]
    assert (f.pid_scope, f.pid_bias_correction, f.redundancy, f.cmi_sigma_scale, f.cs_reference) == (
        "batch", False, "coin", 0.05, "sample")
    assert (d.pid_scope, d.pid_bias_correction, d.redundancy, d.cmi_sigma_scale, d.cs_reference) == (
        "window", True, "proportional", 1.0, "exact")
    for key in ("batch_size", "max_epochs", "lr", "lambda_lr", "early_stopping_patience",
                "grad_clip", "lambda_cs", "lambda_cmi", "lambda_norm", "latent_dim"):
        assert getattr(f, key) == getattr(d, key)
    assert (f.batch_size, f.lr, f.lambda_init, f.latent_dim) == (256, 1e-3, 4.0, 64)


def test_preset_errors_are_actionable():
    with pytest.raises(ValueError, match="available presets"):
        get_preset("fast")
    with pytest.raises(ValueError, match="Unknown PIDReg setting"):
        get_preset("default", latnet_dim=3)
    with pytest.raises(ValueError, match="choose one of"):
        get_preset("default", redundancy="random")


def test_config_roundtrip():
    cfg = get_preset("faithful", hidden=(8, 4), dropout=(0.0, 0.0))
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
