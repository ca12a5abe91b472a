"""Brain-age accuracy metrics and their bootstrap intervals."""

from __future__ import annotations

import doctest
import importlib
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import r2_score

from brainage.exceptions import StatsInputError
from brainage.stats import bootstrap_metrics, brain_age_metrics
from brainage.stats.metrics import METRICS


def test_hand_checked_case():
    # gap = [10, 0, -10, -20]; Σ(y - ȳ)² = 2000; Σ gap² = 600
    m = brain_age_metrics([20, 40, 60, 80], [30, 40, 50, 60])
    assert m["n"] == 4 and m["age_min"] == 20 and m["age_max"] == 80
    assert m["mae"] == pytest.approx(10.0)
    assert m["rmse"] == pytest.approx(math.sqrt(150.0))
    assert m["r"] == pytest.approx(1.0)
    assert m["r2"] == pytest.approx(1 - 600 / 2000)
    assert m["gap_age_slope"] == pytest.approx(-0.5)
    assert m["gap_age_spearman"] == pytest.approx(-1.0)


def test_agrees_with_scipy_and_sklearn(rng):
    age = rng.uniform(18, 90, 137)
    pred = 0.7 * age + 15 + rng.normal(0, 6, age.size)
    m = brain_age_metrics(age, pred)
    gap = pred - age
    assert m["r"] == pytest.approx(stats.pearsonr(age, pred).statistic, abs=1e-12)
    assert m["r2"] == pytest.approx(r2_score(age, pred), abs=1e-12)
    assert m["gap_age_slope"] == pytest.approx(stats.linregress(age, gap).slope, abs=1e-12)
    assert m["gap_age_spearman"] == pytest.approx(stats.spearmanr(gap, age).statistic, abs=1e-12)
    assert m["mae"] == pytest.approx(np.mean(np.abs(gap)))


def test_r2_is_negative_for_predictions_worse_than_the_mean():
    age = np.array([20.0, 30, 40, 50, 60])
    m = brain_age_metrics(age, age[::-1])
    assert m["r2"] < 0 and m["r"] == pytest.approx(-1.0)


def test_constant_predictions_give_nan_correlation():
    m = brain_age_metrics([20, 30, 40, 50], [35, 35, 35, 35])
    assert math.isnan(m["r"])
    assert m["mae"] == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("age", "pred", "match"),
    [
        ([20, np.nan, 40], [20, 30, 40], r"^age: 1 NaN"),
        ([20, 30, 40], [20, 30, np.inf], r"^predicted_age: 1 NaN or infinite value\(s\), first at position 2"),
        ([20, 30, 40], [20, 30], r"length mismatch: age has 3, predicted_age has 2"),
        ([20, 30], [20, 30], r"at least 3 participants"),
        ([30, 30, 30], [20, 30, 40], r"same age"),
        ([[20, 30], [40, 50]], [1, 2, 3, 4], r"one-dimensional"),
        (["a", "b", "c"], [1, 2, 3], r"^age: expected numbers"),
    ],
    ids=["nan-age", "inf-pred", "length", "too-few", "constant-age", "2d", "strings"],
)
def test_bad_input_names_the_argument(age, pred, match):
    with pytest.raises(StatsInputError, match=match):
        brain_age_metrics(age, pred)


def test_bootstrap_matches_a_direct_resampling_loop(rng):
    age = rng.uniform(20, 80, 60)
    pred = age + rng.normal(0, 5, age.size)
    out = bootstrap_metrics(age, pred, n_boot=300, seed=7)
    idx = np.random.default_rng(7).integers(0, age.size, size=(300, age.size))
    mae = [np.mean(np.abs(pred[i] - age[i])) for i in idx]
    rho = [stats.spearmanr(pred[i] - age[i], age[i]).statistic for i in idx]
    assert out["mae_ci_low"] == pytest.approx(np.quantile(mae, 0.025))
    assert out["mae_ci_high"] == pytest.approx(np.quantile(mae, 0.975))
    assert out["gap_age_spearman_ci_low"] == pytest.approx(np.quantile(rho, 0.025))
    assert out["gap_age_spearman_ci_high"] == pytest.approx(np.quantile(rho, 0.975))


def test_bootstrap_intervals_contain_estimates_and_are_seeded(rng):
    age = rng.uniform(20, 80, 120)
    pred = 0.8 * age + 10 + rng.normal(0, 5, age.size)
    a = bootstrap_metrics(age, pred, n_boot=400, seed=1)
    assert a == bootstrap_metrics(age, pred, n_boot=400, seed=1)
    assert a != bootstrap_metrics(age, pred, n_boot=400, seed=2)
    for k in METRICS:
        assert a[f"{k}_ci_low"] < a[k] < a[f"{k}_ci_high"], k
    assert a["n_boot"] == 400 and a["confidence"] == 0.95


def test_bootstrap_mae_interval_covers_the_truth():
    # Population MAE of N(0, 5) errors is 5·sqrt(2/π); a 95 % interval should cover it in
    # roughly 95 % of samples (here at least 85 of 100 seeded samples).
    truth = 5 * math.sqrt(2 / math.pi)
    hits = 0
    for seed in range(100):
        r = np.random.default_rng(seed)
        age = r.uniform(20, 80, 80)
        out = bootstrap_metrics(age, age + r.normal(0, 5, 80), n_boot=200, seed=seed)
        hits += out["mae_ci_low"] <= truth <= out["mae_ci_high"]
    assert hits >= 85


@pytest.mark.parametrize(("kwargs", "match"), [({"n_boot": 10}, "n_boot"), ({"confidence": 1.5}, "confidence")])
def test_bootstrap_refuses_bad_settings(kwargs, match):
    with pytest.raises(StatsInputError, match=match):
        bootstrap_metrics([20, 30, 40, 50], [21, 29, 41, 52], **kwargs)


@pytest.mark.parametrize("module", ["metrics", "bias", "atoms", "_validate", "groups", "sites", "harmonize"])
def test_docstring_examples_run(module):
    mod = importlib.import_module(f"brainage.stats.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
