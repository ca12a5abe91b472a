"""Tests of brainage.stats.harmonize (ComBat): sva fixtures, pycombat cross-check, leakage, errors, splines."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from brainage.exceptions import StatsInputError
from brainage.stats.harmonize import ComBat, natural_spline_basis

FIXTURES = Path(__file__).parent / "fixtures" / "combat"
ATOL_R = 1e-6
REF = "siteB"

# sva::ComBat call of make_fixtures.R -> ComBat keyword arguments
SVA_CASES = {
    "parametric": {},  # par.prior = TRUE
    "nonparametric": {"parametric": False},  # par.prior = FALSE
    "ref_parametric": {"reference_batch": REF},  # ref.batch = "siteB"
    "ref_nonparametric": {"parametric": False, "reference_batch": REF},
    "ns3_parametric": {"nonlinear": ("age",), "spline_df": 3},  # mod = ~ ns(age, df = 3) + sex
}


def load_inputs():
    inp = pd.read_csv(FIXTURES / "inputs.csv", index_col="participant_id")
    X = inp[[c for c in inp.columns if c.startswith("f")]]
    return X, inp[["batch", "age", "sex"]]


def combat(**kw):
    return ComBat(**{"batch": "batch", "nonlinear": (), **kw})


def max_abs(a, b):
    return float(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float))))


# ------------------------------------------------------------------ reference values


@pytest.mark.parametrize("case", sorted(SVA_CASES))
def test_matches_sva_fixtures(case):
    X, cov = load_inputs()
    expected = pd.read_csv(FIXTURES / f"combat_{case}.csv", index_col="participant_id")
    out = combat(**SVA_CASES[case]).fit_transform(X, cov)
    assert list(out.columns) == list(expected.columns) and out.index.equals(expected.index)
    diff = max_abs(out, expected)
    print(f"{case}: max abs diff vs sva::ComBat = {diff:.2e}")
    assert diff < ATOL_R
    # the fixture moves the data: a do-nothing implementation could not pass
    assert max_abs(X, expected) > 1.0


@pytest.mark.parametrize("parametric", [True, False])
def test_reference_batch_returned_unchanged(parametric):
    X, cov = load_inputs()
    model = combat(reference_batch=REF, parametric=parametric).fit(X, cov)
    out = model.transform(X, cov)
    ref = (cov["batch"] == REF).to_numpy()
    np.testing.assert_array_equal(out[ref].to_numpy(), X[ref].to_numpy())
    assert max_abs(out[~ref], X[~ref]) > 1.0
    i = list(model.batches_).index(REF)
    assert np.all(model.gamma_star_[i] == 0) and np.all(model.delta_star_[i] == 1)
    # grand mean and pooled variance come from the reference batch only: shifting the
    # other batches (absorbed by their batch terms) leaves them unchanged
    shifted = X.copy()
    shifted.loc[~ref] += 25.0
    other = combat(reference_batch=REF, parametric=parametric).fit(shifted, cov)
    np.testing.assert_allclose(other.var_pooled_, model.var_pooled_, rtol=1e-9)
    np.testing.assert_allclose(other.grand_mean_, model.grand_mean_, rtol=1e-9)
    plain = combat(parametric=parametric)
    assert max_abs(plain.fit(shifted, cov).grand_mean_, plain.fit(X, cov).grand_mean_) > 10


def test_matches_pycombat_parametric():
    from pycombat import Combat

    X, cov = load_inputs()
    keep = np.column_stack([cov["age"].to_numpy(), (cov["sex"] == "M").to_numpy(float)])
    theirs = Combat(mode="p").fit(X.to_numpy(), cov["batch"].to_numpy(), X=keep)
    ours = combat().fit(X.to_numpy(), cov)
    diff = max_abs(theirs.transform(X.to_numpy(), cov["batch"].to_numpy(), X=keep),
                   ours.transform(X.to_numpy(), cov))
    print(f"max abs diff vs pycombat 0.20 = {diff:.2e}")
    assert diff < 1e-6
    np.testing.assert_allclose(ours.gamma_star_, theirs.gamma_, atol=1e-8)
    np.testing.assert_allclose(ours.delta_star_, theirs.delta_sq_, rtol=1e-8)


def test_without_empirical_bayes_each_site_is_standardized():
    X, cov = load_inputs()
    model = combat(empirical_bayes=False).fit(X, cov)
    np.testing.assert_array_equal(model.gamma_star_, model.gamma_hat_)
    covmat = np.column_stack([cov["age"], cov["sex"] == "M"]).astype(float)
    resid = model.transform(X, cov).to_numpy() - model.grand_mean_ - covmat @ model.beta_
    for b in model.batches_:
        r = resid[(cov["batch"] == b).to_numpy()]
        np.testing.assert_allclose(r.mean(axis=0), 0, atol=1e-9)
        np.testing.assert_allclose(r.var(axis=0, ddof=1), model.var_pooled_, rtol=1e-9)
    # with shrinkage the estimates differ (the EB step does something here)
    assert max_abs(combat().fit(X, cov).gamma_star_, model.gamma_star_) > 1e-3


# ---------------------------------------------------------------- leakage, held-out


def split(cov, seed=0, frac=0.3):
    rng = np.random.default_rng(seed)
    test = np.zeros(len(cov), bool)
    for b in cov["batch"].unique():
        rows = np.flatnonzero((cov["batch"] == b).to_numpy())
        test[rng.choice(rows, int(rows.size * frac), replace=False)] = True
    return test


def fitted_state(model):
    return {k: copy.deepcopy(v) for k, v in vars(model).items() if k.endswith("_")}


@pytest.mark.parametrize("kw", [{}, {"parametric": False}, {"reference_batch": REF},
                                {"nonlinear": ("age",)}], ids=str)
def test_held_out_rows_are_independent_and_nothing_is_refitted(kw):
    X, cov = load_inputs()
    test = split(cov)
    model = combat(**kw).fit(X[~test], cov[~test])
    state = fitted_state(model)
    Xt, ct = X[test], cov[test]
    out = model.transform(Xt, ct)

    # perturb some held-out participants: other rows and the parameters do not move
    rng = np.random.default_rng(1)
    hit = rng.random(len(Xt)) < 0.4
    Xp = Xt.copy()
    Xp.loc[hit] = Xp.loc[hit] * 3.0 + rng.normal(0, 50, (hit.sum(), Xt.shape[1]))
    outp = model.transform(Xp, ct)
    np.testing.assert_array_equal(outp[~hit].to_numpy(), out[~hit].to_numpy())
    assert max_abs(outp[hit], out[hit]) > 1.0

    # one participant at a time, or a subset, gives the same rows
    for i in range(0, len(Xt), 5):
        np.testing.assert_allclose(model.transform(Xt.iloc[[i]], ct.iloc[[i]]).to_numpy(),
                                   out.iloc[[i]].to_numpy(), rtol=0, atol=1e-12)
    sub = np.arange(len(Xt)) % 3 == 0
    np.testing.assert_allclose(model.transform(Xt[sub], ct[sub]), out[sub], rtol=0, atol=1e-12)
    # adding participants (training ones here) does not change the held-out rows either
    both = model.transform(pd.concat([Xt, X[~test]]), pd.concat([ct, cov[~test]]))
    np.testing.assert_allclose(both.iloc[: len(Xt)], out, rtol=0, atol=1e-12)

    after = fitted_state(model)
    assert after.keys() == state.keys()
    for k in state:
        np.testing.assert_equal(after[k], state[k], err_msg=k)


def test_fit_ignores_held_out_participants():
    X, cov = load_inputs()
    test = split(cov)
    a = combat().fit(X[~test], cov[~test])
    Xb = X.copy()
    Xb.loc[test] = Xb.loc[test] + 100.0  # held-out values are not seen by fit
    b = combat().fit(Xb[~test], cov[~test])
    np.testing.assert_array_equal(a.gamma_star_, b.gamma_star_)
    assert max_abs(combat().fit(X, cov).gamma_star_, a.gamma_star_) > 1e-6


def test_held_out_subset_with_one_batch_and_one_participant():
    X, cov = load_inputs()
    test = split(cov)
    model = combat().fit(X[~test], cov[~test])
    full = model.transform(X[test], cov[test])
    only_c = (cov["batch"][test] == "siteC").to_numpy()
    out = model.transform(X[test][only_c], cov[test][only_c])
    np.testing.assert_allclose(out, full[only_c], atol=1e-12)
    one = model.transform(X[test].iloc[:1].to_numpy(), cov[test].iloc[:1])
    assert isinstance(one, np.ndarray) and one.shape == (1, X.shape[1])
    # a single sex only: dummy coding stays that of fit
    males = (cov["sex"][test] == "M").to_numpy()
    np.testing.assert_allclose(model.transform(X[test][males], cov[test][males]), full[males], atol=1e-12)


def test_dataframe_and_array_types():
    X, cov = load_inputs()
    model = combat().fit(X, cov)
    out = model.transform(X, cov)
    assert isinstance(out, pd.DataFrame)
    assert out.index.equals(X.index) and out.columns.equals(X.columns)
    assert model.feature_names_in_.tolist() == X.columns.tolist()
    arr = combat().fit(X.to_numpy(), cov.reset_index(drop=True)).transform(X.to_numpy(), cov)
    assert isinstance(arr, np.ndarray) and arr.shape == X.shape
    np.testing.assert_allclose(arr, out.to_numpy(), atol=1e-12)
    # columns in another order: matched by name, returned in the caller's order
    cols = list(X.columns[::-1])
    np.testing.assert_allclose(model.transform(X[cols], cov), out[cols], atol=1e-12)
    assert list(model.transform(X[cols], cov).columns) == cols
    # scikit-learn conventions
    assert clone(model).get_params() == model.get_params()
    with pytest.raises(NotFittedError):
        combat().transform(X, cov)


# ---------------------------------------------------------------------------- errors


def test_unseen_batch_at_transform_is_named():
    X, cov = load_inputs()
    model = combat().fit(X, cov)
    bad = cov.iloc[:3].assign(batch=["siteA", "siteZ", "siteA"])
    with pytest.raises(StatsInputError, match=r"'siteZ' not seen at fit.*siteA"):
        model.transform(X.iloc[:3], bad)


def test_unseen_categorical_level_is_named():
    X, cov = load_inputs()
    model = combat().fit(X, cov)
    with pytest.raises(StatsInputError, match=r"'sex' has level\(s\) 'U' not seen at fit"):
        model.transform(X.iloc[:2], cov.iloc[:2].assign(sex=["U", "F"]))


def _fit_error(X, cov, match, **kw):
    with pytest.raises(StatsInputError, match=match):
        combat(**kw).fit(X, cov)


def test_fit_errors():
    X, cov = load_inputs()
    # a batch with one participant: named with its count
    lone = cov.copy()
    lone.iloc[0, 0] = "siteQ"
    _fit_error(X, lone, r"'siteQ' \(1\) have fewer than 2")
    # only one batch
    a = (cov["batch"] == "siteA").to_numpy()
    _fit_error(X[a], cov[a], r"one batch \('siteA'\).*at least two")
    # constant features, overall and within one batch
    _fit_error(X.assign(f3=5.0), cov, r"'f3' are constant across the training")
    Xc = X.copy()
    Xc.loc[a, "f5"] = 1.0
    _fit_error(Xc, cov, r"'f5' are constant within batch 'siteA'")
    # NaN in X and in covariates: the column is named
    Xn = X.copy()
    Xn.iloc[4, 6] = np.nan
    _fit_error(Xn, cov, r"NaN or infinite values in feature\(s\) 'f7'")
    _fit_error(X, cov.assign(age=cov["age"].where(np.arange(len(cov)) != 3)), r"column 'age'")
    _fit_error(X, cov.assign(sex=cov["sex"].where(np.arange(len(cov)) != 3)), r"column 'sex'")
    # missing covariate columns, named
    _fit_error(X, cov.drop(columns=["age", "sex"]), r"missing column\(s\) 'age', 'sex'")
    _fit_error(X, cov, r"missing column\(s\) 'site'", batch="site")
    # reference batch not present
    _fit_error(X, cov, r"reference_batch='siteX' is not a batch.*'siteA', 'siteB', 'siteC'",
               reference_batch="siteX")
    # length mismatch
    _fit_error(X.iloc[:-2], cov, r"length mismatch: X has 95, covariates has 97")
    # bad parameters
    _fit_error(X, cov, r"nonlinear: 'bmi' not in preserve", nonlinear=("bmi",))
    _fit_error(X, cov, r"covariate 'sex' is categorical", nonlinear=("sex",))
    # a covariate confounded with site
    _fit_error(X, cov.assign(scanner=cov["batch"].map({"siteA": 1.0, "siteB": 2.0, "siteC": 3.0})),
               r"rank deficient", preserve=("age", "sex", "scanner"))
    _fit_error(X[["f1"]], cov, r"at least 2, got 1")


def test_transform_errors():
    X, cov = load_inputs()
    model = combat().fit(X, cov)
    with pytest.raises(StatsInputError, match=r"missing: 'f8'.*unexpected: 'g8'"):
        model.transform(X.rename(columns={"f8": "g8"}), cov)
    with pytest.raises(StatsInputError, match=r"expected 8 features \(as at fit\), got 7"):
        model.transform(X.iloc[:, :7].to_numpy(), cov)
    with pytest.raises(StatsInputError, match=r"length mismatch: X has 5, covariates has 4"):
        model.transform(X.iloc[:5], cov.iloc[:4])
    with pytest.raises(StatsInputError, match=r"missing column\(s\) 'sex'"):
        model.transform(X, cov.drop(columns="sex"))
    Xn = X.iloc[:3].copy()
    Xn.iloc[1, 0] = np.inf
    with pytest.raises(StatsInputError, match=r"feature\(s\) 'f1'"):
        model.transform(Xn, cov.iloc[:3])
    with pytest.raises(StatsInputError, match=r"different order"):
        model.transform(X, cov.iloc[::-1])


# ---------------------------------------------------------------------- nonlinear age


def test_natural_spline_basis_is_linear_outside_the_knots():
    knots = np.array([20.0, 35.0, 50.0, 65.0, 80.0])
    for side in (np.linspace(-40, 20, 13), np.linspace(80, 140, 13)):
        second = np.diff(natural_spline_basis(side, knots), n=2, axis=0)
        np.testing.assert_allclose(second, 0, atol=1e-9)
    inside = np.diff(natural_spline_basis(np.linspace(20, 80, 13), knots), n=2, axis=0)
    assert np.abs(inside[:, 1:]).max() > 1e-3  # cubic between the knots
    # value and slope are continuous at the boundary knots
    eps = 1e-6
    for k in (20.0, 80.0):
        b = natural_spline_basis(np.array([k - eps, k, k + eps]), knots)
        np.testing.assert_allclose(b[1] - b[0], b[2] - b[1], atol=1e-9)


def test_spline_knots_come_from_training_and_extrapolate():
    X, cov = load_inputs()
    model = combat(nonlinear=("age",)).fit(X, cov)
    knots = model.spline_knots_["age"]
    assert knots.size == 4  # default df: 4 from 100 participants, max(2, n // 25) = 3 at n = 97
    np.testing.assert_allclose(knots[[0, -1]], [cov["age"].min(), cov["age"].max()])
    older = cov.iloc[[0, 0, 0]].assign(age=[100.0, 110.0, 120.0])
    out = model.transform(pd.concat([X.iloc[[0]]] * 3), older).to_numpy()
    np.testing.assert_allclose(out[2] - out[1], out[1] - out[0], atol=1e-9)  # linear beyond the range


def simulate_nonlinear_sites(seed, n_per_site=(90, 110, 100, 120), n_features=20, test_fraction=0.3):
    """Multi-site data with an inverted-U age effect and sites confounded with age.

    Sites cover different age ranges (8-35, 20-50, 40-70, 55-90 years); every
    feature follows a quadratic (inverted-U) age curve plus a sex effect and unit
    noise; site location and scale effects are centred (weighted mean location 0,
    mean squared scale 1) so that the site-free truth is the harmonization target.

    Returns
    -------
    X, truth : numpy.ndarray of shape (n, n_features)
        Observed data and the same data without site effects (same noise).
    covariates : pandas.DataFrame
        Columns site, age, sex.
    test : numpy.ndarray of bool
        Held-out participants (``test_fraction`` of each site).
    """
    rng = np.random.default_rng(seed)
    ranges = [(8, 35), (20, 50), (40, 70), (55, 90)][: len(n_per_site)]
    counts = np.asarray(n_per_site)
    si = np.repeat(np.arange(counts.size), counts)
    age = np.concatenate([rng.uniform(lo, hi, n) for (lo, hi), n in zip(ranges, counts)])
    n = age.size
    sex = rng.choice(["F", "M"], n)
    z = ((age - 50) / 20)[:, None]
    amp, slope = rng.normal(-3, 0.7, n_features), rng.normal(-1, 0.5, n_features)
    sex_eff = rng.normal(0.8, 0.3, n_features)
    noise = rng.standard_normal((n, n_features))
    truth = 10 + amp * z**2 + slope * z + sex_eff * (sex == "M")[:, None] + noise
    loc = rng.normal(0, 1.5, (counts.size, n_features))
    loc -= counts @ loc / n
    scale = np.exp(rng.normal(0, 0.3, (counts.size, n_features)))
    scale /= np.sqrt(counts @ scale**2 / n)
    X = truth + loc[si] + (scale[si] - 1) * noise
    cov = pd.DataFrame({"site": np.array([f"site{i}" for i in si]), "age": age, "sex": sex})
    test = np.zeros(n, bool)
    for i in range(counts.size):
        rows = np.flatnonzero(si == i)
        test[rng.choice(rows, int(rows.size * test_fraction), replace=False)] = True
    return X, truth, cov, test


def heldout_rmse(seed, **sim_kw):
    """Held-out RMSE to the site-free truth: raw data, linear ComBat, spline ComBat."""
    X, truth, cov, test = simulate_nonlinear_sites(seed, **sim_kw)
    res = {"rmse_raw": float(np.sqrt(np.mean((X[test] - truth[test]) ** 2)))}
    for name, nonlinear in (("linear", ()), ("spline", ("age",))):
        model = ComBat(batch="site", nonlinear=nonlinear).fit(X[~test], cov[~test])
        out = model.transform(X[test], cov[test])
        res[f"rmse_{name}"] = float(np.sqrt(np.mean((out - truth[test]) ** 2)))
    return res


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spline_beats_linear_on_nonlinear_age_confounded_with_site(seed):
    res = heldout_rmse(seed)
    print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in res.items()))
    assert res["rmse_spline"] < 0.7 * res["rmse_linear"]
    assert res["rmse_spline"] < 0.5 * res["rmse_raw"]  # and it does harmonize


@pytest.mark.parametrize(
    "kw",
    [{}, {"parametric": False, "reference_batch": REF}, {"nonlinear": ("age",), "spline_df": 3}],
    ids=["parametric", "ref-nonparametric", "spline"],
)
def test_round_trip_through_json(kw):
    import json

    X, cov = load_inputs()
    model = combat(**kw).fit(X, cov)
    again = ComBat.from_dict(json.loads(json.dumps(model.to_dict())))
    np.testing.assert_array_equal(again.transform(X, cov).to_numpy(), model.transform(X, cov).to_numpy())
    assert again.get_params() == model.get_params()
    with pytest.raises(StatsInputError, match="stored state lacks or mangles"):
        ComBat.from_dict({"params": model.to_dict()["params"], "state": {}})
