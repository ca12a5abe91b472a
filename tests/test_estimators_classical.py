import json

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
from sklearn.linear_model import RidgeCV
from sklearn.preprocessing import StandardScaler

from brainage.estimators.bundle import load_bundle, read_bundle_metadata, save_bundle
from brainage.estimators.classical import DEFAULT_ALPHAS, ClassicalRegressor
from brainage.exceptions import UsageError
from brainage.simulate.tabular import make_pid_dataset


def _tabular(n, seed, n_features=8):
    d = make_pid_dataset("redundancy", n, n_features=n_features, seed=seed, map_seed=0)
    return {"anat": d.X["m1"], "func": d.X["m2"]}, d.y


@pytest.fixture(scope="module")
def data():
    return _tabular(150, 0)


@pytest.fixture(scope="module")
def test_data():
    return _tabular(200, 1)


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    return {kind: ClassicalRegressor(kind).fit(X, y) for kind in ("ridge", "gpr")}


def _concat(X):
    return np.hstack([X["anat"], X["func"]]).astype(float)


def test_ridge_is_ridgecv_on_standardised_features(fitted, data, test_data):
    X, y = data
    Xt, yt = test_data
    sc = StandardScaler().fit(_concat(X))
    ref = RidgeCV(alphas=np.logspace(-3, 5, 17)).fit(sc.transform(_concat(X)), y)
    reg = fitted["ridge"]
    assert reg.alpha_ == ref.alpha_
    np.testing.assert_allclose(reg.predict(Xt), ref.predict(sc.transform(_concat(Xt))), rtol=0, atol=1e-10)
    pred = reg.predict(Xt)
    assert 1 - np.mean((pred - yt) ** 2) / np.var(yt) > 0.3
    assert DEFAULT_ALPHAS[0] == pytest.approx(1e-3) and DEFAULT_ALPHAS[-1] == pytest.approx(1e5)


def test_gpr_is_sklearn_gpr_on_pca_of_standardised_features(fitted, data, test_data):
    X, y = data
    Xt, yt = test_data
    reg = fitted["gpr"]
    sc = StandardScaler().fit(_concat(X))
    pca = PCA(n_components=reg.n_components_, random_state=0).fit(sc.transform(_concat(X)))
    kernel = ConstantKernel(1.0) * RBF(np.sqrt(16)) + WhiteKernel(0.1)
    ref = GaussianProcessRegressor(kernel, normalize_y=True, random_state=0).fit(
        pca.transform(sc.transform(_concat(X))), y)
    expected = ref.predict(pca.transform(sc.transform(_concat(Xt))))
    np.testing.assert_allclose(reg.predict(Xt), expected, rtol=0, atol=1e-8)
    assert reg.kernel_params_["length_scale"] == pytest.approx(ref.kernel_.k1.k2.length_scale)
    assert reg.kernel_params_["noise_level"] == pytest.approx(ref.kernel_.k2.noise_level)
    assert reg.log_marginal_likelihood_ == pytest.approx(ref.log_marginal_likelihood_value_)
    pred = reg.predict(Xt)
    assert 1 - np.mean((pred - yt) ** 2) / np.var(yt) > 0.3


@pytest.mark.parametrize(
    ("n", "d", "expected"),
    [(30, 200, 29), (150, 300, 100), (60, 10, 10)],
    ids=["n-1", "cap-100", "all-features"],
)
def test_gpr_pca_keeps_at_most_n_minus_1_and_100_components(n, d, expected):
    rng = np.random.default_rng(0)
    X = {"func": rng.normal(size=(n, d))}
    y = X["func"][:, 0] + 0.1 * rng.normal(size=n)
    reg = ClassicalRegressor("gpr").fit(X, y)
    assert reg.n_components_ == expected
    assert reg.pca_components_.shape == (expected, d)
    assert reg.X_train_.shape == (n, expected)


def test_fitted_attributes(fitted, data):
    _, y = data
    for reg in fitted.values():
        assert reg.modalities_ == ["anat", "func"]
        assert reg.feature_dims_ == {"anat": 8, "func": 8}
        assert reg.input_shapes_ == {"anat": [8], "func": [8]}
        assert reg.n_features_in_ == 16
        s = reg.training_summary_
        assert (s["n_train"], s["n_validation"], s["n_participants"]) == (150, 0, 150)
        assert s["y_mean"] == pytest.approx(y.mean()) and s["y_max"] == pytest.approx(y.max())
    assert set(fitted["gpr"].kernel_params_) == {"constant_value", "length_scale", "noise_level"}
    assert fitted["ridge"].alpha_ in np.logspace(-3, 5, 17)


def test_modalities_parameter_selects_and_orders(data):
    X, y = data
    reg = ClassicalRegressor("ridge", modalities=["func"]).fit(X, y)
    assert reg.modalities_ == ["func"] and reg.n_features_in_ == 8
    only = ClassicalRegressor("ridge").fit({"func": X["func"]}, y)
    np.testing.assert_array_equal(reg.predict(X), only.predict({"func": X["func"]}))
    rev = ClassicalRegressor("ridge", modalities=["func", "anat"]).fit(X, y)
    assert rev.modalities_ == ["func", "anat"]
    np.testing.assert_allclose(rev.predict(X), ClassicalRegressor("ridge").fit(X, y).predict(X), atol=1e-8)
    with pytest.raises(UsageError, match=r"X lacks modalities \['dwi'\]"):
        ClassicalRegressor("ridge", modalities=["dwi"]).fit(X, y)
    with pytest.raises(UsageError, match="write modalities=\\['func'\\]"):
        ClassicalRegressor("ridge", modalities="func").fit(X, y)


@pytest.mark.parametrize("kind", ["ridge", "gpr"])
def test_validation_idx_is_accepted_and_ignored(kind, data, fitted):
    X, y = data
    reg = ClassicalRegressor(kind).fit(X, y, validation_idx=np.arange(0, 150, 5))
    np.testing.assert_array_equal(reg.predict(X), fitted[kind].predict(X))
    assert reg.training_summary_["n_train"] == 150


@pytest.mark.parametrize("shape", [(20, 7, 8, 9), (20, 2, 7, 8, 9)], ids=["3d", "4d"])
def test_volumes_are_refused(shape):
    X = {"anat": np.zeros(shape), "func": np.zeros((20, 4))}
    with pytest.raises(UsageError, match=r"'anat' has shape .*classical models need tabular inputs"):
        ClassicalRegressor("ridge").fit(X, np.arange(20.0))


def test_datasets_of_volumes_are_refused():
    class Volumes:  # an indexable dataset of volumes, as brainage.training.datasets.VolumeDataset
        def __len__(self):
            return 20

        def __getitem__(self, i):
            return np.zeros((7, 8, 9))

    with pytest.raises(UsageError, match="'anat' is a Volumes .*need tabular inputs"):
        ClassicalRegressor("gpr").fit({"anat": Volumes()}, np.arange(20.0))


def test_non_finite_and_mismatched_inputs_name_the_modality(data, fitted):
    X, y = data
    bad = X["func"].copy()
    bad[[3, 7], 1] = np.nan
    bad[9, 0] = np.inf
    with pytest.raises(UsageError, match=r"Modality 'func' has non-finite values \(NaN or inf\) for 3 participant"):
        ClassicalRegressor("ridge").fit({"anat": X["anat"], "func": bad}, y)
    with pytest.raises(UsageError, match="Modality 'func' has non-finite"):
        fitted["ridge"].predict({"anat": X["anat"], "func": bad})
    y_bad = y.copy()
    y_bad[0] = np.inf
    with pytest.raises(UsageError, match="y has 1 non-finite values"):
        ClassicalRegressor("gpr").fit(X, y_bad)
    with pytest.raises(UsageError, match="Modality 'func' has 10 participants but 'anat' has 150"):
        ClassicalRegressor("ridge").fit({"anat": X["anat"], "func": X["func"][:10]}, y)
    with pytest.raises(UsageError, match="y has 10 values but modality 'anat' has 150 participants"):
        ClassicalRegressor("ridge").fit(X, y[:10])
    with pytest.raises(UsageError, match="need at least 3"):
        ClassicalRegressor("ridge").fit({m: v[:2] for m, v in X.items()}, y[:2])


def test_predict_refuses_subsets_missing_modalities_and_other_features(fitted, data):
    X, _ = data
    reg = fitted["gpr"]
    with pytest.raises(UsageError, match="cannot drop a modality"):
        reg.predict(X, modalities=["anat"])
    np.testing.assert_array_equal(reg.predict(X, modalities=["func", "anat"]), reg.predict(X))
    with pytest.raises(UsageError, match=r"X lacks modalities \['func'\]"):
        reg.predict({"anat": X["anat"]})
    with pytest.raises(UsageError, match="Modality 'anat' has 7 features per participant; this model was fitted on 8"):
        reg.predict({"anat": X["anat"][:, :7], "func": X["func"]})
    extra = dict(X, dwi=np.zeros((150, 3)))  # modalities the model does not use are ignored
    np.testing.assert_array_equal(reg.predict(extra), reg.predict(X))


def test_unknown_kind_bad_alphas_and_unfitted(data):
    X, y = data
    with pytest.raises(UsageError, match="Unknown classical model kind 'svr'; choose one of"):
        ClassicalRegressor("svr").fit(X, y)
    with pytest.raises(UsageError, match="alphas must be positive"):
        ClassicalRegressor("ridge", alphas=[1.0, -1.0]).fit(X, y)
    with pytest.raises(NotFittedError):
        ClassicalRegressor("ridge").predict(X)


def test_alphas_are_used(data):
    X, y = data
    reg = ClassicalRegressor("ridge", alphas=[7.5]).fit(X, y)
    assert reg.alpha_ == 7.5


def test_a_penalty_at_the_edge_is_flagged_unless_smaller_ones_change_nothing(caplog):
    rng = np.random.default_rng(0)
    # more features than participants, of rank 3, and an age exactly linear in them: the
    # least-squares fit is best, and every alpha far below the spectrum gives it; a choice at
    # the lower edge then means nothing
    factors = rng.normal(size=(30, 3))
    y = 50 + factors @ np.array([10.0, -5.0, 3.0])
    wide = {"anat": factors @ rng.normal(size=(3, 60))}
    with caplog.at_level("WARNING", logger="brainage.estimators.classical"):
        reg = ClassicalRegressor("ridge", alphas=[1e-3, 1e-2, 1e-1]).fit(wide, y)
    assert reg.alpha_ == 1e-3 and "at the edge" not in caplog.text
    # a penalty that is not negligible for the spectrum: a lower one could do better
    caplog.clear()
    with caplog.at_level("WARNING", logger="brainage.estimators.classical"):
        reg = ClassicalRegressor("ridge", alphas=[1e4, 1e5]).fit(wide, y)
    assert reg.alpha_ == 1e4 and "chose alpha=10000 at the edge" in caplog.text
    caplog.clear()
    noise = {"anat": rng.normal(size=(30, 5))}  # nothing to learn: the largest penalty
    with caplog.at_level("WARNING", logger="brainage.estimators.classical"):
        reg = ClassicalRegressor("ridge", alphas=[1e-2, 1.0]).fit(noise, y)
    assert reg.alpha_ == 1.0 and "chose alpha=1 at the edge" in caplog.text


@pytest.mark.parametrize("kind", ["ridge", "gpr"])
def test_bundle_round_trip_predicts_identically_without_pickle(kind, fitted, test_data, tmp_path):
    Xt, _ = test_data
    reg = fitted[kind]
    path = save_bundle(reg, tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "metadata.json", "model.safetensors"]
    loaded = load_bundle(path)
    assert type(loaded) is ClassicalRegressor and loaded.get_params() == reg.get_params()
    np.testing.assert_allclose(loaded.predict(Xt), reg.predict(Xt), rtol=0, atol=1e-10)
    assert loaded.modalities_ == reg.modalities_ and loaded.feature_dims_ == reg.feature_dims_
    assert loaded.training_summary_ == json.loads(json.dumps(reg.training_summary_))
    if kind == "gpr":
        assert loaded.kernel_params_ == reg.kernel_params_
    else:
        assert loaded.alpha_ == reg.alpha_
    info = read_bundle_metadata(path)
    assert info["config"]["estimator"] == "ClassicalRegressor"
    assert info["metadata"]["fit"]["kind"] == kind
    assert ClassicalRegressor.load(path).predict(Xt).shape == (200,)


def test_bundle_refuses_arrays_of_the_wrong_shape(fitted, tmp_path):
    from safetensors.numpy import load_file, save_file

    from brainage.exceptions import ModelBundleError
    from brainage.provenance import sha256_file as _sha256

    path = save_bundle(fitted["ridge"], tmp_path / "model")
    arrays = load_file(str(path / "model.safetensors"))
    arrays["ridge.coef"] = arrays["ridge.coef"][:5].copy()
    save_file(arrays, str(path / "model.safetensors"))
    cfg = json.loads((path / "config.json").read_text())
    cfg["weights_sha256"] = _sha256(path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelBundleError, match="describe an invalid ClassicalRegressor.*ridge.coef"):
        load_bundle(path)
