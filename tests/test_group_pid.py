"""Held-out PID of the group level: from out-of-fold per-modality predictions, against exact atoms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainage.group.cv import ModelRun
from brainage.group.summary import held_out_pid, pid_report
from brainage.pid import gaussian_pid_from_cov
from brainage.simulate.latent import latent_covariance


def _run(n, a_s=2.5, a_f=1.0, rho=-0.3, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(n)
    noise = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], n)
    s, f = a_s * g + noise[:, 0], a_f * g + noise[:, 1]
    keys = [f"sub-{i:04d}" for i in range(n)]
    age = 50 + 17 * g
    parts = pd.DataFrame({"age": age, "is_control": True}, index=keys)
    # Monotone, non-linear maps of each latent to years: the PID of ranks does not change.
    preds = pd.DataFrame({"fold": 0, "n_models": 1, "predicted_age": age,
                          "predicted_age_corrected": age,
                          "predicted_age_anat": 40 + 10 * np.tanh(s / 3),
                          "predicted_age_func": np.exp(f / 4) * 30}, index=keys)
    folds = [{"fold": 0, "pid": {"anat|func": {"U1": 1.0, "U2": 0.0, "R": 0.5, "S": 0.1}}}]
    truth = gaussian_pid_from_cov(latent_covariance(a_s, a_f, rho), 1, 1)
    return ModelRun(name="pidreg", predictions=preds, folds=folds), parts, truth


def test_held_out_atoms_recover_the_exact_pid_of_the_latents():
    run, parts, truth = _run(4000)
    out = held_out_pid(run, parts, n_boot=200)
    assert out["pair"] == "anat|func" and out["n"] == 4000
    for atom in ("U1", "U2", "R", "S"):
        assert out[atom] == pytest.approx(getattr(truth, atom), abs=0.05), atom
        assert out[f"{atom}_ci_low"] <= out[atom] <= out[f"{atom}_ci_high"]


def test_held_out_pid_uses_controls_only_and_needs_twenty():
    run, parts, _ = _run(60, seed=1)
    parts.loc[parts.index[:45], "is_control"] = False
    assert held_out_pid(run, parts) is None  # 15 controls
    parts.loc[parts.index[:20], "is_control"] = True
    assert held_out_pid(run, parts, n_boot=50)["n"] == 35


def test_pid_report_carries_the_held_out_estimate():
    run, parts, _ = _run(200, seed=2)
    report = pid_report(run, parts)
    assert report["available"] and report["held_out"]["n"] == 200
    assert "out-of-sample estimate to quote" in report["note"]


def test_pid_report_says_why_a_pidreg_has_no_atoms():
    run, parts, _ = _run(50, seed=3)
    reason = "too few samples for a Gaussian PID: n=27, but the joint has 33 dimensions"
    run.folds = [{"fold": 0, "pid_unavailable": {"anat|func": reason}}]
    report = pid_report(run, parts)
    assert not report["available"]
    assert report["unavailable"] == [{"fold": 0, "pair": "anat|func", "reason": reason}]
    assert reason in report["note"] and "only PIDReg" not in report["note"]
