"""The structural stage on fMRIPrep derivatives (``--derivatives DIR``), end to end.

A tiny fMRIPrep-like folder is built from simulated participants: the N4-corrected T1w
(``desc-preproc_T1w``), and the brain mask, ``dseg`` and ``label-{GM,WM,CSF}_probseg`` of the
participant's *true* anatomy, carried from the simulator's MNI-space truth into the T1w grid
through the true native → MNI map (``sourcedata/brainage-truth``). With perfect tissue maps
the stage's own accuracy is that of its registration and resampling.
"""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage.outputs import anat_outputs

TRUTH = "sourcedata/brainage-truth"
SPACE = "MNI152NLin2009aSym"


def _true_native_maps(root, sub):
    """The true GM/WM/CSF fractions and brain mask of ``sub`` on its T1w grid."""
    from brainage.simulate.geometry import native_to_mni, read_true_geometry, sample, voxel_points

    truth = root / TRUTH / f"sub-{sub}" / "anat"
    t1 = nib.load(root / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz")
    mni = native_to_mni(voxel_points(t1.shape, t1.affine), *read_true_geometry(root, sub))
    out = {}
    for label in ("GM", "WM", "CSF"):
        img = nib.load(truth / f"sub-{sub}_space-{SPACE}_res-2_label-{label}_probseg.nii.gz")
        out[label] = sample(img.get_fdata(), img.affine, mni).reshape(t1.shape).astype(np.float32)
    out["mask"] = (out["GM"] + out["WM"] + out["CSF"] > 0.5).astype(np.uint8)
    return t1, out


def _fmriprep_folder(root, subjects, dest):
    """Write fMRIPrep-named anatomical derivatives of ``subjects`` under ``dest``."""
    from brainage.anat.bias import n4
    from brainage.antsutils import to_ants, to_nibabel

    dest.mkdir(parents=True)
    (dest / "dataset_description.json").write_text(json.dumps({
        "Name": "fMRIPrep - fMRI PREProcessing workflow", "BIDSVersion": "1.8.0",
        "DatasetType": "derivative", "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.0"}],
    }))
    for sub in subjects:
        t1, maps = _true_native_maps(root, sub)
        anat = dest / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True)
        corrected, _ = n4(to_ants(nib.Nifti1Image(np.asarray(t1.dataobj, np.float32), t1.affine)),
                          shrink_factor=2, iterations=(20, 20))
        nib.save(to_nibabel(corrected), anat / f"sub-{sub}_desc-preproc_T1w.nii.gz")
        nib.save(nib.Nifti1Image(maps["mask"], t1.affine), anat / f"sub-{sub}_desc-brain_mask.nii.gz")
        for label in ("GM", "WM", "CSF"):
            nib.save(nib.Nifti1Image(maps[label], t1.affine),
                     anat / f"sub-{sub}_label-{label}_probseg.nii.gz")
        stack = np.stack([maps["GM"], maps["WM"], maps["CSF"]])
        dseg = np.where(maps["mask"] > 0, stack.argmax(0) + 1, 0).astype(np.uint8)  # 1 GM 2 WM 3 CSF
        nib.save(nib.Nifti1Image(dseg, t1.affine), anat / f"sub-{sub}_dseg.nii.gz")
    return dest


@pytest.fixture(scope="module")
def fmriprep_run(tmp_path_factory):
    """Two simulated participants; sub-02's fMRIPrep WM map is missing."""
    from brainage.bids import discover_inputs
    from brainage.config import load_config
    from brainage.parallel import run_participants
    from brainage.simulate import simulate_cohort
    from brainage.stages import resolve_stages

    tmp = tmp_path_factory.mktemp("fmriprep")
    root = simulate_cohort(tmp / "ds", n_subjects=2, preset="test", seed=6)
    fmriprep = _fmriprep_folder(root, ["01", "02"], tmp / "fmriprep")
    (fmriprep / "sub-02" / "anat" / "sub-02_label-WM_probseg.nii.gz").unlink()
    cfg = load_config("demo")
    cfg = cfg.model_copy(update={"anat": cfg.anat.model_copy(update={"atlases": ["HarvardOxford"]})})
    out = tmp / "out"
    summary = run_participants(discover_inputs(root, modalities=("anat",)), resolve_stages(["anat"]),
                               cfg, out, nprocs=1, derivatives_dir=fmriprep)
    return root, fmriprep, out, summary


@pytest.mark.slow
def test_fmriprep_inputs_are_used_and_give_accurate_maps(fmriprep_run):
    root, fmriprep, out, summary = fmriprep_run
    assert [r.subject for r in summary.done] == ["01"]
    o = anat_outputs(out, "01")
    for path in o.paths().values():
        assert path.is_file(), path
    qc = json.loads(o.qc.read_text())
    assert qc["input"] == "fmriprep"
    assert qc["registration_ok"] is True
    # fMRIPrep's tissue maps are used as they are (no N4, no Atropos of our own)
    theirs = nib.load(fmriprep / "sub-01" / "anat" / "sub-01_label-GM_probseg.nii.gz")
    ours = nib.load(o.gm)
    assert np.allclose(ours.get_fdata(), theirs.get_fdata(), atol=1e-5)
    voxel_ml = float(np.prod(theirs.header.get_zooms())) / 1000
    tissue = pd.read_csv(o.tissue_morph, sep="\t").iloc[0]
    assert tissue["gm_ml"] == pytest.approx(theirs.get_fdata().sum() * voxel_ml, rel=1e-3)
    true_tissue = pd.read_csv(root / TRUTH / "sub-01/anat/sub-01_desc-tissue_morph.tsv",
                              sep="\t").iloc[0]
    # the true maps carried onto the 4 mm T1w grid keep the true GM volume
    assert tissue["gm_ml"] == pytest.approx(true_tissue["gm_ml"], rel=0.05)
    # MNI GM map: only our registration and resampling stand between it and the truth; measured
    # r 0.812 (the 4 mm T1w grid of the test preset blurs the true map; our own segmentation of
    # the raw T1w gives 0.77-0.84 on this preset, tests/test_anat_stage.py)
    t_gm = nib.load(root / TRUTH / f"sub-01/anat/sub-01_space-{SPACE}_res-2_label-GM_probseg.nii.gz")
    mask = nib.load(root / TRUTH / f"sub-01/anat/sub-01_space-{SPACE}_res-2_desc-brain_mask.nii.gz"
                    ).get_fdata() > 0
    gm = nib.load(o.gm_mni).get_fdata()
    r = np.corrcoef(gm[mask], t_gm.get_fdata()[mask])[0, 1]
    print(f"fMRIPrep input: MNI GM r {r:.4f}, GM {tissue['gm_ml']:.1f} vs true {true_tissue['gm_ml']:.1f} mL")
    assert r >= 0.78, r
    regions = pd.read_csv(o.atlas_table("HarvardOxford"), sep="\t").merge(
        pd.read_csv(root / TRUTH / "sub-01/anat/sub-01_atlas-HarvardOxford_desc-gm_morph.tsv",
                    sep="\t"), on="index")
    assert np.corrcoef(regions["gm_volume_ml_x"], regions["gm_volume_ml_y"])[0, 1] > 0.95


@pytest.mark.slow
def test_missing_fmriprep_file_fails_that_participant_clearly(fmriprep_run):
    _, _, out, summary = fmriprep_run
    assert [r.subject for r in summary.failed] == ["02"]
    error = summary.failed[0].error
    assert "sub-02_label-WM_probseg.nii.gz" in error
    assert "missing" in error and "--derivatives" in error
    assert not (out / "sub-02" / "anat").exists()


@pytest.mark.slow
def test_changed_fmriprep_files_make_the_structural_stage_run_again(fmriprep_run, tmp_path):
    """fMRIPrep's anatomical files are part of the structural stage's fingerprint."""
    import shutil

    from brainage.bids import discover_inputs
    from brainage.config import load_config
    from brainage.parallel import plan_tasks
    from brainage.stages import resolve_stages

    root, fmriprep, out, _ = fmriprep_run
    cfg = load_config("demo")  # as in the fixture's run
    cfg = cfg.model_copy(update={"anat": cfg.anat.model_copy(update={"atlases": ["HarvardOxford"]})})
    participants = discover_inputs(root, participant_labels=["01"], modalities=("anat",))

    def plan(derivatives):
        return plan_tasks(participants, resolve_stages(["anat"]), cfg, out, tmp_path / "work",
                          derivatives_dir=derivatives)

    tasks, skipped = plan(fmriprep)
    assert skipped == ["sub-01:anat"] and tasks == []  # unchanged: up to date
    changed = tmp_path / "fmriprep"
    shutil.copytree(fmriprep, changed)
    gm = changed / "sub-01" / "anat" / "sub-01_label-GM_probseg.nii.gz"
    img = nib.load(gm)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * np.float32(0.9), img.affine), gm)
    tasks, skipped = plan(changed)
    assert skipped == [] and [t.subject for t in tasks] == ["01"]
    assert gm.name in {p["path"].rsplit("/", 1)[-1] for p in tasks[0].record["inputs"]}
