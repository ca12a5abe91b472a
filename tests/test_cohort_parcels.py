"""``kind: parcels``: the mean of MNI maps in atlas regions as a tabular group-level input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from brainage.cli import main
from brainage.cohort.data import load_cohort
from brainage.config import parse_config

from .test_group_level import write_cohort, write_func_maps

REGION = 3  # Left_Insular_Cortex: write_func_maps makes its fALFF follow age
PARCELS_CONFIG = """\
name: parcelstest
group:
  inputs:
    anat: {kind: regional, atlas: HarvardOxford}
    func: {kind: parcels, maps: [falff, reho], resolution: 6.0, atlas: HarvardOxford, select: 4}
  models: [ridge, ridge_func, pidreg]
  primary_model: pidreg
  model_params:
    pidreg: {max_epochs: 25, latent_dim: 4, hidden: [16], batch_size: 64}
  cv: {n_splits: 3, inner_splits: 3, seed: 0}
"""


def _group(text=PARCELS_CONFIG):
    return parse_config(yaml.safe_load(text)).group


@pytest.fixture()
def cohort_with_maps(tmp_path):
    bids, deriv = write_cohort(tmp_path, n=30, seed=1)
    people = pd.read_csv(bids / "participants.tsv", sep="\t")
    paths = write_func_maps(deriv, people, REGION, np.random.default_rng(5))
    return bids, deriv, people, paths


@pytest.mark.parametrize("inputs, message", [
    ("{kind: parcels, maps: [falff], resolution: 6.0}", "kind 'parcels' needs atlas"),
    ("{kind: parcels, atlas: HarvardOxford, resolution: 6.0}", "needs maps (e.g. maps: [falff, reho])"),
    ("{kind: parcels, maps: [falff], atlas: HarvardOxford}", "needs resolution (e.g. resolution: 4.0)"),
    ("{kind: parcels, maps: [GM_modulated], resolution: 2.0, atlas: HarvardOxford}",
     "written by the anat stage, not by func"),
    ("{kind: parcels, maps: [falff], resolution: 6.0, atlas: Power2011}", "parcel means need a volume atlas"),
    ("{kind: parcels, maps: [falff], resolution: 6.0, atlas: HarvardOxford, tissue: true}",
     "tissue does not apply to kind 'parcels'"),
])
def test_config_refuses_incomplete_or_misplaced_parcels(inputs, message):
    text = PARCELS_CONFIG.replace(
        "{kind: parcels, maps: [falff, reho], resolution: 6.0, atlas: HarvardOxford, select: 4}", inputs)
    with pytest.raises(Exception) as info:
        _group(text)
    assert message in str(info.value)


def test_parcels_are_the_maps_means_in_each_region_in_map_order(cohort_with_maps):
    import nibabel as nib

    from brainage.atlases import load_atlas

    bids, deriv, people, paths = cohort_with_maps
    cohort = load_cohort(bids, deriv, _group())
    func = cohort.inputs["func"]
    assert func.kind == "parcels" and func.paths is None
    names = list(func.features.columns)
    assert names[0].startswith("falff:HarvardOxford_") and names[-1].startswith("reho:HarvardOxford_")
    assert f"falff:HarvardOxford_{REGION}" in names and f"reho:HarvardOxford_{REGION}" in names
    assert func.spec["feature_names"] == names
    assert {k: func.spec[k] for k in ("kind", "maps", "resolution", "atlas", "stage")} == {
        "kind": "parcels", "maps": ["falff", "reho"], "resolution": 6.0, "atlas": "HarvardOxford",
        "stage": "func"}
    # the value is the mean over the region's voxels of that participant's map
    first = people["participant_id"][0]
    img = nib.load(paths[first, "falff"])
    labels = np.asarray(load_atlas("HarvardOxford").resample_to(img).dataobj).astype(int)
    data = np.asarray(img.dataobj)
    assert func.features.loc[first, f"falff:HarvardOxford_{REGION}"] == pytest.approx(
        data[labels == REGION].mean(), rel=1e-6)
    # the ageing region's fALFF follows age; a neutral region's does not
    ages = cohort.participants["age"]
    assert np.corrcoef(func.features[f"falff:HarvardOxford_{REGION}"], ages)[0, 1] > 0.95
    assert abs(np.corrcoef(func.features["falff:HarvardOxford_1"], ages)[0, 1]) < 0.5


def test_a_participant_with_an_empty_region_or_a_corrupt_map_is_excluded_with_the_reason(cohort_with_maps):
    import nibabel as nib

    bids, deriv, people, paths = cohort_with_maps
    empty, corrupt = people["participant_id"][1], people["participant_id"][2]
    img = nib.load(paths[empty, "reho"])
    from brainage.atlases import load_atlas

    labels = np.asarray(load_atlas("HarvardOxford").resample_to(img).dataobj).astype(int)
    data = np.asarray(img.dataobj).copy()
    data[labels == REGION] = 0.0
    nib.save(nib.Nifti1Image(data, img.affine), paths[empty, "reho"])
    paths[corrupt, "falff"].write_bytes(paths[corrupt, "falff"].read_bytes()[:100])
    cohort = load_cohort(bids, deriv, _group())
    assert empty not in set(cohort.participants["participant_id"])
    assert corrupt not in set(cohort.participants["participant_id"])
    reasons = cohort.exclusions.set_index("participant_id")["reason"]
    assert f"no data in 1 region(s) of atlas HarvardOxford (index {REGION})" in reasons[empty]
    assert "reho" in reasons[empty] and "brain mask misses them" in reasons[empty]
    assert "not a readable NIfTI image" in reasons[corrupt] and "falff" in reasons[corrupt]
    assert len(cohort.participants) == len(people) - 2


def test_group_train_on_parcels_finds_the_ageing_region_and_pairs_it_in_the_atlas_pid(tmp_path, capsys):
    bids, deriv = write_cohort(tmp_path, n=42, seed=0)
    people = pd.read_csv(bids / "participants.tsv", sep="\t")
    write_func_maps(deriv, people, REGION, np.random.default_rng(0))
    config = tmp_path / "group.yaml"
    config.write_text(PARCELS_CONFIG)
    argv = [str(bids), str(deriv), "group", "--train", "--config-file", str(config), "--no-report"]
    assert main(argv) == 0
    out = deriv / "group"
    metrics = json.loads((out / "metrics.json").read_text())["models"]
    # the one ageing parcel alone predicts age (MAE a few years on ages 20-80)
    assert metrics["ridge_func"]["controls"]["uncorrected"]["mae"] < 6.0
    regions = pd.read_csv(out / "regions.tsv", sep="\t")
    func = regions[(regions["modality"] == "func") & (regions["level"] == "region")]
    top = func.sort_values("rank").iloc[0]
    assert top["region"] == "Left_Insular_Cortex" and top["n_features"] == 2
    # the atlas PID takes the parcels' means from the model input (connectivity beside it)
    atlas_pid = pd.read_csv(out / "regions_pid.tsv", sep="\t").set_index("index")
    assert (atlas_pid["func_maps"] == "falff+reho").all()
    assert atlas_pid.loc[REGION, "I_func"] > atlas_pid["I_func"].drop(REGION).max()
    # the bundle applies to a new cohort with the same maps, and stops on one without them
    bids2, deriv2 = write_cohort(tmp_path / "new", n=24, seed=2)
    write_func_maps(deriv2, pd.read_csv(bids2 / "participants.tsv", sep="\t"), REGION,
                    np.random.default_rng(1))
    assert main([str(bids2), str(deriv2), "group", "--model", str(out / "model"), "--no-report"]) == 0
    applied = pd.read_csv(deriv2 / "group" / "predictions.tsv", sep="\t")
    assert len(applied) == 24 and applied["predicted_age"].notna().all()
    bids3, deriv3 = write_cohort(tmp_path / "nomaps", n=12, seed=3)
    capsys.readouterr()
    assert main([str(bids3), str(deriv3), "group", "--model", str(out / "model"), "--no-report"]) == 4
    err = capsys.readouterr().err
    assert "no participant is left for the group level" in err and "func: no maps at res-6: 12" in err


def test_a_bundle_of_parcels_refuses_parcels_on_another_grid_or_atlas():
    from brainage.cohort.spec import check_spec_inputs, input_spec
    from brainage.exceptions import GroupLevelError

    cfg = _group()
    spec = {"inputs": {name: input_spec(inp) for name, inp in cfg.inputs.items()}}
    assert check_spec_inputs(spec, cfg.inputs) == spec["inputs"]
    for change, shown in (("resolution: 6.0", "resolution: 4.0"), ("atlas: HarvardOxford, select", "atlas: AAL, select")):
        other = _group(PARCELS_CONFIG.replace(change, shown))
        with pytest.raises(GroupLevelError) as info:
            check_spec_inputs(spec, other.inputs)
        text = str(info.value)
        assert "func: the bundle was trained on parcel means of falff, reho at res 6.0 on atlas-HarvardOxford" in text
        assert "retrain on this cohort" in text


COMPACT_CONFIG = """\
name: compacttest
group:
  inputs:
    anat: {kind: tissue, normalize: tiv}
    func: {kind: whole_brain, maps: [falff, reho], resolution: 6.0}
  models: [ridge, pidreg]
  primary_model: pidreg
  model_params:
    pidreg: {max_epochs: 25, latent_dim: 4, hidden: [16], batch_size: 64}
  cv: {n_splits: 3, inner_splits: 3, seed: 0}
"""


def test_tissue_and_whole_brain_inputs_are_the_totals_and_the_maps_brain_means(cohort_with_maps):
    import nibabel as nib

    bids, deriv, people, paths = cohort_with_maps
    cohort = load_cohort(bids, deriv, _group(COMPACT_CONFIG))
    anat, func = cohort.inputs["anat"], cohort.inputs["func"]
    assert list(anat.features.columns) == ["gm_ml", "wm_ml", "csf_ml", "tiv_ml", "ventricles_ml"]
    assert list(func.features.columns) == ["falff:whole_brain", "reho:whole_brain"]
    first = people["participant_id"][0]
    tissue = pd.read_csv(next((deriv / first / "anat").glob("*_desc-tissue_morph.tsv")), sep="\t").iloc[0]
    assert anat.features.loc[first, "gm_ml"] == pytest.approx(tissue["gm_ml"] / tissue["tiv_ml"])
    assert anat.features.loc[first, "tiv_ml"] == pytest.approx(tissue["tiv_ml"])
    data = np.asarray(nib.load(paths[first, "reho"]).dataobj)
    assert func.features.loc[first, "reho:whole_brain"] == pytest.approx(data[data != 0].mean(), rel=1e-6)
    assert anat.spec["normalize"] == "tiv" and func.spec["maps"] == ["falff", "reho"]
    # a participant whose map is empty is excluded for the modality, with the file named
    empty = people["participant_id"][1]
    img = nib.load(paths[empty, "falff"])
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), paths[empty, "falff"])
    reasons = load_cohort(bids, deriv, _group(COMPACT_CONFIG)).exclusions.set_index("participant_id")["reason"]
    assert "the map has no finite, non-zero voxel" in reasons[empty] and "falff" in reasons[empty]


@pytest.mark.parametrize("inputs, message", [
    ("anat: {kind: tissue, atlas: HarvardOxford}", "atlas does not apply to kind 'tissue'"),
    ("func: {kind: tissue}", "kind 'tissue' is not an input of the func stage"),
    ("func: {kind: whole_brain, maps: [falff]}", "needs resolution"),
    ("func: {kind: whole_brain, maps: [GM], resolution: 2.0}", "written by the anat stage, not by func"),
])
def test_config_refuses_misplaced_compact_inputs(inputs, message):
    key = inputs.split(":")[0]
    lines = [line for line in COMPACT_CONFIG.splitlines() if not line.startswith(f"    {key}:")]
    at = next(i for i, line in enumerate(lines) if line.startswith("  inputs:")) + 1
    lines.insert(at, f"    {inputs}")
    with pytest.raises(Exception) as info:
        _group("\n".join(lines) + "\n")
    assert message in str(info.value)


def test_group_train_on_compact_inputs_and_a_bundle_that_refuses_other_kinds(tmp_path, capsys):
    from brainage.cohort.spec import check_spec_inputs, input_spec
    from brainage.exceptions import GroupLevelError

    bids, deriv = write_cohort(tmp_path, n=42, seed=0)
    write_func_maps(deriv, pd.read_csv(bids / "participants.tsv", sep="\t"), REGION, np.random.default_rng(0))
    config = tmp_path / "group.yaml"
    config.write_text(COMPACT_CONFIG)
    assert main([str(bids), str(deriv), "group", "--train", "--config-file", str(config), "--no-report"]) == 0
    metrics = json.loads((deriv / "group" / "metrics.json").read_text())["models"]
    # total GM falls 2 mL a year in write_cohort: the totals alone predict age
    assert metrics["ridge"]["controls"]["uncorrected"]["mae"] < 6.0
    regions = pd.read_csv(deriv / "group" / "regions.tsv", sep="\t")
    anat = regions[(regions["modality"] == "anat") & (regions["level"] == "region")]
    assert set(anat["region"]) == {"Total_GM", "Total_WM", "Total_CSF", "TIV", "Lateral_Ventricles"}
    spec = {"inputs": {n: input_spec(i) for n, i in _group(COMPACT_CONFIG).inputs.items()}}
    with pytest.raises(GroupLevelError, match="the bundle was trained on tissue totals as TIV fractions"):
        check_spec_inputs(spec, _group(COMPACT_CONFIG.replace("{kind: tissue, normalize: tiv}",
                                                              "{kind: tissue}")).inputs)


def test_a_tissue_table_with_zero_tiv_excludes_its_participant_for_both_anat_kinds(cohort_with_maps):
    bids, deriv, people, _ = cohort_with_maps
    bad = people["participant_id"][3]
    path = next((deriv / bad / "anat").glob("*_desc-tissue_morph.tsv"))
    table = pd.read_csv(path, sep="\t")
    table["tiv_ml"] = 0.0
    table.to_csv(path, sep="\t", index=False)
    regional = PARCELS_CONFIG.replace("anat: {kind: regional, atlas: HarvardOxford}",
                                      "anat: {kind: regional, atlas: HarvardOxford, normalize: tiv}")
    for text in (COMPACT_CONFIG, regional):
        reasons = load_cohort(bids, deriv, _group(text)).exclusions.set_index("participant_id")["reason"]
        assert "tiv_ml is 0.0, so volumes cannot be divided by it" in reasons[bad]
