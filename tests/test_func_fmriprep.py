"""fMRIPrep input (``--derivatives``): the functional stage runs without the structural stage.

A tiny fMRIPrep-like folder is built from one simulated participant: its BOLD resampled
to MNI space with the simulator's true motion and geometry (what a perfect fMRIPrep
would give), fMRIPrep's file names, a brain mask and a confounds TSV with fMRIPrep's
columns (true motion, framewise displacement, WM and CSF means from the true tissue
maps). The command line then runs ``--modalities func --derivatives DIR`` on a fresh
output folder that has no structural result.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage.cli import main

TRUTH = "sourcedata/brainage-truth"
STEM = "sub-01_task-rest_space-MNI152NLin2009cAsym"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """One simulated participant (test preset, 4 mm BOLD, 60 volumes) and its fMRIPrep folder."""
    from brainage.func.motion import MOTION_COLUMNS
    from brainage.simulate import simulate_cohort
    from brainage.simulate.bold import true_bold_in_mni
    from brainage.templates import mni_grid

    base = tmp_path_factory.mktemp("fmriprep_input")
    root = simulate_cohort(base / "ds", n_subjects=1, preset="test", seed=3, n_volumes=60,
                           bold_voxel_size=4.0, patient_fraction=0.0)
    template, tmask = mni_grid(4.0)
    brain = np.asarray(tmask.dataobj) > 0
    data = true_bold_in_mni(root, "01", template, brain)
    func = base / "fmriprep" / "sub-01" / "func"
    func.mkdir(parents=True)
    img = nib.Nifti1Image(data, template.affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, func / f"{STEM}_desc-preproc_bold.nii.gz")
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), template.affine),
             func / f"{STEM}_desc-brain_mask.nii.gz")
    truth = root / TRUTH / "sub-01"
    motion = pd.read_csv(truth / "func" / "sub-01_task-rest_desc-motion_timeseries.tsv",
                         sep="\t")
    conf = motion[[*MOTION_COLUMNS, "framewise_displacement"]].copy()
    from nilearn.image import resample_to_img

    for column, label in (("white_matter", "WM"), ("csf", "CSF")):
        prob = resample_to_img(
            nib.load(next((truth / "anat").glob(f"*label-{label}_probseg.nii.gz"))), template,
            interpolation="linear", force_resample=True, copy_header=True)
        tissue = (np.asarray(prob.dataobj) > 0.5) & brain
        conf[column] = data[tissue].mean(axis=0)
    conf["global_signal"] = data[brain].mean(axis=0)
    conf.to_csv(func / "sub-01_task-rest_desc-confounds_timeseries.tsv", sep="\t", index=False,
                na_rep="n/a")
    config = base / "func.yaml"
    config.write_text("func:\n  min_volumes: 30\n  output_resolution: 4.0\n  maps: [alff]\n"
                      "run:\n  nprocs: 1\n")
    return {"root": root, "derivatives": base / "fmriprep", "config": config, "base": base}


def _run(simulated, out, derivatives):
    return main([str(simulated["root"]), str(out), "participant", "--modalities", "func",
                 "--derivatives", str(derivatives), "--config-file", str(simulated["config"])])


@pytest.mark.slow
def test_fmriprep_input_runs_func_without_the_structural_stage(simulated, tmp_path):
    out = tmp_path / "out"
    assert _run(simulated, out, simulated["derivatives"]) == 0
    sub = out / "sub-01"
    assert not (sub / "anat").exists()  # nothing structural was produced or needed
    record = json.loads((sub / "log" / "sub-01_desc-func_provenance.json").read_text())
    assert record["status"] == "done" and record["upstream"] == {}
    func = sub / "func"
    qc = json.loads((func / "sub-01_task-rest_desc-qc_bold.json").read_text())
    assert "fmriprep" in qc["source"] and "tissue_masks" not in qc
    assert {"white_matter", "csf"} <= set(qc["confound_regressors"])
    # the denoised parcels follow the simulator's true signals
    ours = pd.read_csv(func / "sub-01_task-rest_atlas-HarvardOxford_timeseries.tsv", sep="\t",
                       na_values="n/a")
    true = pd.read_csv(simulated["root"] / TRUTH / "sub-01" / "func" /
                       "sub-01_task-rest_atlas-HarvardOxford_timeseries.tsv", sep="\t")
    rows = ours[true.columns].notna().all(axis=1).to_numpy()
    r = [np.corrcoef(ours.loc[rows, c], true.loc[rows, c])[0, 1] for c in true.columns]
    assert np.median(r) > 0.6, np.median(r)
    name = "sub-01_task-rest_atlas-HarvardOxford_meas-PearsonCorrelation_relmat.tsv"
    est = pd.read_csv(func / name, sep="\t", index_col=0)
    ref = pd.read_csv(simulated["root"] / TRUTH / "sub-01" / "func" / name, sep="\t",
                      index_col=0)
    iu = np.triu_indices(len(ref), 1)
    rc = np.corrcoef(est.loc[ref.index, ref.columns].to_numpy()[iu], ref.to_numpy()[iu])[0, 1]
    assert rc > 0.7, rc


@pytest.mark.slow
def test_missing_fmriprep_confounds_is_a_clear_error(simulated, tmp_path, capsys):
    broken = tmp_path / "fmriprep"
    shutil.copytree(simulated["derivatives"], broken)
    (broken / "sub-01" / "func" / "sub-01_task-rest_desc-confounds_timeseries.tsv").unlink()
    out = tmp_path / "out"
    assert _run(simulated, out, broken) == 1
    record = json.loads((out / "sub-01" / "log" / "sub-01_desc-func_provenance.json").read_text())
    message = record["error"]["message"]
    assert "sub-01" in message and "desc-confounds_timeseries.tsv" in message
    assert "complete fMRIPrep output folder" in message and "func/sub-01_task-rest" in message


@pytest.mark.slow
def test_fmriprep_confounds_without_tissue_signals_is_a_clear_error(simulated, tmp_path):
    broken = tmp_path / "fmriprep"
    shutil.copytree(simulated["derivatives"], broken)
    path = broken / "sub-01" / "func" / "sub-01_task-rest_desc-confounds_timeseries.tsv"
    table = pd.read_csv(path, sep="\t")
    table.drop(columns=["csf"]).to_csv(path, sep="\t", index=False)
    out = tmp_path / "out"
    assert _run(simulated, out, broken) == 1
    record = json.loads((out / "sub-01" / "log" / "sub-01_desc-func_provenance.json").read_text())
    message = record["error"]["message"]
    assert path.name in message and "csf" in message


@pytest.mark.slow
def test_fmriprep_input_does_not_wait_for_a_failed_structural_stage(simulated, tmp_path):
    """anat and func requested, the T1w unreadable: anat fails, func still runs from fMRIPrep."""
    bids = tmp_path / "bids"
    shutil.copytree(simulated["root"], bids, ignore=shutil.ignore_patterns("sourcedata"))
    (bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--modalities", "anat", "func",
                 "--derivatives", str(simulated["derivatives"]),
                 "--config-file", str(simulated["config"]),
                 "--skip-bids-validation"])  # the validator would refuse the broken T1w up front
    assert code == 1  # the structural stage failed
    log = out / "sub-01" / "log"
    assert json.loads((log / "sub-01_desc-anat_provenance.json").read_text())["status"] == "failed"
    assert json.loads((log / "sub-01_desc-func_provenance.json").read_text())["status"] == "done"
    assert (out / "sub-01" / "func" / "sub-01_task-rest_desc-qc_bold.json").is_file()


@pytest.mark.slow
def test_fmriprep_func_only_runs_on_a_dataset_without_t1w(simulated, tmp_path, capsys):
    """fMRIPrep's outputs replace what the T1w is used for: a func-only run needs none."""
    bids = tmp_path / "bids"
    shutil.copytree(simulated["root"], bids, ignore=shutil.ignore_patterns("sourcedata"))
    shutil.rmtree(bids / "sub-01" / "anat")
    out = tmp_path / "out"
    assert _run({**simulated, "root": bids}, out, simulated["derivatives"]) == 0
    assert (out / "sub-01" / "func" / "sub-01_task-rest_desc-qc_bold.json").is_file()
    assert "no T1w" not in capsys.readouterr().err
    # without fMRIPrep input the functional stage needs the T1w: refused before any work
    code = main([str(bids), str(tmp_path / "out2"), "participant", "--modalities", "func",
                 "--config-file", str(simulated["config"])])
    assert code == 2
    assert "no T1w image found" in capsys.readouterr().err


@pytest.mark.slow
def test_changed_fmriprep_files_make_the_functional_stage_run_again(simulated, tmp_path):
    """The fMRIPrep files a run reads are part of the functional stage's fingerprint."""
    from brainage.bids import discover_inputs
    from brainage.config import load_config
    from brainage.parallel import plan_tasks
    from brainage.stages import resolve_stages

    deriv = tmp_path / "fmriprep"
    shutil.copytree(simulated["derivatives"], deriv)
    participants = discover_inputs(simulated["root"], modalities=["func"])
    stages = resolve_stages(["func"])
    config = load_config(simulated["config"])

    def plan():
        tasks, _ = plan_tasks(participants, stages, config, tmp_path / "out", tmp_path / "work",
                              derivatives_dir=deriv)
        (task,) = tasks
        return task

    first = plan()
    names = {Path(item["path"]).name for item in first.record["inputs"]}
    assert {f"{STEM}_desc-preproc_bold.nii.gz", f"{STEM}_desc-brain_mask.nii.gz",
            "sub-01_task-rest_desc-confounds_timeseries.tsv"} <= names
    assert plan().fingerprint == first.fingerprint  # deterministic
    confounds = deriv / "sub-01" / "func" / "sub-01_task-rest_desc-confounds_timeseries.tsv"
    table = pd.read_csv(confounds, sep="\t")
    table.loc[0, "csf"] += 1.0  # fMRIPrep rerun with a different result
    table.to_csv(confounds, sep="\t", index=False, na_rep="n/a")
    assert plan().fingerprint != first.fingerprint
