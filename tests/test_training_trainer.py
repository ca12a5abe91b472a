import numpy as np
import pytest
import torch

from brainage.models.encoders import MLPEncoder
from brainage.models.pidreg import PIDReg
from brainage.models.presets import get_preset
from brainage.simulate.tabular import make_pid_dataset
from brainage.training.datasets import MultiModalData, batch_indices
from brainage.training.trainer import pid_target, train_model


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def test_batch_indices_reproducible_sharded_and_complete():
    idx = np.arange(103)
    a = batch_indices(idx, 16, shuffle=True, seed=1, epoch=0)
    b = batch_indices(idx, 16, shuffle=True, seed=1, epoch=0)
    c = batch_indices(idx, 16, shuffle=True, seed=1, epoch=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(np.concatenate(a), np.concatenate(c))
    # evaluation keeps every sample in order
    ev = np.concatenate(batch_indices(idx, 16, shuffle=False, seed=0, epoch=0))
    np.testing.assert_array_equal(ev, idx)
    # two ranks: disjoint halves (up to padding) covering everything
    r0 = np.concatenate(batch_indices(idx, 16, shuffle=True, seed=1, epoch=0, rank=0,
                                      world_size=2))
    r1 = np.concatenate(batch_indices(idx, 16, shuffle=True, seed=1, epoch=0, rank=1,
                                      world_size=2))
    assert len(r0) == len(r1) == 52
    assert set(r0) | set(r1) == set(idx)
    # a shuffled last batch of one sample is dropped (batch norm cannot train on it)
    assert min(len(x) for x in batch_indices(np.arange(17), 16, shuffle=True, seed=0,
                                             epoch=0)) == 16


def test_pid_target_transforms():
    y = np.random.default_rng(0).exponential(size=500)
    g = pid_target(y, "inverse_normal")
    assert abs(np.mean(g)) < 0.01 and abs(np.std(g) - 1) < 0.05
    blend = pid_target(y, "blend")
    z = np.clip((y - y.mean()) / y.std(), -3, 3)
    np.testing.assert_allclose(blend, 0.6 * g + 0.4 * z)
    with pytest.raises(ValueError, match="choose 'inverse_normal' or 'blend'"):
        pid_target(y, "rank")


def test_target_transform_inverse_normal_and_its_former_name_int():
    from brainage.models.presets import PIDRegConfig

    y = np.random.default_rng(1).exponential(size=200)
    assert get_preset("default").target_transform == "inverse_normal"
    np.testing.assert_array_equal(pid_target(y), pid_target(y, "inverse_normal"))
    # "int" (saved bundles and configs before the rename) still loads, as the new name
    np.testing.assert_array_equal(pid_target(y, "int"), pid_target(y, "inverse_normal"))
    saved = {**get_preset("default").to_dict(), "target_transform": "int"}
    cfg = PIDRegConfig.from_dict(saved)
    assert cfg.target_transform == "inverse_normal"
    assert cfg == get_preset("default")
    assert cfg.to_dict()["target_transform"] == "inverse_normal"
    assert get_preset("faithful", target_transform="int").target_transform == "inverse_normal"
    assert PIDRegConfig(target_transform="blend").target_transform == "blend"
    with pytest.raises(ValueError, match="choose one of"):
        get_preset("default", target_transform="rank")


def _setup(n=300, d=3, **cfg):
    data_ = make_pid_dataset("redundancy", n, n_features=6, seed=0)
    data = MultiModalData(data_.X)
    y_std = (data_.y - data_.y.mean()) / data_.y.std()
    torch.manual_seed(0)
    net = PIDReg({m: MLPEncoder(6, out_dim=d, hidden=(8,), dropout=0.0) for m in data.modalities},
                 latent_dim=d, hidden=(8,), dropout=(0.0,))
    cfg = {"batch_size": 64, **cfg}
    config = get_preset("default", latent_dim=d, hidden=(8,), dropout=(0.0,), **cfg)
    idx = np.arange(n)
    return net, data, y_std, pid_target(data_.y), idx[: n - 60], idx[n - 60 :], config


def test_two_stage_freeze_rule_and_frozen_weights():
    net, data, y_std, y_pid, tr, va, cfg = _setup(max_epochs=14, freeze_tol=10.0,
                                                  early_stopping_patience=100)
    res = train_model(net, data, y_std, tr, va, cfg, y_pid=y_pid, device="cpu")
    # window of 5 epochs full after epoch 4; 5 stable epochs (4..8) -> stage 2 from epoch 9
    assert res.stage2_epoch == 9
    stages = [e["stage"] for e in res.history]
    assert stages == [1] * 9 + [2] * 5
    assert all("atoms" in e for e in res.history[:9])
    assert not any("atoms" in e for e in res.history[9:])
    frozen = [e["weights"] for e in res.history[8:]]
    assert all(w == frozen[0] for w in frozen)


def test_never_frozen_when_atoms_keep_moving():
    net, data, y_std, y_pid, tr, va, cfg = _setup(max_epochs=8, freeze_tol=0.0)
    res = train_model(net, data, y_std, tr, va, cfg, y_pid=y_pid, device="cpu")
    assert res.stage2_epoch is None
    assert all(e["stage"] == 1 for e in res.history)
    weights = [tuple(e["weights"].values()) for e in res.history]
    assert len(set(weights)) > 1  # the weights follow the atoms


def test_fusion_warmup_keeps_the_equal_weights_then_follows_the_atoms():
    net, data, y_std, y_pid, tr, va, cfg = _setup(max_epochs=8, freeze_tol=0.0, fusion_warmup_epochs=4)
    res = train_model(net, data, y_std, tr, va, cfg, y_pid=y_pid, device="cpu")
    weights = [tuple(e["weights"].values()) for e in res.history]
    assert all(w == pytest.approx((1 / 3,) * 3) for w in weights[:4])
    assert all("atoms" in e for e in res.history[:4])  # computed and recorded during the warm-up
    assert all(w != pytest.approx((1 / 3,) * 3) for w in weights[4:])
    with pytest.raises(ValueError, match="fusion_warmup_epochs must be >= 0"):
        get_preset("default", fusion_warmup_epochs=-1)


def test_batch_scope_pid_without_bias_correction_is_larger():
    kw = dict(max_epochs=3, lambda_cs=0.0, lambda_cmi=0.0, lambda_norm=0.0)
    net, data, y_std, y_pid, tr, va, cfg = _setup(**kw, pid_scope="batch",
                                                  pid_bias_correction=False, batch_size=32)
    r_batch = train_model(net, data, y_std, tr, va, cfg, y_pid=y_pid, device="cpu")
    net, data, y_std, y_pid, tr, va, cfg = _setup(**kw)
    r_win = train_model(net, data, y_std, tr, va, cfg, y_pid=y_pid, device="cpu")
    # same network and data; small uncorrected batches inflate the synergy atom
    assert r_batch.history[0]["atoms"]["m1|m2"]["S"] > r_win.history[0]["atoms"]["m1|m2"]["S"]


def test_early_stopping_restores_best_weights():
    net, data, y_std, y_pid, tr, va, cfg = _setup(max_epochs=60, early_stopping_patience=3,
                                                  lr=3e-2)
    rng = np.random.default_rng(0)
    y_noise = rng.normal(size=len(y_std))  # nothing to learn: validation loss soon rises
    res = train_model(net, data, y_noise, tr, va, cfg, y_pid=y_pid, device="cpu")
    val = [e["val_loss"] for e in res.history]
    assert len(val) < 60
    assert res.best_epoch == int(np.argmin(val))
    assert len(val) == res.best_epoch + 1 + 3
    from brainage.training.trainer import _evaluate

    restored = _evaluate(net, data, va, y_noise, cfg, torch.device("cpu"),
                         lambda: torch.autocast("cpu", enabled=False))
    assert restored == pytest.approx(min(val), rel=1e-5)


def test_requires_pid_target():
    net, data, y_std, _, tr, va, cfg = _setup(max_epochs=1)
    with pytest.raises(ValueError, match="needs y_pid"):
        train_model(net, data, y_std, tr, va, cfg, device="cpu")


def test_lazy_regularization_runs_the_regularizers_on_every_kth_batch(monkeypatch):
    import brainage.models.losses as losses

    calls = []
    references = set()
    real = losses.cs_gaussianity_loss

    def spy(a, **kw):
        calls.extend([a.shape[1]] * (a.shape[0] if a.ndim == 3 else 1))  # one per modality
        references.add(kw.get("reference"))
        return real(a, **kw)

    monkeypatch.setattr(losses, "cs_gaussianity_loss", spy)
    counts = {}
    for k in (1, 3):
        calls.clear()
        # 240 training samples in batches of 64: 4 batches per epoch, 8 in two epochs
        net, data, y_std, y_pid, tr, va, cfg = _setup(max_epochs=2, regularizer_interval=k)
        train_model(net, data, y_std, tr, va, cfg, y_pid=y_pid, device="cpu")
        counts[k] = len(calls)
    # two modalities; batches 0..7 with k = 1, batches 0, 3, 6 with k = 3
    assert counts == {1: 16, 3: 6}
    assert references == {"exact"}  # the default preset's reference reaches the loss
    references.clear()
    net, data, y_std, y_pid, tr, va, cfg = _setup(max_epochs=1, cs_reference="sample")
    train_model(net, data, y_std, tr, va, cfg, y_pid=y_pid, device="cpu")
    assert references == {"sample"}
    with pytest.raises(ValueError, match="regularizer_interval must be >= 1"):
        get_preset("default", regularizer_interval=0)


def test_plateau_schedule_lowers_the_network_rate_but_not_the_bottleneck_rate():
    net, data, y_std, y_pid, tr, va, cfg = _setup(max_epochs=6, plateau_patience=0,
                                                  early_stopping_patience=100)
    rng = np.random.default_rng(1)
    res = train_model(net, data, rng.normal(size=len(y_std)), tr, va, cfg, y_pid=y_pid,
                      device="cpu")
    lrs = [e["lr"] for e in res.history]
    assert lrs[-1] < cfg.lr  # validation loss on pure noise stops improving: rate halved
    # the θ_m of the noise bottleneck keep their own rate
    assert all(e["lambda_lr"] == cfg.lambda_lr for e in res.history)


def test_window_pid_on_cpu_matches_the_torch_closed_form():
    from brainage.models.pid_torch import gaussian_pid_torch
    from brainage.training.trainer import _pid_atoms

    g = torch.Generator().manual_seed(0)
    y = torch.randn(600, generator=g, dtype=torch.float64)
    zs = {"a": y[:, None] + torch.randn(600, 4, generator=g),
          "b": 0.5 * y[:, None] + torch.randn(600, 3, generator=g)}
    got = _pid_atoms(y, zs, [("a", "b")], bias_correction=True)["a|b"]
    ref = gaussian_pid_torch(y[:, None], zs["a"].double(), zs["b"].double(), bias_correction=True)
    assert got == pytest.approx({k: float(ref[k]) for k in got}, abs=1e-6)
    assert got["R"] > 0.1  # a non-trivial case


def test_window_pid_on_cpu_survives_a_rank_deficient_window_like_the_gpu_path():
    from brainage.models.pid_torch import gaussian_pid_torch
    from brainage.training.trainer import _pid_atoms

    g = torch.Generator().manual_seed(1)
    y = torch.randn(600, generator=g, dtype=torch.float64)
    a = y[:, None] + torch.randn(600, 4, generator=g)
    a[:, 3] = 2.0 * a[:, 1]  # two latent units that moved together: singular covariance
    zs = {"a": a, "b": 0.5 * y[:, None] + torch.randn(600, 3, generator=g)}
    got = _pid_atoms(y, zs, [("a", "b")], bias_correction=True)
    assert got is not None  # the epoch's fusion weights are still updated
    ref = gaussian_pid_torch(y[:, None], zs["a"].double(), zs["b"].double(), bias_correction=True)
    assert got["a|b"] == pytest.approx({k: float(ref[k]) for k in got["a|b"]}, abs=1e-9)
    assert got["a|b"]["R"] > 0.1


def test_weight_average_validates_and_returns_the_averaged_parameters():
    from brainage.training.trainer import _evaluate

    def fit(decay, epochs):  # one batch per epoch: one optimizer step per epoch
        net, data, y_std, y_pid, tr, va, cfg = _setup(max_epochs=epochs, lr=3e-2, weight_average=decay,
                                                      early_stopping_patience=100, batch_size=240)
        res = train_model(net, data, y_std, tr, va, cfg, y_pid=y_pid, device="cpu")
        restored = _evaluate(net, data, va, y_std, cfg, torch.device("cpu"),
                             lambda: torch.autocast("cpu", enabled=False))
        return res, {k: p.detach() for k, p in net.named_parameters()}, restored

    _, one_step, _ = fit(0.0, 1)
    _, plain, _ = fit(0.0, 6)
    # an average that barely follows the later steps keeps the parameters of the first one
    frozen, averaged, restored = fit(0.999999, 6)
    gap_plain = max(float((plain[k] - one_step[k]).abs().max()) for k in one_step)
    gap_avg = max(float((averaged[k] - one_step[k]).abs().max()) for k in one_step)
    assert gap_plain > 0.05 and gap_avg < 1e-4
    # the validation losses (and the early-stopping choice) are the average's
    assert restored == pytest.approx(min(e["val_loss"] for e in frozen.history), rel=1e-5)
    assert frozen.history[-1]["train_loss"] < frozen.history[0]["train_loss"]  # the live net trained
    with pytest.raises(ValueError, match="weight_average"):
        get_preset("default", weight_average=1.0)
