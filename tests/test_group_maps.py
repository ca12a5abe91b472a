"""The 3D CNN path of the group level: MNI maps streamed from disk, trained, bundled and applied.

Tiny volumes (12 × 14 × 12 voxels) whose intensity follows brain age stand in for the
structural and functional maps, so that cross-validated CNNs train in seconds.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage.bids import TEMPLATE_SPACE, derivative_path
from brainage.cli import main
from brainage.outputs import output_entities

from .test_group_level import train_group, write_cohort

SHAPE = (12, 14, 12)
CONFIG = """\
name: mapstest
group:
  inputs:
    anat: {kind: maps, maps: [GM_modulated], resolution: 2}
    func: {kind: maps, maps: [falff], resolution: 4}
  models: [pidreg, unimodal_anat]
  primary_model: pidreg
  model_params:
    pidreg: {max_epochs: 4, latent_dim: 4, hidden: [8], batch_size: 8, lr: 0.01,
             encoders: {anat: {channels: [4, 8], final_channels: 8, input_pool: 2},
                        func: {channels: [4], final_channels: 4}}}
    unimodal_anat: {max_epochs: 4, latent_dim: 4, hidden: [8], batch_size: 8, lr: 0.01,
                    encoders: {anat: {channels: [4, 8], final_channels: 8}}}
  cv: {n_splits: 3, inner_splits: 2, seed: 0}
"""


def write_maps(bids, deriv, *, seed=0):
    """Write a GM map (res-2) and a fALFF map (res-4) per participant, brighter when younger."""
    rng = np.random.default_rng(seed)
    people = pd.read_csv(bids / "participants.tsv", sep="\t")
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    ents = output_entities(2.0)["gm_modulated_mni"]
    for row in people.itertuples():
        label = row.participant_id.removeprefix("sub-")
        brain = row.age + (6.0 if row.group == "patient" else 0.0)
        gm = (1.0 - brain / 100) + rng.normal(0, 0.05, SHAPE)
        nib.save(nib.Nifti1Image(gm.astype(np.float32), affine),
                 derivative_path(deriv, subject=label, **ents))
        falff = (0.5 - brain / 300) + rng.normal(0, 0.05, SHAPE)
        path = derivative_path(deriv, subject=label, datatype="func", task="rest", space=TEMPLATE_SPACE,
                               res="4", desc="falff", suffix="boldmap", extension=".nii.gz")
        nib.save(nib.Nifti1Image(falff.astype(np.float32), np.diag([4.0, 4.0, 4.0, 1.0])), path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("maps")
    bids, deriv = write_cohort(root, n=30)
    write_maps(bids, deriv)
    return train_group(bids, deriv, CONFIG, name="maps.yaml"), bids, deriv


def test_cnn_models_train_on_maps_out_of_fold(trained):
    code, _, deriv = trained
    assert code == 0
    out = deriv / "group"
    pred = pd.read_csv(out / "predictions.tsv", sep="\t")
    assert set(pred["model"]) == {"pidreg", "unimodal_anat"}
    controls = pred[pred["group"] == "control"]
    assert (controls["n_models"] == 1).all() and set(controls["fold"]) == {0, 1, 2}
    assert np.isfinite(pred["predicted_age"]).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["models"]["pidreg"]["cost"]["fit_seconds"] > 0
    config = json.loads((out / "model" / "config.json").read_text())
    specs = json.dumps(config)
    assert '"sfcn"' in specs and '"input_pool": 2' in specs


def test_cnn_bundle_applies_to_new_maps(trained, tmp_path):
    _, _, deriv = trained
    bids2, deriv2 = write_cohort(tmp_path, n=12, seed=5)
    write_maps(bids2, deriv2, seed=5)
    code = main([str(bids2), str(deriv2), "group", "--model", str(deriv / "group" / "model"), "--no-report"])
    assert code == 0
    pred = pd.read_csv(deriv2 / "group" / "predictions.tsv", sep="\t")
    assert len(pred) == 12 and np.isfinite(pred["predicted_age"]).all()


def test_cnn_bundle_refuses_maps_at_another_resolution(trained, tmp_path, capsys):
    _, _, deriv = trained
    bids2, deriv2 = write_cohort(tmp_path, n=12, seed=6)
    write_maps(bids2, deriv2, seed=6)
    for path in deriv2.rglob("*res-4_desc-falff_boldmap.nii.gz"):
        path.rename(path.with_name(path.name.replace("res-4", "res-3")))
    code = main([str(bids2), str(deriv2), "group", "--model", str(deriv / "group" / "model")])
    assert code == 4  # GroupLevelError
    assert "res-4" in capsys.readouterr().err


def test_small_cohorts_keep_maps_in_memory_and_large_ones_stream(trained):
    from brainage.cohort.data import load_cohort
    from brainage.config import load_config
    from brainage.group.transforms import FeatureTransforms, volume_cache

    _, bids, deriv = trained
    cfg = load_config(deriv.parents[2] / "maps.yaml").group
    cohort = load_cohort(bids, deriv, cfg)
    # 30 participants × (12·14·12 voxels × 2 maps) × 4 bytes ≈ 0.5 MB
    assert volume_cache(cohort, ["anat", "func"], 0.0) is None
    cache = volume_cache(cohort, ["anat", "func"], 0.001)
    assert cache == {}
    keys = list(cohort.participants.index)
    tf = FeatureTransforms()
    first = tf.inputs(cohort, keys[:20], ["anat"], cache)["anat"]
    _ = [first[i] for i in range(len(first))]
    assert len(cache) == 20
    second = tf.inputs(cohort, keys[10:], ["anat"], cache)["anat"]
    assert second[0] is cache[tuple(second.paths[0])]  # shared: no second read
    assert volume_cache(cohort, ["anat", "func"], 1e-4) is None  # over the budget: stream


def test_map_modalities_get_atlas_attributions(trained):
    """regions.tsv has rows for both map inputs (captum ablation on HarvardOxford, out of fold)."""
    _, _, deriv = trained
    out = deriv / "group"
    table = pd.read_csv(out / "regions.tsv", sep="\t")
    assert set(table["modality"]) == {"anat", "func"} and set(table["atlas"]) == {"HarvardOxford"}
    assert {"region", "lobe"} <= set(table["level"]) and np.isfinite(table["attribution"]).all()
    assert (out / "regions_func_attribution.nii.gz").exists()


def test_atlas_pid_reads_connectivity_beside_functional_maps(tmp_path):
    """A CNN on fALFF maps: the atlas PID takes each region's connectivity from the derivatives."""
    import torch

    torch.set_num_threads(1)
    bids, deriv = write_cohort(tmp_path, n=30)
    write_maps(bids, deriv)
    config = """\
name: mixedtest
group:
  inputs:
    anat: {kind: regional, atlas: HarvardOxford}
    func: {kind: maps, maps: [falff], resolution: 4}
  models: [pidreg]
  primary_model: pidreg
  model_params:
    pidreg: {max_epochs: 3, latent_dim: 4, hidden: [8], batch_size: 8,
             encoders: {func: {channels: [4], final_channels: 4}}}
  cv: {n_splits: 3, inner_splits: 2, seed: 0}
"""
    assert train_group(bids, deriv, config, name="mixed.yaml") == 0
    table = pd.read_csv(deriv / "group" / "regions_pid.tsv", sep="\t")
    assert len(table) > 0 and (table["n_edges"] > 0).all() and (table["n"] > 0).all()
    # the regions the fALFF grid covers add their mean fALFF to the connectivity components
    assert (table["func_maps"] == "falff").any()
    # the connectivity is read for this analysis only: the bundle's inputs are the models'
    spec = json.loads((deriv / "group" / "model" / "extra.json").read_text())["input_spec"]
    assert set(spec["inputs"]) == {"anat", "func"} and spec["inputs"]["func"]["kind"] == "maps"


def test_pidreg_on_maps_records_its_pid_atoms_per_fold(trained):
    code, _, deriv = trained
    assert code == 0
    pid = json.loads((deriv / "group" / "pid.json").read_text())
    # every fold of the CNN PIDReg says what became of its atoms: estimated, or why not
    folds = {row["fold"] for row in pid.get("per_fold", []) + pid.get("unavailable", [])}
    assert folds == {0, 1, 2}, pid
    assert "only PIDReg" not in pid["note"]


def test_group_train_with_the_disk_volume_cache_reads_the_same_maps(trained, tmp_path):
    import shutil

    from brainage.cohort.data import load_cohort
    from brainage.config import load_config
    from brainage.group.transforms import FeatureTransforms, volume_cache

    _, bids, deriv = trained
    copy = tmp_path / "deriv"
    shutil.copytree(deriv, copy, ignore=shutil.ignore_patterns("group"))
    config = (deriv.parents[2] / "maps.yaml").read_text().replace(
        "  cv: {n_splits: 3", "  volume_cache: disk\n  cv: {n_splits: 3")
    assert train_group(bids, copy, config, name="maps_disk.yaml") == 0
    cache = copy / "group" / "work" / "volume_cache"
    assert {p.name for p in cache.glob("*.npy")} == {"anat.npy", "func.npy"}
    ref = pd.read_csv(deriv / "group" / "predictions.tsv", sep="\t")
    new = pd.read_csv(copy / "group" / "predictions.tsv", sep="\t")
    assert list(new["participant_id"]) == list(ref["participant_id"]) and new["predicted_age"].notna().all()
    # what the models read from the cache is what they read from the NIfTI files, within float16
    cfg = load_config(bids.parent / "maps_disk.yaml").group
    cohort = load_cohort(bids, copy, cfg)
    keys = list(cohort.participants.index)
    store = volume_cache(cohort, ["anat", "func"], cfg.cache_maps_gb, mode=cfg.volume_cache)
    assert len(store) == 2 * len(keys)
    from brainage.training.volume_cache import CachedVolumeDataset

    tf = FeatureTransforms()
    cached, decoded = tf.inputs(cohort, keys, ["anat", "func"], store), tf.inputs(cohort, keys, ["anat", "func"], {})
    assert all(isinstance(cached[m], CachedVolumeDataset) for m in ("anat", "func"))  # the batch path
    for m in ("anat", "func"):
        assert max(np.abs(cached[m][i] - decoded[m][i]).max() for i in range(len(keys))) < 1e-3
