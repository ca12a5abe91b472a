"""Summaries of PID atoms across folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainage.exceptions import StatsInputError
from brainage.pid import gaussian_pid
from brainage.stats import pid_summary


def test_means_spread_and_fractions_by_hand():
    folds = [
        {"U1": 0.4, "U2": 0.0, "R": 0.4, "S": 0.2, "fold": 0},
        {"U1": 0.6, "U2": 0.2, "R": 0.2, "S": 0.0, "fold": 1},
    ]
    s = pid_summary(folds, n_boot=500)
    assert s["n_folds"] == 2
    assert s["U1"]["mean"] == pytest.approx(0.5)
    assert s["U1"]["sd"] == pytest.approx(np.std([0.4, 0.6], ddof=1))
    assert (s["R"]["min"], s["R"]["max"]) == (0.2, 0.4)
    assert s["fraction"] == pytest.approx({"U1": 0.5, "U2": 0.1, "R": 0.3, "S": 0.1})
    assert "I12" not in s  # only what was given is summarised


def test_interval_is_the_bootstrap_of_the_fold_mean(rng):
    values = rng.normal(0.3, 0.05, size=(10, 4)).clip(0)
    table = pd.DataFrame(values, columns=["U1", "U2", "R", "S"])
    s = pid_summary(table, n_boot=1000, seed=3)
    idx = np.random.default_rng(3).integers(0, 10, size=(1000, 10))
    means = values[idx].mean(axis=1)
    assert s["R"]["ci_low"] == pytest.approx(np.quantile(means[:, 2], 0.025))
    assert s["R"]["ci_high"] == pytest.approx(np.quantile(means[:, 2], 0.975))
    assert s["R"]["ci_low"] < s["R"]["mean"] < s["R"]["ci_high"]


def test_identical_folds_give_a_point_interval():
    s = pid_summary([{"U1": 0.1, "U2": 0.2, "R": 0.3, "S": 0.4}] * 5, n_boot=200)
    assert s["S"]["ci_low"] == pytest.approx(0.4) and s["S"]["ci_high"] == pytest.approx(0.4)
    assert s["S"]["sd"] == pytest.approx(0.0)


def test_accepts_pid_results(rng):
    results = []
    for _ in range(3):
        y = rng.standard_normal(300)
        results.append(gaussian_pid(y, y + rng.standard_normal(300), 0.5 * y + rng.standard_normal(300)))
    s = pid_summary(results, n_boot=200)
    assert s["I12"]["mean"] == pytest.approx(np.mean([r.I12 for r in results]))
    assert s["U1"]["mean"] == pytest.approx(np.mean([r.U1 for r in results]))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([], "no folds"),
        ([{"U1": 0.1, "U2": 0.1, "R": 0.1}], "missing S"),
        ([{"U1": 0.1, "U2": np.nan, "R": 0.1, "S": 0.0}], r"atoms_per_fold\[0\]: U2 is not a finite number"),
        (["U1"], r"atoms_per_fold\[0\]: expected a mapping"),
        ("U1", "expected a list"),
    ],
    ids=["empty", "missing-atom", "nan", "not-a-mapping", "string"],
)
def test_bad_input(data, match):
    with pytest.raises(StatsInputError, match=match):
        pid_summary(data)
