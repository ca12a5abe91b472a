"""Modality selection: the rule on fusion weights, the table, the preprocessing time saved."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from brainage.exceptions import UsageError
from brainage.interpret.selection import (
    coverage,
    mean_fusion_weights,
    modality_selection_report,
    preprocessing_saved,
    read_stage_seconds,
    recommend_subset,
    subsets_to_evaluate,
)
from brainage.stages import StageSpec, record_path

STAGES_OF = {"anat": "anat", "func": "func"}


# ------------------------------------------------------------------ the rule
@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ({"anat": 0.93, "func": 0.05, "anat|func": 0.02}, ["anat"]),
        ({"anat": 0.05, "func": 0.91, "anat|func": 0.04}, ["func"]),
        # anat alone covers 0.85: the joint term counts only with both kept, so both are needed
        ({"anat": 0.85, "func": 0.05, "anat|func": 0.10}, ["anat", "func"]),
        ({"anat": 0.90, "func": 0.10, "anat|func": 0.0}, ["anat"]),  # exactly the threshold
    ],
    ids=["anat-dominates", "func-dominates", "joint-needs-both", "at-threshold"],
)
def test_recommended_subset_follows_the_coverage_rule(weights, expected):
    subset, covered = recommend_subset(weights, ["anat", "func"])
    assert subset == expected
    assert covered == pytest.approx(coverage(weights, expected))
    assert covered >= 0.9 - 1e-12


def test_rule_takes_the_fewest_modalities_then_the_most_weight():
    mods = ["a", "b", "c"]
    # no single modality covers 0.9; among pairs, a+b covers 0.5 + 0.3 + 0.12 = 0.92 and
    # a+c 0.5 + 0.05 + 0.03 = 0.58; the three together cover 1
    weights = {"a": 0.5, "b": 0.3, "c": 0.05, "a|b": 0.12, "a|c": 0.03, "b|c": 0.0}
    assert recommend_subset(weights, mods) == (["a", "b"], pytest.approx(0.92))
    # the same weights with a lower threshold: a alone (0.5), then the best pair
    assert recommend_subset(weights, mods, threshold=0.5)[0] == ["a"]
    assert recommend_subset(weights, mods, threshold=0.95)[0] == ["a", "b", "c"]
    # two pairs reach the threshold: the one covering more wins
    tie = {"a": 0.44, "b": 0.46, "c": 0.45, "a|b": 0.0, "a|c": 0.0, "b|c": 0.0}
    tie = {k: v / sum(tie.values()) for k, v in tie.items()}
    assert recommend_subset(tie, mods, threshold=0.6)[0] == ["b", "c"]


def test_mean_fusion_weights_over_fold_models():
    folds = [{"fold": 0, "anat": 0.9, "func": 0.1, "anat|func": 0.0},
             {"fold": 1, "anat": 0.7, "func": 0.1, "anat|func": 0.2}]
    w = mean_fusion_weights(folds)
    assert w == pytest.approx({"anat": 0.8, "func": 0.1, "anat|func": 0.1})
    assert recommend_subset(w, ["anat", "func"])[0] == ["anat", "func"]  # 0.8 < 0.9


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"threshold": 0.0}, r"threshold: expected a fraction in \(0, 1\]"),
    ({"threshold": 1.5}, r"threshold: expected a fraction in \(0, 1\]"),
], ids=["zero", "above-one"])
def test_rule_refuses_a_threshold_outside_0_1(kwargs, match):
    with pytest.raises(UsageError, match=match):
        recommend_subset({"anat": 1.0}, ["anat"], **kwargs)


def test_rule_refuses_weights_of_other_modalities():
    with pytest.raises(UsageError, match=r"fusion weights name \['dwi'\]"):
        recommend_subset({"anat": 0.5, "dwi": 0.5}, ["anat", "func"])


# ------------------------------------------------------------------ the table
def _fake_run(n=40, seed=0):
    """Three modalities; a+b is the recommended proper subset, predicted out of fold."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n).round(1)
    keys = [f"sub-{i:02d}" for i in range(n)]
    parts = pd.DataFrame({"participant_id": keys, "age": age, "is_control": np.arange(n) % 4 != 0},
                         index=pd.Index(keys, name="key"))
    noise = {"a": 4.0, "b": 9.0, "c": 15.0, "a+b": 3.5, "full": 3.0}
    pred = {k: age + rng.normal(0, s, n) for k, s in noise.items()}
    predictions = pd.DataFrame({"fold": 0, "n_models": 1, "predicted_age": pred["full"],
                                "predicted_age_corrected": pred["full"],
                                **{f"predicted_age_{m}": pred[m] for m in "abc"}}, index=parts.index)
    subsets = pd.DataFrame({"a+b": pred["a+b"]}, index=parts.index)
    weights = [{"fold": k, "a": 0.5 + d, "b": 0.3 - d, "c": 0.05, "a|b": 0.12, "a|c": 0.03, "b|c": 0.0}
               for k, d in enumerate((-0.02, 0.0, 0.02))]
    run = SimpleNamespace(
        folds=[{"fold": w["fold"], "fusion_weights": w} for w in weights],
        predictions=predictions,
        modality_subsets={"predictions": subsets,
                          "seconds_per_participant": {"a": 1e-4, "b": 2e-4, "c": 3e-4, "a+b": 4e-4,
                                                      "a+c": 5e-4, "b+c": 6e-4, "a+b+c": 7e-4}},
    )
    return run, parts


def test_table_has_a_row_per_modality_the_recommended_subset_and_the_full_model(tmp_path):
    from brainage.stats.metrics import bootstrap_metrics

    run, parts = _fake_run()
    stages = {"a": "anat", "b": "anat", "c": "func"}
    rep = modality_selection_report(run, parts, tmp_path, stages)
    rows = rep["rows"]
    assert [(r["row"], r["subset"]) for r in rows] == [
        ("single", "a"), ("single", "b"), ("single", "c"), ("recommended", "a+b"), ("full", "a+b+c")]
    assert rep["recommended"] == ["a", "b"]
    assert rep["mean_fusion_weights"]["a"] == pytest.approx(0.5)
    assert rep["fusion_weights_range"]["a"] == pytest.approx([0.48, 0.52])
    controls = parts["is_control"].to_numpy()
    age = parts.loc[controls, "age"]
    expected = {"a": run.predictions["predicted_age_a"], "b": run.predictions["predicted_age_b"],
                "c": run.predictions["predicted_age_c"], "a+b": run.modality_subsets["predictions"]["a+b"],
                "a+b+c": run.predictions["predicted_age"]}
    for row in rows:
        acc = row["controls_uncorrected"]
        ref = bootstrap_metrics(age, expected[row["subset"]][controls], n_boot=2000, seed=0)
        assert acc["n"] == int(controls.sum())
        for k in ("mae", "mae_ci_low", "mae_ci_high", "r", "r_ci_low", "r_ci_high"):
            assert acc[k] == pytest.approx(ref[k])
        assert row["mae_minus_full"] == pytest.approx(acc["mae"] - rows[-1]["controls_uncorrected"]["mae"])
        assert row["inference_seconds_per_participant"] == run.modality_subsets[
            "seconds_per_participant"][row["subset"]]
    assert rows[-1]["mae_minus_full"] == 0.0
    assert rows[3]["fusion_weight_covered"] == pytest.approx(0.92)
    # no provenance under tmp_path: the time saved is not made up
    assert all(r["preprocessing_seconds_saved_per_participant"] is None for r in rows)
    assert "not a model retrained" in rep["note"] and "out-of-fold" in rep["note"]


def test_no_table_without_fusion_weights(tmp_path):
    run, parts = _fake_run()
    run.folds = [{"fold": 0}, {"fold": 1}]
    assert modality_selection_report(run, parts, tmp_path, {"a": "anat", "b": "anat", "c": "func"}) is None


def test_every_subset_is_evaluated_up_to_four_modalities():
    assert len(subsets_to_evaluate(list("abcd"))) == 15
    assert subsets_to_evaluate(list("abcde")) == [("a",), ("b",), ("c",), ("d",), ("e",),
                                                  tuple("abcde")]


# ------------------------------------------------------------------ preprocessing time saved
def _participant_level(bids, out, work, *, func_needs_anat=True):
    """Run two tiny stages in process, as the participant level does: records in sub-*/log/."""
    from brainage.bids import discover_inputs
    from brainage.config import load_config
    from brainage.parallel import plan_tasks
    from brainage.stages import execute_task

    anat = StageSpec("anat", "tests._stages:run_copy")
    func = StageSpec("func", "tests._stages:run_downstream",
                     requires=("anat",) if func_needs_anat else ())
    tasks, _ = plan_tasks(discover_inputs(bids), [anat, func], load_config("default"), out, work)
    for task in tasks:  # in dependency order
        assert execute_task(task).status == "done"
    return {(lab, st): json.loads(record_path(out, lab, st).read_text())
            for lab in ("01", "02", "03") for st in ("anat", "func")}


@pytest.fixture
def three_with_bold(bids_factory):
    return bids_factory({lab: [{"suffix": "T1w"}, {"suffix": "bold", "task": "rest"}]
                         for lab in ("01", "02", "03")})


def test_dropping_func_saves_the_func_stage_recorded_seconds(three_with_bold, tmp_path):
    out = tmp_path / "out"
    records = _participant_level(three_with_bold, out, tmp_path / "work")
    table = read_stage_seconds(out, ["sub-01", "02", "sub-03"], ["anat", "func"])
    assert len(table) == 6 and set(table.loc[table["stage"] == "func", "requires"]) == {"anat"}
    func_seconds = [records[(lab, "func")]["seconds"] for lab in ("01", "02", "03")]
    anat_only = preprocessing_saved(table, STAGES_OF, ["anat"])
    assert anat_only["seconds_per_participant"] == pytest.approx(float(np.median(func_seconds)))
    assert anat_only["stages_skipped"] == ["func"] and anat_only["n_participants"] == 3
    # the functional stage needs the structural one (its record's upstream): nothing is saved
    func_only = preprocessing_saved(table, STAGES_OF, ["func"])
    assert func_only["seconds_per_participant"] == 0.0 and func_only["stages_skipped"] == []
    assert preprocessing_saved(table, STAGES_OF, ["anat", "func"])["seconds_per_participant"] == 0.0


def test_without_the_anat_requirement_dropping_anat_saves_its_seconds(three_with_bold, tmp_path):
    # as with --derivatives (fMRIPrep): the functional stage's record has no anat upstream
    out = tmp_path / "out"
    records = _participant_level(three_with_bold, out, tmp_path / "work", func_needs_anat=False)
    table = read_stage_seconds(out, ["01", "02", "03"], ["anat", "func"])
    func_only = preprocessing_saved(table, STAGES_OF, ["func"])
    anat_seconds = [records[(lab, "anat")]["seconds"] for lab in ("01", "02", "03")]
    assert func_only["seconds_per_participant"] == pytest.approx(float(np.median(anat_seconds)))
    assert func_only["stages_skipped"] == ["anat"]


def test_failed_or_missing_records_are_not_counted(three_with_bold, tmp_path):
    out = tmp_path / "out"
    _participant_level(three_with_bold, out, tmp_path / "work")
    rec = json.loads(record_path(out, "02", "func").read_text())
    rec["status"] = "failed"
    record_path(out, "02", "func").write_text(json.dumps(rec))
    table = read_stage_seconds(out, ["01", "02", "03", "04"], ["anat", "func"])
    assert sorted(table["subject"].unique()) == ["01", "02", "03"]
    assert preprocessing_saved(table, STAGES_OF, ["anat"])["n_participants"] == 2


# ------------------------------------------------------------------ in the cross-validation
def test_fold_models_restricted_to_subsets_match_the_per_modality_predictions():
    import torch

    from brainage.config import GroupConfig
    from brainage.group.cv import cross_validate
    from tests._group import make_cohort

    torch.set_num_threads(1)
    cohort = make_cohort(36, seed=2)
    cfg = GroupConfig(models=["pidreg"], primary_model="pidreg", cv={"n_splits": 3, "inner_splits": 2},
                      bias_correction={"method": "none"},
                      model_params={"pidreg": {"max_epochs": 8, "latent_dim": 4, "hidden": [8],
                                               "batch_size": 64}})
    run = cross_validate(cohort, cfg).runs["pidreg"]
    subsets = run.modality_subsets
    pred = subsets["predictions"].reindex(run.predictions.index)
    assert list(pred.columns) == ["anat", "func", "anat+func"]
    np.testing.assert_allclose(pred["anat"], run.predictions["predicted_age_anat"], rtol=1e-6)
    np.testing.assert_allclose(pred["func"], run.predictions["predicted_age_func"], rtol=1e-6)
    np.testing.assert_allclose(pred["anat+func"], run.predictions["predicted_age"], rtol=1e-6)
    # every target of every fold is timed: the held-out controls once, the patients 3 times
    n_patients = int((~cohort.participants["is_control"]).sum())
    assert subsets["n_predicted"] == (len(cohort.participants) - n_patients) + 3 * n_patients
    assert all(s > 0 for s in subsets["seconds_per_participant"].values())


# ------------------------------------------------------------------ metrics.json of a training run
CONFIG = """\
name: selectiontest
group:
  inputs:
    anat: {kind: regional, atlas: HarvardOxford}
    func: {kind: connectivity, atlas: HarvardOxford}
  models: [pidreg]
  primary_model: pidreg
  bias_correction: {method: none}
  model_params:
    pidreg: {max_epochs: 10, latent_dim: 4, hidden: [8], batch_size: 64}
  cv: {n_splits: 3, inner_splits: 2, seed: 0}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import torch

    from brainage.writing import atomic_write_json
    from tests.test_group_level import train_group, write_cohort

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("selection")
    bids, deriv = write_cohort(root, n=30)
    # participant records as the runner leaves them (status, seconds, upstream), seconds known
    for i in range(30):
        label = f"{i + 1:02d}"
        for stage, seconds, upstream in (("anat", 40.0 + i, {}), ("func", 10.0 + i, {"anat": "x"})):
            atomic_write_json(record_path(deriv, label, stage),
                              {"subject": label, "stage": stage, "status": "done", "seconds": seconds,
                               "timings": {"load": 0.1}, "upstream": upstream})
    return train_group(bids, deriv, CONFIG), deriv


def test_metrics_json_of_a_training_run_has_the_table(trained):
    code, deriv = trained
    assert code == 0
    metrics = json.loads((deriv / "group" / "metrics.json").read_text())
    pidreg = metrics["models"]["pidreg"]
    sel = pidreg["modality_selection"]
    rows = {r["row"] if r["row"] != "single" else r["subset"]: r for r in sel["rows"]}
    assert list(rows) == ["anat", "func", "recommended", "full"]
    weights = sel["mean_fusion_weights"]
    assert set(weights) == {"anat", "func", "anat|func"}
    assert sel["recommended"] == recommend_subset(weights, ["anat", "func"])[0]
    # the same numbers as the rest of metrics.json: per_modality and the pooled uncorrected
    for m in ("anat", "func"):
        assert rows[m]["controls_uncorrected"]["mae"] == pytest.approx(
            pidreg["controls"]["per_modality"][m]["mae"])
    full, pooled = rows["full"]["controls_uncorrected"], pidreg["controls"]["uncorrected"]
    for k in ("n", "mae", "mae_ci_low", "mae_ci_high", "r", "r_ci_low", "r_ci_high"):
        assert full[k] == pytest.approx(pooled[k])
    # the median over the whole cohort (patients are preprocessed too) of the func seconds
    func_median = float(np.median(10.0 + np.arange(30)))
    assert rows["anat"]["preprocessing_seconds_saved_per_participant"] == pytest.approx(func_median)
    assert rows["func"]["preprocessing_seconds_saved_per_participant"] == 0.0
    assert rows["full"]["preprocessing_seconds_saved_per_participant"] == 0.0
    assert all(r["inference_seconds_per_participant"] > 0 for r in sel["rows"])
    assert "not a model retrained" in sel["note"]
