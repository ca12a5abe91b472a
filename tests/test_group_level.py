"""End to end: `brainage BIDS OUT group --train`, then `group --model` on a new cohort.

The derivatives are written directly (the tables the participant stages write), with
regional volumes and connectivity that follow age, so that the test runs in seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from brainage.bids import derivative_path
from brainage.cli import main
from brainage.outputs import atlas_entities, output_entities

from .conftest import write_bids_dataset

ATLAS = "HarvardOxford"
REGIONS = [(1, "Left_Frontal_Pole"), (2, "Right_Frontal_Pole"), (3, "Left_Insular_Cortex"),
           (4, "Right_Insular_Cortex"), (5, "Left_Superior_Frontal_Gyrus")]
CONFIG = """\
name: grouptest
group:
  inputs:
    anat: {kind: regional, atlas: HarvardOxford}
    func: {kind: connectivity, atlas: HarvardOxford}
  models: [ridge, pidreg]
  primary_model: pidreg
  model_params:
    pidreg: {max_epochs: 25, latent_dim: 4, hidden: [16], batch_size: 64}
  cv: {n_splits: 3, inner_splits: 3, seed: 0}
"""


def write_cohort(root, *, n=42, seed=0, sites=("siteA", "siteB"), regions=REGIONS, gap=6.0):
    """A BIDS dataset (participants.tsv) and derivatives whose features follow brain age."""
    rng = np.random.default_rng(seed)
    bids = write_bids_dataset(root / "bids", {}, participants=False)
    deriv = bids / "derivatives" / "brainage"
    age = rng.uniform(20, 80, n).round(1)
    patient = rng.random(n) < 0.3
    sex = rng.choice(["F", "M"], n)
    lines = ["participant_id\tage\tsex\tsite\tgroup"]
    for i in range(n):
        label = f"{i + 1:02d}"
        site = sites[i % len(sites)]
        lines.append(f"sub-{label}\t{age[i]}\t{sex[i]}\t{site}\t{'patient' if patient[i] else 'control'}")
        brain = age[i] + gap * patient[i]
        ents = {"subject": label}
        gm = [8.0 - 0.04 * brain + rng.normal(0, 0.15) for _ in regions]
        table = pd.DataFrame({"index": [k for k, _ in regions], "name": [nm for _, nm in regions],
                              "hemisphere": "left", "lobe": "frontal", "gm_volume_ml": gm})
        path = derivative_path(deriv, **ents, **atlas_entities(ATLAS))
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(path, sep="\t", index=False)
        out = output_entities(2.0)
        tissue = pd.DataFrame([{"gm_ml": 700 - 2.0 * brain + rng.normal(0, 10), "wm_ml": 500.0,
                                "csf_ml": 250 + 2.0 * brain, "tiv_ml": 1450 + rng.normal(0, 30),
                                "ventricles_ml": 10 + 0.5 * brain + rng.normal(0, 2)}])
        tissue.to_csv(derivative_path(deriv, **ents, **out["tissue_morph"]), sep="\t", index=False)
        derivative_path(deriv, **ents, **out["qc"]).write_text(
            json.dumps({"registration_similarity": 0.9, "registration_ok": True, "flags": []}))
        names = [nm for _, nm in regions]
        k = len(names)
        mat = np.zeros((k, k))
        for a in range(k):
            for b in range(a + 1, k):
                mat[a, b] = mat[b, a] = 0.8 - 0.006 * brain + rng.normal(0, 0.08)
        fe = {**ents, "task": "rest", "datatype": "func"}
        qc = derivative_path(deriv, **fe, desc="qc", suffix="bold", extension=".json")
        qc.parent.mkdir(parents=True, exist_ok=True)
        qc.write_text(json.dumps({"mean_fd": 0.2, "percent_scrubbed": 5.0, "flags": []}))
        frame = pd.DataFrame(mat, index=names, columns=names)
        frame.index.name = "name"
        frame.to_csv(derivative_path(deriv, **fe, atlas=ATLAS, meas="FisherZ", suffix="relmat",
                                     extension=".tsv"), sep="\t")
    (bids / "participants.tsv").write_text("\n".join(lines) + "\n")
    return bids, deriv


def write_func_maps(deriv, people, region, rng):
    """fALFF (one region ageing with the participant) and ReHo maps at res-6 for every participant."""
    import nibabel as nib

    from brainage.atlases import load_atlas
    from brainage.bids import TEMPLATE_SPACE, derivative_path

    grid = nib.Nifti1Image(np.zeros((31, 37, 31), np.float32), np.array(
        [[6.0, 0, 0, -90], [0, 6.0, 0, -126], [0, 0, 6.0, -72], [0, 0, 0, 1]]))
    labels = np.asarray(load_atlas("HarvardOxford").resample_to(grid).dataobj).astype(int)
    assert (labels == region).any()
    paths = {}
    for pid, age in zip(people["participant_id"], people["age"]):
        ents = {"subject": pid.removeprefix("sub-"), "task": "rest", "datatype": "func",
                "space": TEMPLATE_SPACE, "res": "6", "suffix": "boldmap", "extension": ".nii.gz"}
        falff = np.where(labels > 0, rng.uniform(0.3, 0.5, labels.shape), 0.0)
        falff[labels == region] = 0.2 + 0.005 * age + rng.normal(0, 0.005)
        reho = np.where(labels > 0, rng.uniform(0.2, 0.4, labels.shape), 0.0)
        for name, data in (("falff", falff), ("reho", reho)):
            path = derivative_path(deriv, **ents, desc=name)
            nib.save(nib.Nifti1Image(data.astype(np.float32), grid.affine), path)
            paths[pid, name] = path
    return paths


def train_group(bids, deriv, config_text, *, name="group.yaml"):
    """Write ``config_text`` beside ``bids`` and run ``group --train --no-report``; the exit code."""
    config = bids.parent / name
    config.write_text(config_text)
    return main([str(bids), str(deriv), "group", "--train", "--config-file", str(config), "--no-report"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("train")
    bids, deriv = write_cohort(root)
    return train_group(bids, deriv, CONFIG), bids, deriv


def test_train_writes_every_output(trained):
    code, bids, deriv = trained
    assert code == 0
    out = deriv / "group"
    for name in ("predictions", "exclusions", "groups"):
        assert (out / f"{name}.tsv").is_file() and (out / f"{name}.json").is_file()
    pred = pd.read_csv(out / "predictions.tsv", sep="\t")
    people = pd.read_csv(bids / "participants.tsv", sep="\t")
    assert set(pred["model"]) == {"ridge", "pidreg"}
    assert len(pred) == 2 * len(people)
    sidecar = json.loads((out / "predictions.json").read_text())
    assert set(pred.columns) <= set(sidecar)
    controls = pred[(pred["group"] == "control")]
    assert (controls["n_models"] == 1).all() and set(controls["fold"]) == {0, 1, 2}
    assert (pred.loc[pred["group"] == "patient", "n_models"] == 3).all()
    assert {"predicted_age_anat", "predicted_age_func"} <= set(pred.columns)
    metrics = json.loads((out / "metrics.json").read_text())
    ridge = metrics["models"]["ridge"]["controls"]
    # the features follow age closely: the cross-validated ridge is far better than the mean
    assert ridge["uncorrected"]["mae"] < 6.0
    assert ridge["uncorrected"]["mae_ci_low"] < ridge["uncorrected"]["mae"] < ridge["uncorrected"]["mae_ci_high"]
    assert len(ridge["per_fold"]) == 3
    assert "not accuracy" in metrics["note"]
    groups = pd.read_csv(out / "groups.tsv", sep="\t")
    overall = groups[groups["scope"] == "all"].iloc[0]
    assert overall["group"] == "patient" and overall["ci_low"] < overall["mean_gap"] < overall["ci_high"]
    assert {"site siteA", "site siteB", "pooled"} <= set(groups["scope"])
    pid = json.loads((out / "pid.json").read_text())
    assert pid["available"] and pid["units"] == "bits" and len(pid["per_fold"]) == 3
    gauss = pid["latent_gaussianity"]  # the PID's Gaussian model, checked on each fold's latents
    assert [g["fold"] for g in gauss] == [0, 1, 2]
    assert all(0.5 < g[m]["shapiro_w_mean"] <= 1 and g[m]["mardia_kurtosis_ratio"] > 0
               for g in gauss for m in ("anat", "func"))
    # each fold model's held-out PID is numbers in bits, not a repr string
    score = pid["held_out_pid_score"][0]["score"]["anat|func"]
    assert isinstance(score["U1"], float) and score["n"] >= 10 and score["bias_corrected"] is True
    assert (out / "model" / "extra.json").is_file()


def test_bundle_predicts_a_new_cohort(trained, tmp_path):
    _, _, deriv = trained
    bids2, deriv2 = write_cohort(tmp_path, n=30, seed=1)
    code = main([str(bids2), str(deriv2), "group", "--model", str(deriv / "group" / "model")])
    assert code == 0
    pred = pd.read_csv(deriv2 / "group" / "predictions.tsv", sep="\t")
    assert len(pred) == 30 and set(pred["fold"]) == {"bundle"} and set(pred["model"]) == {"pidreg"}
    metrics = json.loads((deriv2 / "group" / "metrics.json").read_text())
    assert metrics["applied_bundle"]["model"] == "pidreg"
    # the digest of the applied bundle is the one its training recorded
    trained_digest = json.loads((deriv / "group" / "provenance.json").read_text())["bundle_digest"]
    assert trained_digest.startswith("sha256:")
    assert metrics["applied_bundle"]["digest"] == trained_digest
    assert json.loads((deriv2 / "group" / "applied.json").read_text())["bundle_digest"] == trained_digest
    # the atlas PID of the new cohort's own controls, as a training run writes it for its cohort
    regions_pid = pd.read_csv(deriv2 / "group" / "regions_pid.tsv", sep="\t")
    assert len(regions_pid) > 0 and {"U_struct", "U_func", "R", "S"} <= set(regions_pid.columns)
    assert np.isfinite(metrics["models"]["pidreg"]["controls"]["uncorrected"]["mae"])
    # the reports of an applied bundle: one page per participant, said to come from a bundle
    report = (deriv2 / "reports" / "cohort.html").read_text()
    assert "a trained bundle applied to this cohort" in report
    assert len(list((deriv2 / "reports").glob("sub-*.html"))) == 30


def test_bundle_refuses_other_features(trained, tmp_path, capsys):
    _, _, deriv = trained
    bids2, deriv2 = write_cohort(tmp_path, n=20, seed=2, regions=REGIONS[:4])
    code = main([str(bids2), str(deriv2), "group", "--model", str(deriv / "group" / "model")])
    assert code == 4  # GroupLevelError: the cohort does not match the bundle
    err = capsys.readouterr().err
    assert "1 feature(s) of the bundle are missing (HarvardOxford_5)" in err


def test_corrupt_bundle_ends_with_the_bundle_exit_code(trained, tmp_path, capsys):
    import shutil

    _, _, deriv = trained
    bad = tmp_path / "model"
    shutil.copytree(deriv / "group" / "model", bad)
    (bad / "extra.json").write_text((bad / "extra.json").read_text()[:-20])
    bids2, deriv2 = write_cohort(tmp_path, n=20, seed=3)
    code = main([str(bids2), str(deriv2), "group", "--model", str(bad)])
    assert code == 3  # ModelBundleError
    assert "extra.json" in capsys.readouterr().err


def test_rerun_reuses_unchanged_results_and_redoes_changed_ones(tmp_path, capsys):
    bids, deriv = write_cohort(tmp_path, n=36, seed=4)
    config = tmp_path / "group.yaml"
    config.write_text(CONFIG.replace("models: [ridge, pidreg]", "models: [ridge]")
                      .replace("primary_model: pidreg", "primary_model: ridge")
                      .replace("    pidreg: {max_epochs: 25, latent_dim: 4, hidden: [16], batch_size: 64}\n", "")
                      .replace("  model_params:\n", ""))
    argv = [str(bids), str(deriv), "group", "--train", "--config-file", str(config), "--no-report"]
    assert main(argv) == 0
    predictions = deriv / "group" / "predictions.tsv"
    first = predictions.stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    assert "up to date" in capsys.readouterr().out
    assert predictions.stat().st_mtime_ns == first
    # one participant's regional volumes change: everything is redone
    table = next((deriv / "sub-01" / "anat").glob("*_desc-gm_morph.tsv"))
    frame = pd.read_csv(table, sep="\t")
    frame["gm_volume_ml"] += 1.0
    frame.to_csv(table, sep="\t", index=False)
    assert main(argv) == 0
    assert "up to date" not in capsys.readouterr().out
    assert predictions.stat().st_mtime_ns != first
    # functional maps appear that no model reads but the atlas PID does: redone, and read
    second = predictions.stat().st_mtime_ns
    write_func_maps(deriv, pd.read_csv(bids / "participants.tsv", sep="\t"), 3, np.random.default_rng(0))
    assert main(argv) == 0
    assert "up to date" not in capsys.readouterr().out
    assert predictions.stat().st_mtime_ns != second
    atlas_pid = pd.read_csv(deriv / "group" / "regions_pid.tsv", sep="\t")
    assert (atlas_pid["func_maps"] == "falff+reho").all()


def test_contributions_sum_to_each_out_of_fold_prediction(trained):
    _, bids, deriv = trained
    out = deriv / "group"
    contrib = pd.read_csv(out / "contributions.tsv", sep="\t")
    people = pd.read_csv(bids / "participants.tsv", sep="\t")
    assert len(contrib) == len(people) and set(contrib["model"]) == {"pidreg"}
    shap = [c for c in contrib.columns if c.startswith("shap_")]
    assert shap == ["shap_anat", "shap_func", "shap_anat|func"]
    # exact for controls (one fold model) and for patients (the mean over fold models is linear)
    np.testing.assert_allclose(contrib["baseline_age"] + contrib[shap].sum(axis=1), contrib["predicted_age"],
                               atol=1e-3)
    pred = pd.read_csv(out / "predictions.tsv", sep="\t")
    pid = pred[pred["model"] == "pidreg"].set_index("participant_id")["predicted_age"]
    np.testing.assert_allclose(contrib.set_index("participant_id")["predicted_age"], pid.loc[contrib["participant_id"]])
    assert {"local_info_anat", "local_info_func", "local_info_joint"} <= set(contrib.columns)
    assert np.isfinite(contrib[["local_info_anat", "local_info_joint"]]).all().all()
    # the regional volumes follow age closely: held-out controls' latents make their age more likely
    assert contrib.loc[contrib["group"] == "control", "local_info_anat"].mean() > 0.3
    sidecar = json.loads((out / "contributions.json").read_text())
    assert sidecar["shap_anat|func"]["Units"] == "years" and sidecar["local_info_joint"]["Units"] == "bits"


def test_regions_rank_the_atlas_regions_out_of_fold(trained):
    import nibabel as nib

    _, bids, deriv = trained
    out = deriv / "group"
    regions = pd.read_csv(out / "regions.tsv", sep="\t")
    assert list(regions.columns) == ["modality", "atlas", "level", "region", "index", "hemisphere", "lobe",
                                     "network", "attribution", "ci_low", "ci_high", "mean_signed", "rank",
                                     "n", "n_features"]
    assert set(regions["modality"]) == {"anat", "func"} and set(regions["level"]) == {"region", "lobe"}
    for _, block in regions.groupby(["modality", "level"]):
        assert block["rank"].min() == 1 and block["rank"].max() <= len(block)
        order = block.sort_values("rank")["attribution"].to_numpy()
        assert (np.diff(order) <= 1e-9).all()
    assert (regions["ci_low"] <= regions["attribution"]).all() and (regions["attribution"] <= regions["ci_high"]).all()
    anat = regions[(regions["modality"] == "anat") & (regions["level"] == "region")]
    assert {"Left_Frontal_Pole", "Lateral_Ventricles", "TIV"} <= set(anat["region"])
    assert json.loads((out / "regions.json").read_text())["attribution"]["Units"] == "years"
    people = pd.read_csv(out / "regions_participants.tsv", sep="\t")
    n_region_rows = int((regions["level"] == "region").sum())
    assert len(people) == len(pd.read_csv(bids / "participants.tsv", sep="\t")) * n_region_rows
    img = nib.load(out / "regions_anat_attribution.nii.gz")
    assert np.isclose(np.asarray(img.dataobj).max(), anat.loc[anat["index"].notna(), "attribution"].max(), atol=1e-5)
