"""Per-participant contributions: exact Shapley values and local information."""

from __future__ import annotations

import copy
import itertools
import logging
import math

import numpy as np
import pytest
import torch
from scipy import stats

from brainage.estimators.baselines import BaselineRegressor
from brainage.estimators.regressor import PIDRegressor
from brainage.exceptions import UsageError
from brainage.interpret.contributions import (
    exact_shapley,
    fusion_shapley,
    gaussianize_like,
    local_information,
    local_information_from_latents,
    modality_shapley,
)
from brainage.pid import gaussian_pid, inverse_normal_transform

TINY = dict(latent_dim=3, hidden=(8,), max_epochs=2, batch_size=32, settings={"dropout": (0.0,)})


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _data(n_mod, seed=0, n=64):
    rng = np.random.default_rng(seed)
    names = ["anat", "func", "dwi"][:n_mod]
    X = {m: rng.normal(size=(n, 4 + i)) for i, m in enumerate(names)}
    y = 50 + 10 * sum(X[m][:, 0] for m in names) + rng.normal(size=n)
    return X, y


@pytest.fixture(scope="module")
def fit2():
    torch.set_num_threads(1)
    X, y = _data(2)
    return PIDRegressor(**TINY, random_state=0).fit(X, y), X, y


@pytest.fixture(scope="module")
def fit3():
    torch.set_num_threads(1)
    X, y = _data(3, seed=1)
    return PIDRegressor(**TINY, random_state=0).fit(X, y), X, y


def _shap_cols(df):
    return [c for c in df.columns if c.startswith("shap_")]


# ------------------------------------------------------------- exact_shapley


def test_exact_shapley_additive_game_gives_each_player_its_own_contribution():
    c = {"a": np.array([1.0, -2.0]), "b": np.array([0.5, 3.0]), "c": np.array([-4.0, 0.0])}
    values, empty, full = exact_shapley(lambda s: 7.0 + sum((c[p] for p in s), np.zeros(2)), list(c))
    for p in c:
        np.testing.assert_allclose(values[p], c[p], atol=1e-12)
    np.testing.assert_allclose(empty, [7.0, 7.0])
    np.testing.assert_allclose(full, 7.0 + c["a"] + c["b"] + c["c"])


def test_exact_shapley_unanimity_game_splits_equally():
    values, empty, full = exact_shapley(lambda s: float(set(s) == {"x", "y"}), ["x", "y"])
    assert values == {"x": 0.5, "y": 0.5}
    assert (empty, full) == (0.0, 1.0)


def test_exact_shapley_matches_the_permutation_definition_and_the_axioms():
    """A random 4-player game: the coalition formula equals the average marginal
    contribution over all 4! orders; efficiency, symmetry and the null player hold."""
    rng = np.random.default_rng(3)
    players = ["a", "b", "c", "d"]
    table = {frozenset(s): rng.normal() for r in range(5) for s in itertools.combinations(players, r)}
    table[frozenset()] = 0.3

    def v(s):
        return table[frozenset(s)]

    values, empty, full = exact_shapley(v, players)
    perm = dict.fromkeys(players, 0.0)
    for order in itertools.permutations(players):
        for i, p in enumerate(order):
            perm[p] += (v(order[:i + 1]) - v(order[:i])) / math.factorial(4)
    for p in players:
        assert values[p] == pytest.approx(perm[p], abs=1e-12)
    assert sum(values.values()) == pytest.approx(full - empty, abs=1e-12)

    # symmetric players a, b (the game sees only how many of them are in) and a null player d
    def sym(s):
        s = set(s) - {"d"}
        return 2.0 * len(s & {"a", "b"}) ** 2 + 3.0 * ("c" in s) * len(s & {"a", "b"})

    values, _, _ = exact_shapley(sym, players)
    assert values["a"] == pytest.approx(values["b"], abs=1e-12)
    assert values["d"] == pytest.approx(0.0, abs=1e-12)
    assert sum(values.values()) == pytest.approx(sym(players), abs=1e-12)


def test_exact_shapley_refuses_too_many_or_repeated_players():
    with pytest.raises(UsageError, match="at most 10"):
        exact_shapley(lambda s: 0.0, [str(i) for i in range(11)])
    with pytest.raises(ValueError, match="distinct"):
        exact_shapley(lambda s: 0.0, ["a", "a"])
    with pytest.raises(ValueError, match="at least one"):
        exact_shapley(lambda s: 0.0, [])


# ------------------------------------------------------ Shapley on the model


@pytest.mark.parametrize("fixture", ["fit2", "fit3"])
@pytest.mark.parametrize("fn", [fusion_shapley, modality_shapley])
def test_shapley_values_sum_to_the_prediction(fixture, fn, request):
    est, X, _ = request.getfixturevalue(fixture)
    df = fn(est, X)
    mods = est.modalities_
    terms = mods + [f"{p}|{q}" for p, q in itertools.combinations(mods, 2)] if fn is fusion_shapley else mods
    assert list(df.columns) == ["baseline_age", *[f"shap_{t}" for t in terms], "predicted_age"]
    assert len(df) == 64
    np.testing.assert_allclose(df["predicted_age"], est.predict(X), rtol=0, atol=1e-4)
    np.testing.assert_allclose(df["baseline_age"] + df[_shap_cols(df)].sum(axis=1), df["predicted_age"],
                               rtol=0, atol=1e-9)
    assert np.ptp(df["baseline_age"]) == 0
    # the baseline is the prediction at the training-mean latents, in years
    net = est.model_
    mu = {m: net.latent_mean[i] for i, m in enumerate(net.modalities)}
    w = net.fusion_weights
    fused = sum(w[i] * mu[m] for i, m in enumerate(net.modalities))
    for j, (p, q) in enumerate(net.pairs):
        fused = fused + w[len(mods) + j] * mu[p] * mu[q]
    with torch.no_grad():
        base = float(net.predictor(fused[None])[0, 0]) * est.y_scale_ + est.y_mean_
    assert df["baseline_age"].iloc[0] == pytest.approx(base, abs=1e-4)


@pytest.mark.parametrize("fixture", ["fit2", "fit3"])
def test_modality_shapley_is_the_shapley_value_of_predict_with_modality_subsets(fixture, request):
    est, X, _ = request.getfixturevalue(fixture)
    df = modality_shapley(est, X)
    base = df["baseline_age"].to_numpy()

    def v(s):
        return est.predict(X, modalities=list(s)) if s else base

    values, _, full = exact_shapley(v, est.modalities_)
    np.testing.assert_allclose(full, df["predicted_age"], rtol=0, atol=1e-4)
    for m in est.modalities_:
        np.testing.assert_allclose(df[f"shap_{m}"], values[m], rtol=0, atol=1e-4)
    # both games start from the same baseline
    np.testing.assert_allclose(fusion_shapley(est, X)["baseline_age"], base, atol=1e-9)


def test_fusion_shapley_of_a_linear_predictor_is_each_terms_own_contribution(fit3):
    """With a linear predictor the fusion game is additive: each term's Shapley value
    is the predictor's weight times the term's deviation from its baseline, in years."""
    est, X, _ = fit3
    est = copy.deepcopy(est)
    torch.manual_seed(0)
    lin = torch.nn.Linear(est.model_.latent_dim, 1)
    est.model_.predictor = lin
    df = fusion_shapley(est, X)
    net, lat = est.model_, est.transform(X)
    w = net.fusion_weights.numpy()
    mu = {m: net.latent_mean[i].numpy() for i, m in enumerate(net.modalities)}
    coef = lin.weight.detach().numpy()[0] * est.y_scale_
    for i, m in enumerate(net.modalities):
        np.testing.assert_allclose(df[f"shap_{m}"], (w[i] * (lat[m] - mu[m])) @ coef, atol=1e-4)
    for j, (p, q) in enumerate(net.pairs):
        dev = w[3 + j] * (lat[p] * lat[q] - mu[p] * mu[q])
        np.testing.assert_allclose(df[f"shap_{p}|{q}"], dev @ coef, atol=1e-4)


def test_a_modality_at_its_mean_latent_gets_zero_in_both_games(fit2):
    """Put a modality's training-mean latent exactly at participant 0's latent: for that
    participant the modality (and, in the fusion game, its own term) is a null player."""
    est, X, _ = fit2
    est = copy.deepcopy(est)
    z0 = est.transform({m: X[m][:1] for m in X})["func"][0]
    est.model_.latent_mean[1] = torch.from_numpy(z0)
    f, m = fusion_shapley(est, X), modality_shapley(est, X)
    assert abs(f["shap_func"].iloc[0]) < 1e-9
    assert abs(m["shap_func"].iloc[0]) < 1e-9
    assert np.abs(m["shap_func"].iloc[1:]).max() > 1e-6  # not zero for the others


def test_shapley_does_not_depend_on_the_batch_size(fit3):
    est, X, _ = fit3
    a = fusion_shapley(est, X)
    b = fusion_shapley(est, X, batch_size=7)
    # float32 matrix products differ in the last bits with the batch shape
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=0, atol=1e-4)
    # rows follow X's order
    sub = {m: X[m][10:15] for m in X}
    np.testing.assert_allclose(fusion_shapley(est, sub).to_numpy(), a.iloc[10:15].to_numpy(), atol=1e-4)
    with pytest.raises(UsageError, match="batch_size"):
        fusion_shapley(est, X, batch_size=0)


def test_baselines_unfitted_and_foreign_estimators_are_refused(fit2):
    _, X, y = fit2
    late = BaselineRegressor(kind="late", **TINY).fit(X, y)
    for fn in (fusion_shapley, modality_shapley):
        with pytest.raises(UsageError, match="BaselineRegressor"):
            fn(late, X)
        with pytest.raises(UsageError, match="not fitted"):
            fn(PIDRegressor(), X)
        with pytest.raises(UsageError, match="PIDRegressor"):
            fn(object(), X)
    with pytest.raises(UsageError, match="BaselineRegressor"):
        local_information(late, X, y, reference_latents=late.transform(X), reference_age=y)


def test_five_modalities_are_too_many_fusion_terms_but_not_too_many_modalities():
    rng = np.random.default_rng(0)
    X = {f"m{i}": rng.normal(size=(64, 3)) for i in range(5)}
    est = PIDRegressor(**{**TINY, "latent_dim": 2, "max_epochs": 1}).fit(X, rng.normal(size=64))
    with pytest.raises(UsageError, match="15 players"):  # 5 modalities + 10 pairs
        fusion_shapley(est, X)
    df = modality_shapley(est, X)
    np.testing.assert_allclose(df["baseline_age"] + df[_shap_cols(df)].sum(axis=1), df["predicted_age"],
                               atol=1e-9)


def test_inputs_that_predict_refuses_are_refused(fit2):
    est, X, _ = fit2
    with pytest.raises(UsageError, match="lacks modalities"):
        fusion_shapley(est, {"anat": X["anat"]})


# -------------------------------------------------------- local information


def test_gaussianize_like_matches_the_inverse_normal_transform_on_the_reference():
    ref = np.array([30.0, 20.0, 20.0, 50.0, 40.0, 20.0, 60.0])
    np.testing.assert_allclose(gaussianize_like(ref, ref), inverse_normal_transform(ref), atol=1e-12)
    g = gaussianize_like([0.0, 25.0, 35.0, 99.0], ref)
    n = ref.size
    # below the reference: the lowest reference position; above it: n / (n + 1) (the clip
    # bound 1 - 0.5 / (n + 1) is not reached, as the rank grid itself is shifted down)
    assert g[0] == pytest.approx(stats.norm.ppf(0.5 / (n + 1)))
    assert g[-1] == pytest.approx(stats.norm.ppf(n / (n + 1)))
    assert np.all(np.diff(g) > 0)
    with pytest.raises(UsageError, match="non-finite"):
        gaussianize_like([np.nan], ref)


def _gaussian_reference(n=5000, seed=0):
    rng = np.random.default_rng(seed)
    g0 = rng.standard_normal(n)
    age = 55 + 12 * g0
    # known covariance: z1 carries g in its first dimension, z2 mixes g and the noise of z1
    e = rng.standard_normal((n, 4))
    z1 = np.c_[g0 + e[:, 0], e[:, 1]]
    z2 = np.c_[0.5 * g0 + 0.8 * e[:, 0] + e[:, 2], e[:, 3]]
    return age, {"a": z1, "b": z2}


def test_mean_local_information_over_the_reference_is_the_plug_in_mutual_information():
    age, lat = _gaussian_reference()
    df = local_information_from_latents(lat, age, reference_latents=lat, reference_age=age)
    assert list(df.columns) == ["gaussian_age", "local_info_a", "local_info_b", "local_info_joint"]
    g = inverse_normal_transform(age)
    np.testing.assert_allclose(df["gaussian_age"], g, atol=1e-12)
    pid = gaussian_pid(g, lat["a"], lat["b"], bias_correction=False)
    assert df["local_info_a"].mean() == pytest.approx(pid.I1, abs=1e-8)
    assert df["local_info_b"].mean() == pytest.approx(pid.I2, abs=1e-8)
    assert df["local_info_joint"].mean() == pytest.approx(pid.I12, abs=1e-8)
    # and near the population values, from the known covariance of [g, z1, z2]
    mix = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0.5, 0.8, 0, 1, 0], [0, 0, 0, 0, 1.0]])
    cov = mix @ mix.T

    def population_bits(idx):
        c = cov[0, idx]
        return -0.5 * math.log2(1 - c @ np.linalg.solve(cov[np.ix_(idx, idx)], c) / cov[0, 0])

    assert pid.I1 == pytest.approx(population_bits([1, 2]), abs=0.04)  # 0.5 bit
    assert pid.I2 == pytest.approx(population_bits([3, 4]), abs=0.04)  # 0.10 bit
    assert pid.I12 == pytest.approx(population_bits([1, 2, 3, 4]), abs=0.04)  # 0.53 bit


def test_mean_local_information_in_one_dimension_is_the_closed_form():
    rng = np.random.default_rng(1)
    n, rho = 5000, 0.6
    g0 = rng.standard_normal(n)
    z = rho * g0 + math.sqrt(1 - rho**2) * rng.standard_normal(n)
    age = 40 + 15 * g0
    df = local_information_from_latents({"m": z}, age, reference_latents={"m": z}, reference_age=age)
    truth = -0.5 * math.log2(1 - rho**2)
    assert df["local_info_m"].mean() == pytest.approx(truth, abs=0.04)
    # one modality: the joint is the same model
    np.testing.assert_allclose(df["local_info_joint"], df["local_info_m"], atol=1e-12)
    # pointwise: positive where the latent points to the participant's age, negative against it
    new = local_information_from_latents({"m": np.array([2.0, -2.0])}, [40 + 30, 40 + 30],
                                         reference_latents={"m": z}, reference_age=age)
    assert new["local_info_m"].iloc[0] > 0 > new["local_info_m"].iloc[1]


def test_local_information_of_a_fitted_model(fit3):
    est, X, y = fit3
    ref = est.transform(X)
    df = local_information(est, X, y, reference_latents=ref, reference_age=y)
    assert list(df.columns) == ["gaussian_age", "local_info_anat", "local_info_func", "local_info_dwi",
                                "local_info_joint"]
    assert len(df) == 64 and np.all(np.isfinite(df.to_numpy()))
    g = inverse_normal_transform(y)
    pid = gaussian_pid(g, ref["anat"], np.c_[ref["func"], ref["dwi"]], bias_correction=False)
    assert df["local_info_anat"].mean() == pytest.approx(pid.I1, abs=1e-6)
    assert df["local_info_joint"].mean() == pytest.approx(pid.I12, abs=1e-6)
    # new participants are Gaussianised against the reference ages
    sub = {m: X[m][:5] for m in X}
    part = local_information(est, sub, y[:5], reference_latents=ref, reference_age=y)
    np.testing.assert_allclose(part.to_numpy(), df.iloc[:5].to_numpy(), atol=1e-4)


def test_singular_reference_covariance_gets_a_ridge(caplog):
    age, lat = _gaussian_reference(n=500)
    lat = {"a": np.c_[lat["a"], np.ones(500)], "b": lat["b"]}  # a constant latent dimension
    with caplog.at_level(logging.WARNING, logger="brainage.interpret.contributions"):
        df = local_information_from_latents(lat, age, reference_latents=lat, reference_age=age)
    assert "ridge" in caplog.text
    assert np.all(np.isfinite(df.to_numpy()))
    # the constant dimension carries nothing: same as without it
    plain = local_information_from_latents({"a": lat["a"][:, :2]}, age, reference_latents={"a": lat["a"][:, :2]},
                                           reference_age=age)
    np.testing.assert_allclose(df["local_info_a"], plain["local_info_a"], atol=1e-4)


def test_local_information_checks_its_inputs():
    age, lat = _gaussian_reference(n=50)
    with pytest.raises(UsageError, match="lack modalities"):
        local_information_from_latents(lat, age, reference_latents={"a": lat["a"]}, reference_age=age)
    with pytest.raises(UsageError, match="dimensions"):
        local_information_from_latents({"a": lat["a"][:, :1], "b": lat["b"]}, age,
                                       reference_latents=lat, reference_age=age)
    with pytest.raises(UsageError, match="shape"):
        local_information_from_latents(lat, age[:10], reference_latents=lat, reference_age=age)
    with pytest.raises(UsageError, match="two different"):
        local_information_from_latents(lat, age, reference_latents=lat, reference_age=np.ones(50))
