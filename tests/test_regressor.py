import numpy as np
import pytest
import torch

from brainage.estimators.baselines import BaselineRegressor
from brainage.estimators.regressor import PIDRegressor
from brainage.exceptions import UsageError
from brainage.simulate.tabular import make_pid_dataset
from brainage.stats import latent_gaussianity

SMALL = dict(latent_dim=4, hidden=(16,), max_epochs=8, batch_size=64)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return make_pid_dataset("unique", 400, n_features=8, seed=3)


@pytest.fixture(scope="module")
def fitted(data):
    torch.set_num_threads(1)
    return PIDRegressor(**SMALL, random_state=1).fit(data.X, data.y)


def test_fit_predict_learns_the_target(fitted, data):
    test = make_pid_dataset("unique", 300, n_features=8, seed=4, map_seed=3)
    pred = fitted.predict(test.X)
    assert pred.shape == (300,)
    r2 = 1 - np.mean((pred - test.y) ** 2) / np.var(test.y)
    assert r2 > 0.4  # the population optimum is 1 - 2**(-2 * I12) = 0.80


def test_fitted_attributes(fitted):
    assert fitted.modalities_ == ["m1", "m2"]
    assert set(fitted.pid_) == {"m1|m2"}
    assert set(fitted.pid_["m1|m2"]) == {"U1", "U2", "R", "S", "I1", "I2", "I12"}
    assert set(fitted.pid_weights_atoms_["m1|m2"]) == set(fitted.pid_["m1|m2"])
    # "unique" case: modality 1 carries far more information than modality 2
    assert fitted.pid_["m1|m2"]["I1"] > fitted.pid_["m1|m2"]["I2"] + 0.3
    assert fitted.pid_["m1|m2"]["U1"] > 0.3
    assert len(fitted.fusion_weights_history_) == fitted.n_epochs_ == len(fitted.history_)
    assert len(fitted.pid_history_) >= 1
    assert sum(fitted.fusion_weights_.values()) == pytest.approx(1.0, abs=1e-6)
    assert set(fitted.bottleneck_lambdas_) == {"m1", "m2"}
    assert 0.001 <= min(fitted.bottleneck_lambdas_.values()) <= 0.999
    for m in ("m1", "m2"):
        g = fitted.gaussianity_[m]
        assert 0 < g["shapiro_w_mean"] <= 1 and g["mardia_kurtosis_ratio"] > 0
    assert fitted.training_summary_["n_train"] + fitted.training_summary_["n_validation"] == 400


def test_inference_runs_in_training_sized_batches_and_leaves_the_model_on_the_cpu(
        fitted, data, monkeypatch):
    """predict/transform batch by the training batch size (3D volumes: 512 at once
    would not fit in memory), and the batching does not change the outputs."""
    from brainage.training.datasets import MultiModalData

    sizes = []
    real = MultiModalData.batch

    def spy(self, idx):
        sizes.append(len(idx))
        return real(self, idx)

    full = fitted.predict(data.X)
    latents = fitted.transform(data.X)
    monkeypatch.setattr(MultiModalData, "batch", spy)
    assert np.allclose(fitted.predict(data.X), full, atol=1e-6)
    assert sizes == [64] * 6 + [16]  # 400 participants, batch_size 64
    sizes.clear()
    monkeypatch.setattr(fitted, "config_", fitted.config_.replace(batch_size=7))
    assert np.allclose(fitted.predict(data.X), full, atol=1e-5)
    assert max(sizes) == 7 and sum(sizes) == 400
    t = fitted.transform(data.X)
    assert all(np.allclose(t[m], latents[m], atol=1e-5) for m in latents)
    assert next(fitted.model_.parameters()).device.type == "cpu"


def test_modality_subset_prediction(fitted, data):
    full = fitted.predict(data.X)
    only1 = fitted.predict({"m1": data.X["m1"]}, modalities=["m1"])
    assert only1.shape == full.shape
    assert not np.allclose(only1, full)
    # modality 1 carries almost all the information: dropping 2 costs little
    assert np.corrcoef(only1, full)[0, 1] > 0.8
    with pytest.raises(UsageError, match="X lacks modalities"):
        fitted.predict({"m1": data.X["m1"]})
    with pytest.raises(UsageError, match="trained on"):
        fitted.predict(data.X, modalities=["m3"])


def test_predict_checks_feature_shape(fitted, data):
    with pytest.raises(UsageError, match="shape \\[7\\] per participant"):
        fitted.predict({"m1": data.X["m1"][:, :7], "m2": data.X["m2"]})


def test_fit_input_errors(data):
    reg = PIDRegressor(**SMALL)
    with pytest.raises(UsageError, match="different numbers of participants"):
        reg.fit({"m1": data.X["m1"], "m2": data.X["m2"][:10]}, data.y)
    with pytest.raises(UsageError, match="one target per participant"):
        reg.fit(data.X, data.y[:10])
    with pytest.raises(UsageError, match="two or more modalities"):
        reg.fit({"m1": data.X["m1"]}, data.y)
    bad = data.X["m1"].copy()
    bad[3, 2] = np.nan
    with pytest.raises(UsageError, match="non-finite values for 1 participant"):
        reg.fit({"m1": bad, "m2": data.X["m2"]}, data.y)


def test_predict_before_fit():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="not fitted"):
        PIDRegressor().predict({"a": np.zeros((2, 2))})


def test_seeded_fits_are_identical(data):
    X = {m: v[:200] for m, v in data.X.items()}
    kw = dict(SMALL, max_epochs=3)
    p1 = PIDRegressor(**kw, random_state=5).fit(X, data.y[:200]).predict(X)
    p2 = PIDRegressor(**kw, random_state=5).fit(X, data.y[:200]).predict(X)
    p3 = PIDRegressor(**kw, random_state=6).fit(X, data.y[:200]).predict(X)
    np.testing.assert_array_equal(p1, p2)
    assert not np.allclose(p1, p3)


def test_three_modalities():
    d = make_pid_dataset("three_modalities", 300, n_features=8, seed=0)
    reg = PIDRegressor(**dict(SMALL, max_epochs=4)).fit(d.X, d.y)
    assert set(reg.pid_) == {"m1|m2", "m1|m3", "m2|m3"}
    assert set(reg.fusion_weights_) == {"m1", "m2", "m3", "m1|m2", "m1|m3", "m2|m3"}
    assert reg.predict(d.X).shape == (300,)
    assert set(reg.pid_score(d.X, d.y)) == {"m1|m2", "m1|m3", "m2|m3"}


def test_pid_score_on_held_out(fitted):
    test = make_pid_dataset("unique", 600, n_features=8, seed=9, map_seed=3)
    res = fitted.pid_score(test.X, test.y, n_boot=20)["m1|m2"]
    assert res.bias_corrected and res.n == 600
    assert res.I1 > res.I2  # modality 1 is the strong one
    lo, hi = res.ci["I1"]
    assert lo <= res.I1 <= hi


@pytest.mark.parametrize("kind", ["late", "early", "unimodal"])
def test_baselines(kind, data):
    reg = BaselineRegressor(kind=kind, modality="m1", **dict(SMALL, max_epochs=25)).fit(data.X, data.y)
    pred = reg.predict(data.X)
    assert pred.shape == (400,)
    assert np.corrcoef(pred, data.y)[0, 1] > 0.5


def test_baseline_errors(data):
    with pytest.raises(UsageError, match="needs modality= one of"):
        BaselineRegressor(kind="unimodal", **SMALL).fit(data.X, data.y)
    with pytest.raises(UsageError, match="Unknown baseline kind"):
        BaselineRegressor(kind="mid", **SMALL).fit(data.X, data.y)


def test_latent_gaussianity_separates_gaussian_from_skewed():
    rng = np.random.default_rng(0)
    gauss = latent_gaussianity(rng.normal(size=(2000, 3)))
    skewed = latent_gaussianity(rng.exponential(size=(2000, 3)) ** 2)
    assert gauss["shapiro_w_mean"] > 0.99
    assert abs(gauss["mardia_kurtosis_ratio"] - 1) < 0.1
    assert skewed["shapiro_w_mean"] < 0.8
    assert skewed["mardia_kurtosis_ratio"] > 2


def test_callers_validation_split_is_used(data):
    """A nested CV controls the early-stopping split: the validation participants
    never reach the scalers or the target standardisation."""
    X = {m: v[:200] for m, v in data.X.items()}
    y = data.y[:200].copy()
    val = np.arange(0, 200, 4)
    train = np.setdiff1d(np.arange(200), val)
    kw = dict(SMALL, max_epochs=2)
    reg = PIDRegressor(**kw, random_state=0).fit(X, y, validation_idx=val)
    assert (reg.training_summary_["n_train"], reg.training_summary_["n_validation"]) == (150, 50)
    assert reg.y_mean_ == pytest.approx(y[train].mean())
    np.testing.assert_allclose(reg.input_mean_["m1"], X["m1"][train].mean(0), rtol=1e-5)
    # the default split differs from the caller's (so the check above can fail)
    default = PIDRegressor(**kw, random_state=0).fit(X, y)
    assert default.y_mean_ != pytest.approx(y[train].mean(), abs=1e-9)
    # moving the validation participants' inputs changes no scaler
    X2 = {m: v.copy() for m, v in X.items()}
    X2["m1"][val] += 100.0
    again = PIDRegressor(**kw, random_state=0).fit(X2, y, validation_idx=val)
    np.testing.assert_array_equal(again.input_mean_["m1"], reg.input_mean_["m1"])
    none = PIDRegressor(**kw, random_state=0).fit(X, y, validation_idx=np.array([], dtype=int))
    assert none.training_summary_["n_validation"] == 0


@pytest.mark.parametrize(
    ("idx", "match"),
    [
        (np.array([0, 400]), "outside 0..399"),
        (np.array([1, 1]), "repeats positions"),
        (np.array([0.5]), "integer positions"),
        (np.arange(397), "need at least 4"),
    ],
    ids=["out-of-range", "repeated", "float", "too-few-train"],
)
def test_validation_idx_errors(data, idx, match):
    with pytest.raises(UsageError, match=match):
        PIDRegressor(**SMALL).fit(data.X, data.y, validation_idx=idx)


def test_pid_that_cannot_be_estimated_is_an_explicit_state(tmp_path):
    # 27 training participants for two 16-dimensional latents: the Gaussian PID needs more
    # participants than latent dimensions, so the pair has no atoms, and the estimator says why
    d = make_pid_dataset("redundancy", 30, n_features=6, seed=0)
    reg = PIDRegressor(latent_dim=16, hidden=(8,), max_epochs=2, batch_size=16, random_state=0).fit(d.X, d.y)
    assert reg.pid_ == {}
    assert list(reg.pid_unavailable_) == ["m1|m2"] and "sample" in reg.pid_unavailable_["m1|m2"]
    reg.save(tmp_path / "model")
    assert PIDRegressor.load(tmp_path / "model").pid_unavailable_ == reg.pid_unavailable_
    big = make_pid_dataset("redundancy", 300, n_features=6, seed=0)
    fitted = PIDRegressor(**SMALL, random_state=0).fit(big.X, big.y)
    assert fitted.pid_unavailable_ == {} and set(fitted.pid_) == {"m1|m2"}


def test_baselines_share_the_neural_base_and_are_not_pidregressors():
    # a baseline is not a PIDRegressor with features switched off: it has no PID attributes or
    # pid_score, and isinstance checks for PIDReg models need no special case for it
    from brainage.estimators.neural import NeuralRegressor

    d = make_pid_dataset("redundancy", 120, n_features=6, seed=0)
    base = BaselineRegressor(kind="late", **dict(SMALL, max_epochs=2)).fit(d.X, d.y)
    assert isinstance(base, NeuralRegressor) and not isinstance(base, PIDRegressor)
    assert not hasattr(base, "pid_score") and not hasattr(base, "pid_") and not hasattr(base, "gaussianity_")
    assert issubclass(PIDRegressor, NeuralRegressor)
    assert set(BaselineRegressor().get_params()) == set(PIDRegressor().get_params()) | {"kind", "modality"}
