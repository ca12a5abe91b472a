"""PID atoms on the atlas: each region's GM volume and connectivity profile against the controls' age."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from brainage.atlases import region_table
from brainage.cohort.data import CohortData, ModalityInput
from brainage.exceptions import GroupLevelError
from brainage.interpret.regions_pid import PID_COLUMNS, atom_image, paired_inputs, regions_pid

ATLAS = "HarvardOxford"
#: 1 Left_Frontal_Pole: structure ages; 2 Right_Frontal_Pole: connectivity ages; 3 Left_Insular_Cortex:
#: both follow one latent age; 4-8: neutral (their profiles hold one edge to 2 and one to 3).
INDICES = (1, 2, 3, 4, 5, 6, 7, 8)
STRUCT, FUNC, BOTH = INDICES[:3]
NEUTRAL = INDICES[3:]


def _cohort(n_controls=150, n_patients=30, *, seed=0, func_atlas=ATLAS):
    rng = np.random.default_rng(seed)
    n = n_controls + n_patients
    age = rng.uniform(20, 80, n).round(2)
    g = (age - 50) / 17
    latent = g + rng.normal(0, 0.5, n)
    patient = np.arange(n) >= n_controls
    names = region_table(ATLAS).set_index("index").loc[list(INDICES), "name"].tolist()
    gm = rng.normal(0, 1, (n, len(INDICES)))
    gm[:, INDICES.index(STRUCT)] = g + rng.normal(0, 0.4, n)
    gm[:, INDICES.index(BOTH)] = latent + rng.normal(0, 0.3, n)
    edges, values = [], []
    for i in range(len(INDICES)):
        for j in range(i + 1, len(INDICES)):
            a, b = INDICES[i], INDICES[j]
            value = rng.normal(0, 0.5, n)
            if {a, b} & {FUNC} and {a, b} & set(NEUTRAL):
                value = value + 0.6 * g
            if {a, b} & {BOTH} and {a, b} & set(NEUTRAL):
                value = value + 0.6 * latent
            edges.append(f"{names[i]}--{names[j]}")
            values.append(value)
    func = np.column_stack(values)
    # patients: features unrelated to their age; using them would weaken every atom
    gm[patient] = rng.normal(0, 1, (patient.sum(), gm.shape[1]))
    func[patient] = rng.normal(0, 0.5, (patient.sum(), func.shape[1]))
    keys = pd.Index([f"sub-{i + 1:03d}" for i in range(n)], name="key")
    parts = pd.DataFrame({"participant_id": list(keys), "session": None, "age": age, "sex": "F",
                          "site": "site1", "group": np.where(patient, "patient", "control"),
                          "is_control": ~patient, "modalities": "anat+func"}, index=keys)
    tissue = rng.normal(0, 1, (n, 2))
    anat = pd.DataFrame(np.hstack([tissue, gm]), index=keys,
                        columns=["gm_ml", "tiv_ml", *(f"{ATLAS}_{i}" for i in INDICES)])
    inputs = {
        "anat": ModalityInput("anat", "regional", anat, None, {"kind": "regional", "atlas": ATLAS}),
        "func": ModalityInput("func", "connectivity", pd.DataFrame(func, index=keys, columns=edges),
                              None, {"kind": "connectivity", "atlas": func_atlas}),
    }
    exclusions = pd.DataFrame(columns=["participant_id", "session", "modality", "reason"])
    return CohortData(parts, inputs, exclusions, ("control",))


@pytest.fixture(scope="module")
def cohort():
    return _cohort()


@pytest.fixture(scope="module")
def raw(cohort):
    return regions_pid(cohort, n_boot=200, seed=1)


@pytest.fixture(scope="module")
def table(raw):
    return raw.set_index("index")


def test_one_row_per_region_of_both_inputs_with_the_documented_columns(raw, table):
    assert list(raw.columns) == list(PID_COLUMNS)
    assert list(table.index) == list(INDICES)
    assert (table["n"] == 150).all()  # the controls only
    assert (table["n_struct_features"] == 1).all() and (table["n_func_features"] == 3).all()
    assert (table["n_edges"] == len(INDICES) - 1).all()
    assert table.loc[STRUCT, "region"] == "Left_Frontal_Pole" and table.loc[STRUCT, "lobe"] == "frontal"
    assert (table["note"] == "n/a").all()
    # the identities of the decomposition hold on every row
    np.testing.assert_allclose(table["U_struct"] + table["R"], table["I_struct"], atol=1e-12)
    np.testing.assert_allclose(table["U_func"] + table["R"], table["I_func"], atol=1e-12)
    np.testing.assert_allclose(table[["U_struct", "U_func", "R", "S"]].sum(axis=1), table["I_joint"],
                               atol=1e-12)


def test_a_region_is_exactly_the_pid_of_the_controls_age_volume_and_profile_components(cohort, table):
    from sklearn.decomposition import PCA

    from brainage.pid import gaussian_pid, inverse_normal_transform

    parts = cohort.participants
    controls = parts.index[parts["is_control"]]
    g = inverse_normal_transform(parts.loc[controls, "age"])
    name = table.loc[FUNC, "region"]
    edges = cohort.inputs["func"].features.loc[controls]
    profile = edges[[c for c in edges.columns if name in c.split("--")]].to_numpy()
    comps = PCA(n_components=3, svd_solver="full").fit_transform(profile)
    gm = cohort.inputs["anat"].features.loc[controls, f"{ATLAS}_{FUNC}"]
    direct = gaussian_pid(g, gm, comps)
    for atom, ours in (("U1", "U_struct"), ("U2", "U_func"), ("R", "R"), ("S", "S")):
        assert table.loc[FUNC, ours] == pytest.approx(getattr(direct, atom), abs=1e-9)


@pytest.mark.parametrize(("index", "strong", "weak"), [(STRUCT, "U_struct", "U_func"),
                                                         (FUNC, "U_func", "U_struct")],
                         ids=["structure-ages", "connectivity-ages"])
def test_the_modality_that_carries_age_gets_the_unique_information(table, index, strong, weak):
    row = table.loc[index]
    assert row[strong] > 0.5 and row[weak] == 0.0
    assert row[f"{strong}_ci_low"] > 0.1  # the interval excludes zero
    assert row[f"{strong}_ci_low"] < row[strong] < row[f"{strong}_ci_high"]
    assert row["R"] < 0.1  # the other modality knows (almost) nothing


def test_a_region_whose_volume_and_profile_follow_one_latent_age_is_redundant(table):
    row = table.loc[BOTH]
    assert row["R"] > 0.5 and row["R_ci_low"] > 0.3
    assert row["R"] > 3 * max(row["U_struct"], row["U_func"], abs(row["S"]))
    # a neutral region's volume carries no age (its profile has two ageing edges of seven)
    assert table.loc[list(NEUTRAL), "R"].max() < 0.15


def test_patients_never_enter(cohort):
    parts = cohort.participants
    everyone = CohortData(parts.assign(is_control=True), cohort.inputs, cohort.exclusions,
                          cohort.control_labels)
    mixed = regions_pid(everyone, n_boot=0).set_index("index")
    assert (mixed["n"] == len(parts)).all()
    ours = regions_pid(cohort, n_boot=0).set_index("index")
    assert mixed.loc[STRUCT, "U_struct"] < ours.loc[STRUCT, "U_struct"] - 0.1
    assert ours["U_struct_ci_low"].isna().all()  # n_boot=0: no intervals


def test_the_bootstrap_is_reproducible_per_region(cohort, table):
    again = regions_pid(cohort.subset(cohort.participants.index), n_boot=200, seed=1).set_index("index")
    pd.testing.assert_frame_equal(again, table)
    other = regions_pid(cohort, n_boot=200, seed=2).set_index("index")
    assert not np.allclose(other["R_ci_low"], table["R_ci_low"])
    np.testing.assert_allclose(other["R"], table["R"])  # the point estimate has no randomness


def test_too_few_controls_is_refused_with_the_numbers():
    small = _cohort(n_controls=6, n_patients=2)
    with pytest.raises(GroupLevelError, match=r"6 control\(s\) have both anat and func.*at least 7"):
        regions_pid(small, n_boot=0)


def test_inputs_on_different_atlases_are_not_paired():
    pair, why = paired_inputs(_cohort(40, 5, func_atlas="AAL"))
    assert pair is None
    assert "regional 'anat' on HarvardOxford; connectivity 'func' on AAL" in why
    with pytest.raises(GroupLevelError, match="no connectivity input shares an atlas"):
        regions_pid(_cohort(40, 5, func_atlas="AAL"))


def test_without_a_connectivity_input_the_reason_says_so(cohort):
    only = CohortData(cohort.participants, {"anat": cohort.inputs["anat"]}, cohort.exclusions)
    pair, why = paired_inputs(only)
    assert pair is None and "no connectivity input (inputs: anat: regional)" in why


def test_atom_image_paints_each_region_with_its_atom(raw, table):
    from brainage.atlases import load_atlas

    image = atom_image(raw, "U_struct")
    labels = np.asarray(load_atlas(ATLAS).image.dataobj).astype(int)
    data = np.asarray(image.dataobj)
    assert data.shape == labels.shape and data.dtype == np.float32
    for index in (STRUCT, FUNC):
        assert np.allclose(data[labels == index], table.loc[index, "U_struct"], atol=1e-6)
    assert (data[~np.isin(labels, INDICES)] == 0).all()
    with pytest.raises(KeyError, match="'U_anat' is not a column"):
        atom_image(raw, "U_anat")


# --------------------------------------------------------------------------- group level hook
def test_group_writes_the_table_its_sidecar_and_the_maps(cohort, tmp_path):
    from brainage.group.outputs import REGIONS_PID_COLUMNS
    from brainage.group.train import write_regions_pid

    files = write_regions_pid(tmp_path, cohort, seed=0)
    assert set(files) == {"regions_pid", *(f"regions_pid_{a}" for a in ("U_struct", "U_func", "R", "S"))}
    assert all(p.is_file() for p in files.values())
    written = pd.read_csv(tmp_path / "regions_pid.tsv", sep="\t")
    assert list(written.columns) == list(PID_COLUMNS) and len(written) == len(INDICES)
    sidecar = json.loads((tmp_path / "regions_pid.json").read_text())
    assert list(sidecar) == list(PID_COLUMNS)
    for column, entry in sidecar.items():
        assert entry["Description"] == REGIONS_PID_COLUMNS[column][0]
    assert sidecar["U_struct"]["Units"] == "bits" and sidecar["S_ci_high"]["Units"] == "bits"
    assert "95 %" in sidecar["R_ci_low"]["Description"]


def test_group_skips_with_a_logged_reason_when_the_atlases_differ(tmp_path, caplog):
    from brainage.group.train import write_regions_pid

    stale = tmp_path / "regions_pid.tsv"
    stale.write_text("from an earlier run\n")
    (tmp_path / "regions_pid_R.nii.gz").write_bytes(b"")
    with caplog.at_level(logging.INFO, logger="brainage.group.train"):
        files = write_regions_pid(tmp_path, _cohort(40, 5, func_atlas="AAL"))
    assert files == {}
    assert not list(tmp_path.iterdir())  # nothing written, the stale files removed
    assert "no regions_pid.tsv" in caplog.text and "connectivity 'func' on AAL" in caplog.text


def test_group_switch_off(cohort, tmp_path, caplog):
    from brainage.group.train import write_regions_pid

    with caplog.at_level(logging.INFO, logger="brainage.group.train"):
        assert write_regions_pid(tmp_path, cohort, enabled=False) == {}
    assert "group.regions_pid is false" in caplog.text and not list(tmp_path.iterdir())


def test_train_group_lists_the_atlas_pid_in_its_provenance(tmp_path):
    from .test_group_level import train_group, write_cohort

    bids, deriv = write_cohort(tmp_path, n=30)
    code = train_group(bids, deriv, "name: t\ngroup:\n  inputs:\n    anat: {kind: regional, atlas: HarvardOxford}\n"
                       "    func: {kind: connectivity, atlas: HarvardOxford}\n"
                       "  models: [ridge]\n  primary_model: ridge\n  attributions: false\n"
                       "  cv: {n_splits: 3, inner_splits: 3}\n")
    assert code == 0
    record = json.loads((deriv / "group" / "provenance.json").read_text())
    assert {"regions_pid", "regions_pid_U_struct", "regions_pid_S"} <= set(record["files"])
    table = pd.read_csv(deriv / "group" / "regions_pid.tsv", sep="\t")
    assert len(table) == 5 and (table["n"] == table["n"].iloc[0]).all()


def test_region_means_of_functional_maps_join_the_functional_side(cohort):
    rng = np.random.default_rng(7)
    parts = cohort.participants
    g = (parts["age"].to_numpy() - 50) / 17
    neutral = NEUTRAL[0]
    local = pd.DataFrame({f"falff:{ATLAS}_{i}": rng.normal(0, 1, len(parts)) for i in INDICES},
                         index=parts.index)
    local[f"falff:{ATLAS}_{neutral}"] = g + rng.normal(0, 0.3, len(parts))
    local.loc[parts.index[:1], f"reho:{ATLAS}_{INDICES[-1]}"] = np.nan  # incomplete: left out
    without = regions_pid(cohort, n_boot=0).set_index("index")
    with_maps = regions_pid(cohort, n_boot=0, local=local).set_index("index")
    assert with_maps.loc[neutral, "func_maps"] == "falff"
    assert with_maps.loc[neutral, "n_func_features"] == without.loc[neutral, "n_func_features"] + 1
    # the region's fALFF carries age that its connectivity and GM do not
    assert with_maps.loc[neutral, "I_func"] > without.loc[neutral, "I_func"] + 0.5
    assert with_maps.loc[neutral, "U_func"] > 0.5
    assert (without["func_maps"] == "n/a").all()


def test_parcel_means_average_each_map_within_atlas_regions(tmp_path):
    import nibabel as nib

    from brainage.atlases import load_atlas
    from brainage.cohort.parcels import parcel_means

    atlas = load_atlas(ATLAS)
    grid = nib.Nifti1Image(np.zeros((23, 27, 23), np.float32), np.array(
        [[8.0, 0, 0, -90], [0, 8.0, 0, -126], [0, 0, 8.0, -72], [0, 0, 0, 1]]))
    labels = np.asarray(atlas.resample_to(grid).dataobj).astype(int)
    region = int(np.bincount(labels[labels > 0]).argmax())
    data = np.where(labels == region, 2.0, np.where(labels > 0, 1.0, 0.0)).astype(np.float32)
    path = tmp_path / "falff.nii.gz"
    nib.save(nib.Nifti1Image(data, grid.affine), path)
    frame = parcel_means(pd.DataFrame({"falff": [str(path), None]}, index=["a", "b"]), ATLAS)
    assert frame.loc["a", f"falff:{ATLAS}_{region}"] == 2.0
    others = frame.loc["a"].drop(f"falff:{ATLAS}_{region}")
    assert (others == 1.0).all()
    assert frame.loc["b"].isna().all()


def test_a_connectivity_cohort_reads_its_functional_maps_for_the_atlas_pid(tmp_path):
    import yaml

    from brainage.cohort.data import load_cohort
    from brainage.config import parse_config
    from brainage.group.train import atlas_pid_cohort, cohort_fingerprint, write_regions_pid

    from .test_group_level import CONFIG, write_cohort, write_func_maps

    bids, deriv = write_cohort(tmp_path, n=60)
    people = pd.read_csv(bids / "participants.tsv", sep="\t")
    region = 3  # Left_Insular_Cortex: its fALFF carries age beyond its connectivity
    paths = write_func_maps(deriv, people, region, np.random.default_rng(3))
    cfg = parse_config(yaml.safe_load(CONFIG)).group
    cohort = load_cohort(bids, deriv, cfg)
    assert {i.kind for i in cohort.inputs.values()} == {"regional", "connectivity"}
    joined = atlas_pid_cohort(cohort, cfg, deriv)
    maps = joined.inputs["func_maps"]
    assert maps.spec["maps"] == ["falff", "reho"] and maps.spec["resolution"] == 6.0
    assert maps.paths.notna().all().all() and set(cohort.inputs) < set(joined.inputs)

    with_maps = tmp_path / "with"
    write_regions_pid(with_maps, joined, seed=0)
    without = tmp_path / "without"
    write_regions_pid(without, cohort, seed=0)
    a = pd.read_csv(with_maps / "regions_pid.tsv", sep="\t").set_index("index")
    b = pd.read_csv(without / "regions_pid.tsv", sep="\t").set_index("index")
    assert (a["func_maps"] == "falff+reho").all() and b["func_maps"].isna().all()
    assert a.loc[region, "I_func"] > b.loc[region, "I_func"] + 0.5
    assert a.loc[region, "I_func"] - b.loc[region, "I_func"] > (a["I_func"] - b["I_func"]).drop(region).max()

    # the maps are part of what the group level's provenance hashes: a changed map redoes it
    before = cohort_fingerprint(joined, cfg)
    assert before == cohort_fingerprint(atlas_pid_cohort(cohort, cfg, deriv), cfg)
    first = paths[people["participant_id"][0], "falff"]
    first.write_bytes(first.read_bytes() + b"\0")
    assert cohort_fingerprint(atlas_pid_cohort(cohort, cfg, deriv), cfg) != before
    # switched off, nothing is read beside the model inputs
    off = cfg.model_copy(update={"regions_pid": False})
    assert atlas_pid_cohort(cohort, off, deriv) is cohort
