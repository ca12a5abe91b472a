"""The group level's input: participants aligned with each modality's inputs, and exclusions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainage.bids import TEMPLATE_SPACE, derivative_path
from brainage.cohort.data import CohortData, load_cohort
from brainage.cohort.readers import ANAT_MAP_FIELDS, TISSUE_COLUMNS
from brainage.config import ANAT_MAPS, parse_config
from brainage.exceptions import GroupLevelError
from brainage.outputs import atlas_entities, output_entities
from brainage.stages import record_path

from .conftest import write_bids_dataset

ATLAS = "HarvardOxford"
#: A few Harvard-Oxford regions (index, name), deliberately not in index order.
REGIONS = [(3, "Left_Insular_Cortex"), (1, "Left_Frontal_Pole"), (2, "Right_Frontal_Pole"),
           (4, "Right_Insular_Cortex")]
NAMES = [n for _, n in REGIONS]
#: label -> (age, sex, site, group)
PEOPLE = {
    "01": (21.0, "F", "siteA", "control"),
    "02": (34.5, "M", "siteA", "HC"),
    "03": (47.0, "F", "siteA", "patient"),
    "04": (52.0, "M", "siteA", "control"),
    "05": (63.0, "F", "siteB", "healthy"),
    "06": (28.0, "M", "siteB", "patient"),
    "07": (71.0, "F", "siteB", "control"),
    "08": (39.0, "M", "siteB", "patient"),
}


RAW_INPUTS = {"anat": {"kind": "regional", "atlas": "HarvardOxford", "normalize": "none"},
              "func": {"kind": "connectivity", "atlas": "HarvardOxford"}}


def _cfg(**group):
    """The group section, reading raw features (millilitres, every edge) unless ``inputs`` is given."""
    return parse_config({"group": {"inputs": RAW_INPUTS, **group}}).group


def gm_volume(label: str, index: int) -> float:
    return 10.0 * int(label) + index / 10


def edge(label: str, i: int, j: int) -> float:
    """A symmetric, participant-specific connectivity value of regions i < j (positions)."""
    i, j = min(i, j), max(i, j)
    return round(0.01 * int(label) + 0.1 * i + 0.01 * j, 6)


def relmat(label: str, names=NAMES) -> pd.DataFrame:
    n = len(names)
    mat = np.array([[0.0 if i == j else edge(label, i, j) for j in range(n)] for i in range(n)])
    frame = pd.DataFrame(mat, index=names, columns=names)
    frame.index.name = "name"
    return frame


def write_tsv(path: Path, frame: pd.DataFrame, *, index=False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t", index=index, na_rep="n/a")


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_anat(root: Path, label: str, *, session=None, regions=REGIONS, similarity=0.9,
               maps=()) -> None:
    """The structural stage's tables and QC record (and empty MNI maps named in ``maps``)."""
    ents = {"subject": label, "session": session}
    table = pd.DataFrame({"index": [i for i, _ in regions], "name": [n for _, n in regions],
                          "hemisphere": "left", "lobe": "frontal",
                          "gm_volume_ml": [gm_volume(label, i) for i, _ in regions]})
    write_tsv(derivative_path(root, **ents, **atlas_entities(ATLAS)), table)
    tissue = pd.DataFrame([{"gm_ml": 600.0 + int(label), "wm_ml": 500.0, "csf_ml": 300.0,
                            "tiv_ml": 1400.0 + int(label), "ventricles_ml": 20.0}])
    all_ents = output_entities(2.0)
    write_tsv(derivative_path(root, **ents, **all_ents["tissue_morph"]), tissue)
    write_json(derivative_path(root, **ents, **all_ents["qc"]),
               {"registration_similarity": similarity, "registration_ok": True, "flags": []})
    for name in maps:
        path = derivative_path(root, **ents, **all_ents[ANAT_MAP_FIELDS[name]])
        path.write_bytes(b"")


def write_func(root: Path, label: str, *, session=None, run=None, mean_fd=0.2,
               percent_scrubbed=5.0, excluded=None, matrix=None, maps=()) -> None:
    """The functional stage's QC record and Fisher-z matrix of one resting-state run."""
    ents = {"subject": label, "session": session, "task": "rest", "run": run}
    qc = {"mean_fd": mean_fd, "percent_scrubbed": percent_scrubbed, "flags": []}
    if excluded:
        qc.update(excluded=True, reason=excluded)
    write_json(derivative_path(root, **ents, datatype="func", desc="qc", suffix="bold",
                               extension=".json"), qc)
    if excluded:
        return
    write_tsv(derivative_path(root, **ents, datatype="func", atlas=ATLAS, meas="FisherZ",
                              suffix="relmat", extension=".tsv"),
              relmat(label) if matrix is None else matrix, index=True)
    for name in maps:
        derivative_path(root, **ents, datatype="func", space=TEMPLATE_SPACE, res="3", desc=name,
                        suffix="boldmap", extension=".nii.gz").write_bytes(b"")


def write_participants(bids: Path, people=PEOPLE, columns=("age", "sex", "site", "group")) -> None:
    index = {"age": 0, "sex": 1, "site": 2, "group": 3}
    lines = ["\t".join(["participant_id", *columns])]
    for label, row in people.items():
        lines.append("\t".join([f"sub-{label}", *(str(row[index[c]]) for c in columns)]))
    (bids / "participants.tsv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def dataset(tmp_path):
    """A fake BIDS dataset and complete derivatives for the 8 participants of PEOPLE."""
    bids = write_bids_dataset(tmp_path / "bids", {}, participants=False)
    write_participants(bids)
    root = bids / "derivatives" / "brainage"
    for label in PEOPLE:
        write_anat(root, label)
        write_func(root, label)
    return bids, root


def excluded_reason(cohort: CohortData, participant: str, modality: str = "all") -> str:
    rows = cohort.exclusions[(cohort.exclusions["participant_id"] == participant)
                             & (cohort.exclusions["modality"] == modality)]
    assert len(rows) == 1, cohort.exclusions
    return rows["reason"].iloc[0]


def assert_accounted_for(cohort: CohortData, bids: Path) -> None:
    """Every participant of participants.tsv is a row or an exclusion, never both."""
    listed = set(pd.read_csv(bids / "participants.tsv", sep="\t")["participant_id"])
    kept = set(cohort.participants["participant_id"])
    dropped = set(cohort.exclusions.loc[cohort.exclusions["modality"] == "all", "participant_id"])
    assert listed <= kept | dropped
    assert not (kept & dropped)


# --------------------------------------------------------------------------- happy path
def test_inputs_aligned_with_participants_and_named(dataset):
    bids, root = dataset
    cohort = load_cohort(bids, root, _cfg())
    keys = [f"sub-{label}" for label in sorted(PEOPLE)]
    assert list(cohort.participants.index) == keys
    assert cohort.participants.index.name == "key"
    assert list(cohort.inputs) == ["anat", "func"]
    for inp in cohort.inputs.values():
        assert inp.features.index.equals(cohort.participants.index)
        assert (inp.features.dtypes == np.float64).all()
    # regional: tissue totals then <atlas>_<index> in the order of the stage's table
    anat = cohort.inputs["anat"].features
    assert list(anat.columns) == [*TISSUE_COLUMNS, *(f"{ATLAS}_{i}" for i, _ in REGIONS)]
    assert anat.loc["sub-06", f"{ATLAS}_3"] == pytest.approx(gm_volume("06", 3))
    assert anat.loc["sub-02", "tiv_ml"] == pytest.approx(1402.0)
    # connectivity: upper triangle without the diagonal, row-major, <A>--<B>
    func = cohort.inputs["func"].features
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    assert list(func.columns) == [f"{NAMES[i]}--{NAMES[j]}" for i, j in pairs]
    assert func.loc["sub-07"].tolist() == pytest.approx([edge("07", i, j) for i, j in pairs])
    arrays = cohort.arrays()
    assert arrays["func"].dtype == np.float32 and arrays["func"].shape == (8, 6)
    assert arrays["anat"][3, 5] == pytest.approx(gm_volume("04", 3))
    assert cohort.exclusions.empty
    assert list(cohort.exclusions.columns) == ["participant_id", "session", "modality", "reason"]


def test_participant_columns(dataset):
    bids, root = dataset
    table = load_cohort(bids, root, _cfg()).participants
    assert list(table.columns) == ["participant_id", "session", "age", "sex", "site", "group",
                                   "is_control", "modalities"]
    assert table["age"].dtype == np.float64
    assert table.loc["sub-02", "age"] == 34.5
    assert table["session"].isna().all()
    assert table.loc["sub-05", "site"] == "siteB"
    # control labels match case-insensitively: HC and healthy are controls
    expected = {k: PEOPLE[k.removeprefix("sub-")][3] in ("control", "HC", "healthy")
                for k in table.index}
    assert table["is_control"].to_dict() == expected
    assert table["is_control"].sum() == 5
    assert (table["modalities"] == "anat+func").all()
    lower = load_cohort(bids, root, _cfg(control_labels=["hc"])).participants
    assert lower["is_control"].sum() == 1 and lower.loc["sub-02", "is_control"]


def test_missing_site_sex_group_columns_get_constants(dataset):
    bids, root = dataset
    write_participants(bids, columns=("age",))
    table = load_cohort(bids, root, _cfg()).participants
    assert set(table["site"]) == {"site-unknown"}
    assert set(table["sex"]) == {"n/a"}
    assert set(table["group"]) == {"control"} and table["is_control"].all()


def test_extra_participant_columns_are_kept_and_combat_batch_checked(dataset):
    bids, root = dataset
    table = pd.read_csv(bids / "participants.tsv", sep="\t")
    table["scanner"] = ["s1", "s2"] * 4
    table.to_csv(bids / "participants.tsv", sep="\t", index=False)
    cohort = load_cohort(bids, root, _cfg(combat={"enabled": True, "batch": "scanner"}))
    assert cohort.participants.loc["sub-02", "scanner"] == "s2"
    with pytest.raises(GroupLevelError, match=r"combat\.batch: participants\.tsv has no column 'scan'"):
        load_cohort(bids, root, _cfg(combat={"enabled": True, "batch": "scan"}))


# --------------------------------------------------------------------------- exclusions
def _no_anat(bids, root):
    for path in (root / "sub-03" / "anat").iterdir():
        path.unlink()


def _failed_anat(bids, root):
    _no_anat(bids, root)
    write_json(record_path(root, "03", "anat"), {"status": "failed", "error": {
        "message": "sub-03: the T1w did not register\nto the MNI template"}})


def _high_fd(bids, root):
    write_func(root, "03", mean_fd=0.62)


def _scrubbed(bids, root):
    write_func(root, "03", percent_scrubbed=62.0)


def _stage_excluded(bids, root):
    for path in (root / "sub-03" / "func").iterdir():
        path.unlink()
    write_func(root, "03", excluded="too little clean data: 40 of 100 volumes left")


def _no_bold(bids, root):
    for path in (root / "sub-03" / "func").iterdir():
        path.unlink()
    write_json(record_path(root, "03", "func"), {"status": "excluded", "summary": {
        "excluded": True, "reason": "no BOLD run in the dataset for this participant"}})


def _no_age(bids, root):
    write_participants(bids, {**PEOPLE, "03": ("n/a", "F", "siteA", "patient")})


def _corrupt_region_table(bids, root):
    path = derivative_path(root, subject="03", **atlas_entities(ATLAS))
    path.write_bytes(b"\x00\xff\xfe garbage \"unclosed\n")


def _region_table_columns(bids, root):
    path = derivative_path(root, subject="03", **atlas_entities(ATLAS))
    write_tsv(path, pd.DataFrame({"index": [1, 2], "volume": [1.0, 2.0]}))


def _relmat_not_square(bids, root):
    write_func(root, "03", matrix=relmat("03").iloc[:3])


def _relmat_nan_edges(bids, root):
    mat = relmat("03")
    mat.iloc[1, :] = np.nan
    mat.iloc[:, 1] = np.nan
    write_func(root, "03", matrix=mat)


def _other_regions(bids, root):
    write_anat(root, "03", regions=REGIONS[:3])


def _bad_registration(bids, root):
    write_anat(root, "03", similarity=0.41)


@pytest.mark.parametrize(
    ("breaks", "config", "modality", "reason"),
    [
        pytest.param(_no_anat, {}, "anat", r"^anat: no derivatives \(run the participant level\)",
                     id="no-derivatives"),
        pytest.param(_failed_anat, {}, "anat",
                     r"^anat: the participant stage failed \(sub-03: the T1w did not register to "
                     r"the MNI template\); see sub-03/log/sub-03_desc-anat_log\.txt", id="stage-failed"),
        pytest.param(_high_fd, {}, "func",
                     r"^func: mean FD 0\.62 mm > 0\.5 \(group\.qc\.max_mean_fd\)", id="qc-fd"),
        pytest.param(_scrubbed, {}, "func",
                     r"^func: scrubbed fraction 0\.62 > 0\.5 \(group\.qc\.max_scrubbed_fraction\)",
                     id="qc-scrubbed"),
        pytest.param(_stage_excluded, {}, "func",
                     r"^func: excluded by the participant stage \(too little clean data: 40 of 100",
                     id="stage-excluded"),
        pytest.param(_no_bold, {}, "func",
                     r"^func: excluded by the participant stage \(no BOLD run in the dataset",
                     id="stage-excluded-no-bold"),
        pytest.param(_corrupt_region_table, {}, "anat",
                     r"^anat: .*sub-03_atlas-HarvardOxford_desc-gm_morph\.tsv: (not a readable TSV|"
                     r"no column)", id="corrupt-tsv"),
        pytest.param(_region_table_columns, {}, "anat",
                     r"^anat: .*desc-gm_morph\.tsv: no column\(s\) gm_volume_ml \(found: index, "
                     r"volume\)", id="region-table-columns"),
        pytest.param(_relmat_not_square, {}, "func",
                     r"^func: .*meas-FisherZ_relmat\.tsv: not a square matrix \(3 rows, 4 region "
                     r"columns\)", id="relmat-not-square"),
        pytest.param(_relmat_nan_edges, {}, "func",
                     r"^func: 3 of 6 connectivity edges are n/a in .*relmat\.tsv \(regions without "
                     r"signal: Left_Frontal_Pole\)", id="relmat-nan-edges"),
        pytest.param(_other_regions, {}, "anat",
                     r"^anat: its features differ from the cohort's \(1 missing: HarvardOxford_4; "
                     r"0 extra", id="other-regions"),
    ],
)
def test_modality_exclusions(dataset, breaks, config, modality, reason):
    bids, root = dataset
    breaks(bids, root)
    cohort = load_cohort(bids, root, _cfg(**config))
    assert "sub-03" not in cohort.participants.index
    assert len(cohort.participants) == 7
    text = excluded_reason(cohort, "sub-03")  # missing_modality: exclude drops the whole row
    assert re.search(reason, text), text
    assert "group.missing_modality 'exclude'" in text
    assert len(cohort.exclusions) == 1
    # with 'available', the participant stays with the other modality; its row is NaN
    kept = load_cohort(bids, root, _cfg(missing_modality="available", **config))
    other = "func" if modality == "anat" else "anat"
    assert kept.participants.loc["sub-03", "modalities"] == other
    assert kept.inputs[modality].features.loc["sub-03"].isna().all()
    assert kept.inputs[other].features.loc["sub-03"].notna().all()
    assert re.search(reason, excluded_reason(kept, "sub-03", modality))
    assert_accounted_for(cohort, bids)


@pytest.mark.parametrize(
    ("breaks", "config", "reason", "n_left"),
    [
        pytest.param(_no_age, {}, r"^no numeric age in participants\.tsv \(age: n/a\)", 7,
                     id="no-age"),
        pytest.param(lambda b, r: None, {"groups": ["control", "HC", "healthy"]},
                     r"^group 'patient' is not in group\.groups \(control, HC, healthy\)$", 5,
                     id="group-not-allowed"),
        pytest.param(_bad_registration, {"qc": {"min_registration_similarity": 0.6}},
                     r"^anat: registration similarity 0\.410 < 0\.6 "
                     r"\(group\.qc\.min_registration_similarity\)$", 7, id="registration"),
    ],
)
def test_participant_exclusions(dataset, breaks, config, reason, n_left):
    bids, root = dataset
    breaks(bids, root)
    cohort = load_cohort(bids, root, _cfg(**config))
    assert "sub-03" not in cohort.participants.index
    text = excluded_reason(cohort, "sub-03")
    assert re.search(reason, text), text
    assert len(cohort.participants) == n_left
    assert_accounted_for(cohort, bids)


def test_stage_skipped_and_invalid_labels_are_reasons_not_crashes(dataset):
    bids, root = dataset
    write_participants(bids, {**PEOPLE, "0_9": (40.0, "F", "siteA", "control")})
    for path in (root / "sub-03" / "func").iterdir():
        path.unlink()
    write_json(record_path(root, "03", "func"), {"status": "done",
                                                 "summary": {"skipped": "func.enabled is false"}})
    cohort = load_cohort(bids, root, _cfg())
    assert excluded_reason(cohort, "sub-0_9") == (
        "participant_id sub-0_9 is not a BIDS label (letters and digits only); rename the participant")
    assert excluded_reason(cohort, "sub-03").startswith(
        "func: the participant stage was skipped (func.enabled is false)")
    assert len(cohort.participants) == 7


def test_groups_filter_is_case_insensitive_and_keeps_listed_groups(dataset):
    bids, root = dataset
    cohort = load_cohort(bids, root, _cfg(groups=["CONTROL", "hc", "Healthy", "patient"]))
    assert len(cohort.participants) == 8
    controls_only = load_cohort(bids, root, _cfg(groups=["control"]))
    assert set(controls_only.participants["group"]) == {"control"}
    assert len(controls_only.exclusions) == 5


def test_derivatives_without_a_participants_row_are_excluded(dataset):
    bids, root = dataset
    write_anat(root, "99")
    write_func(root, "99")
    cohort = load_cohort(bids, root, _cfg())
    assert "sub-99" not in cohort.participants.index
    assert excluded_reason(cohort, "sub-99") == (
        "in the derivatives but not in participants.tsv; add a row with its age (and group) to "
        "participants.tsv")


def test_every_participant_is_accounted_for(dataset):
    bids, root = dataset
    for breaks in (_no_age, _high_fd, _corrupt_region_table):
        breaks(bids, root)
    write_func(root, "05", excluded="too little clean data")
    for path in (root / "sub-07" / "func").iterdir():
        path.unlink()
    write_participants(bids, {**PEOPLE, "09": (30.0, "F", "siteA", "control"),
                              "03": ("n/a", "F", "siteA", "patient")})
    for mode in ("exclude", "available"):
        cohort = load_cohort(bids, root, _cfg(missing_modality=mode))
        assert_accounted_for(cohort, bids)
        listed = {f"sub-{k}" for k in [*PEOPLE, "09"]}
        mentioned = set(cohort.participants["participant_id"]) | set(
            cohort.exclusions["participant_id"])
        assert mentioned == listed
    exclude = load_cohort(bids, root, _cfg())
    assert sorted(exclude.participants.index) == ["sub-01", "sub-02", "sub-04", "sub-06", "sub-08"]
    assert excluded_reason(exclude, "sub-09").startswith(
        "anat: no derivatives (run the participant level); func: no derivatives")


def test_no_participant_left_summarises_reasons(dataset):
    bids, root = dataset
    with pytest.raises(GroupLevelError,
                       match=r"no participant is left.*all 8 participant row\(s\).*"
                             r"func: QC: mean FD above group\.qc\.max_mean_fd: 5; "
                             r"group not in group\.groups: 3"):
        load_cohort(bids, root, _cfg(groups=["control", "hc", "healthy"], qc={"max_mean_fd": 0.1}))


# --------------------------------------------------------------------------- runs and sessions
def test_runs_are_averaged_and_failing_runs_dropped(dataset):
    bids, root = dataset
    for path in (root / "sub-02" / "func").iterdir():
        path.unlink()
    write_func(root, "02", run="1", matrix=relmat("02"))
    write_func(root, "02", run="2", matrix=relmat("04"))
    write_func(root, "02", run="3", matrix=relmat("08"), mean_fd=0.9)  # dropped by QC
    cohort = load_cohort(bids, root, _cfg())
    expected = (relmat("02").to_numpy() + relmat("04").to_numpy()) / 2
    iu = np.triu_indices(4, k=1)
    assert cohort.inputs["func"].features.loc["sub-02"].to_numpy() == pytest.approx(expected[iu])
    # every run failing: the reason names each run
    write_func(root, "02", run="1", matrix=relmat("02"), mean_fd=0.8)
    write_func(root, "02", run="2", matrix=relmat("02"), percent_scrubbed=90.0, mean_fd=0.5004)
    cohort = load_cohort(bids, root, _cfg())
    assert excluded_reason(cohort, "sub-02").startswith(
        "func: no usable run (run-1: mean FD 0.80 mm > 0.5 (group.qc.max_mean_fd); "
        "run-2: mean FD 0.5004 mm > 0.5 (group.qc.max_mean_fd); scrubbed fraction 0.90 > 0.5 "
        "(group.qc.max_scrubbed_fraction); run-3: mean FD")


def test_sessions_give_one_row_each_with_session_ages(dataset):
    bids, root = dataset
    for path in (root / "sub-01" / "func").iterdir():
        path.unlink()
    write_func(root, "01", session="1", matrix=relmat("01"))
    write_func(root, "01", session="2", matrix=relmat("05"))
    (bids / "sub-01").mkdir(exist_ok=True)
    pd.DataFrame({"session_id": ["ses-1", "ses-2"], "age": [21.0, 23.5]}).to_csv(
        bids / "sub-01" / "sub-01_sessions.tsv", sep="\t", index=False)
    # sub-02 has raw sessions but participants.tsv ages only
    for ses in ("a", "b"):
        (bids / "sub-02" / f"ses-{ses}").mkdir(parents=True)
        write_func(root, "02", session=ses)
    cohort = load_cohort(bids, root, _cfg())
    table = cohort.participants
    assert {"sub-01_ses-1", "sub-01_ses-2", "sub-02_ses-a", "sub-02_ses-b"} <= set(table.index)
    assert "sub-01" not in table.index and len(table) == 10
    assert table.loc["sub-01_ses-2", "session"] == "ses-2"
    assert table.loc["sub-01_ses-2", "participant_id"] == "sub-01"
    assert table.loc["sub-01_ses-1", "age"] == 21.0 and table.loc["sub-01_ses-2", "age"] == 23.5
    assert table.loc["sub-02_ses-a", "age"] == table.loc["sub-02_ses-b", "age"] == 34.5
    func = cohort.inputs["func"].features
    assert func.loc["sub-01_ses-2"].iloc[0] == pytest.approx(edge("05", 0, 1))
    # the structural outputs (one set per participant) are shared by the sessions
    anat = cohort.inputs["anat"].features
    assert anat.loc["sub-01_ses-1"].equals(anat.loc["sub-01_ses-2"])
    # a session without functional outputs is excluded on its own
    for path in (root / "sub-02" / "ses-b" / "func").iterdir():
        path.unlink()
    cohort = load_cohort(bids, root, _cfg())
    rows = cohort.exclusions
    assert rows[["participant_id", "session", "modality"]].values.tolist() == [
        ["sub-02", "ses-b", "all"]]
    assert "sub-02_ses-a" in cohort.participants.index


# --------------------------------------------------------------------------- maps
def test_maps_are_paths_that_exist(dataset):
    bids, root = dataset
    for label in PEOPLE:
        write_anat(root, label, maps=("GM_modulated", "WM"))
        write_func(root, label, maps=("falff", "reho"))
    cfg = _cfg(inputs={"anat": {"kind": "maps", "maps": ["GM_modulated", "WM"], "resolution": 2},
                       "func": {"kind": "maps", "maps": ["falff", "reho"], "resolution": 3}})
    (derivative_path(root, subject="04", datatype="func", task="rest", space=TEMPLATE_SPACE,
                     res="3", desc="reho", suffix="boldmap", extension=".nii.gz")).unlink()
    cohort = load_cohort(bids, root, cfg)
    paths = cohort.inputs["anat"].paths
    assert cohort.inputs["anat"].features is None
    assert list(paths.columns) == ["GM_modulated", "WM"]
    assert paths.index.equals(cohort.participants.index)
    gm = Path(paths.loc["sub-02", "GM_modulated"])
    assert gm.is_absolute() and gm.is_file()
    assert gm.name == "sub-02_space-MNI152NLin2009aSym_res-2_label-GM_desc-modulated_probseg.nii.gz"
    assert Path(cohort.inputs["func"].paths.loc["sub-02", "falff"]).name == (
        "sub-02_task-rest_space-MNI152NLin2009aSym_res-3_desc-falff_boldmap.nii.gz")
    assert excluded_reason(cohort, "sub-04").startswith("func: no reho map at res-3 (")
    assert cohort.spec["inputs"]["func"] == {"kind": "maps", "space": TEMPLATE_SPACE,
                                             "maps": ["falff", "reho"], "resolution": 3.0,
                                             "stage": "func"}
    with pytest.raises(GroupLevelError, match=r"input 'anat' is of kind 'maps'"):
        cohort.arrays(["anat"])
    assert cohort.arrays() == {}


def test_anat_map_names_match_the_config():
    assert set(ANAT_MAP_FIELDS) == set(ANAT_MAPS)
    assert set(ANAT_MAP_FIELDS.values()) <= set(output_entities())


# --------------------------------------------------------------------------- spec and subset
def test_spec_round_trip_and_feature_order(dataset):
    bids, root = dataset
    trained = load_cohort(bids, root, _cfg())
    spec = json.loads(json.dumps(trained.spec))
    assert spec["control_labels"] == ["control", "HC", "healthy"]
    assert spec["inputs"]["anat"]["feature_names"][:2] == ["gm_ml", "wm_ml"]
    again = load_cohort(bids, root, _cfg(), spec=spec)
    assert again.inputs["func"].features.equals(trained.inputs["func"].features)
    # the bundle's order wins
    reordered = json.loads(json.dumps(spec))
    reordered["inputs"]["anat"]["feature_names"].reverse()
    cohort = load_cohort(bids, root, _cfg(), spec=reordered)
    names = reordered["inputs"]["anat"]["feature_names"]
    assert list(cohort.inputs["anat"].features.columns) == names
    assert cohort.inputs["anat"].features.loc["sub-05", f"{ATLAS}_2"] == pytest.approx(
        gm_volume("05", 2))
    assert cohort.inputs["anat"].spec["feature_names"] == names


def test_spec_with_other_features_is_refused(dataset):
    bids, root = dataset
    spec = load_cohort(bids, root, _cfg()).spec
    spec["inputs"]["anat"]["feature_names"].append(f"{ATLAS}_48")
    with pytest.raises(GroupLevelError,
                       match=r"anat \(regional atlas-HarvardOxford \+ tissue\): this cohort's "
                             r"features differ from the model bundle's: 1 feature\(s\) of the "
                             r"bundle are missing \(HarvardOxford_48\)\. Rerun the participant "
                             r"level with the bundle's atlas \(HarvardOxford\).*or retrain"):
        load_cohort(bids, root, _cfg(), spec=spec)


def test_spec_with_other_inputs_is_refused_before_reading(dataset):
    bids, root = dataset
    spec = load_cohort(bids, root, _cfg()).spec
    cfg = _cfg(inputs={"anat": {"kind": "regional", "atlas": "AAL"},
                       "func": {"kind": "connectivity", "atlas": ATLAS}})
    with pytest.raises(GroupLevelError,
                       match=r"anat: the bundle was trained on regional atlas-HarvardOxford \+ "
                             r"tissue, group\.inputs gives regional atlas-AAL \+ tissue"):
        load_cohort(bids, root, cfg, spec=spec)
    one = _cfg(inputs={"anat": {"kind": "regional", "atlas": ATLAS}}, models=["ridge"],
               primary_model="ridge")
    with pytest.raises(GroupLevelError, match=r"func: the bundle needs connectivity "
                                              r"atlas-HarvardOxford, group\.inputs has no such"):
        load_cohort(bids, root, one, spec=spec)


def test_subset_keeps_alignment(dataset):
    bids, root = dataset
    cohort = load_cohort(bids, root, _cfg())
    part = cohort.subset(["sub-05", "sub-02"])
    assert list(part.participants.index) == ["sub-05", "sub-02"]
    assert part.arrays()["anat"][0, 5] == pytest.approx(gm_volume("05", 3))
    assert part.spec == cohort.spec
    with pytest.raises(KeyError, match="sub-42"):
        cohort.subset(["sub-42"])
    with pytest.raises(ValueError, match="not aligned"):
        CohortData(cohort.participants.iloc[:3], cohort.inputs, cohort.exclusions)


def test_missing_derivatives_folder_is_a_usage_error(tmp_path):
    bids = write_bids_dataset(tmp_path / "bids", {}, participants=False)
    write_participants(bids)
    with pytest.raises(GroupLevelError, match=r"derivatives folder .* does not exist"):
        load_cohort(bids, tmp_path / "nothing", _cfg())


def test_regional_volumes_as_fractions_of_tiv(dataset):
    bids, root = dataset
    for label in PEOPLE:
        write_anat(root, label)
        write_func(root, label)
    raw = load_cohort(bids, root, _cfg())
    cfg = _cfg(inputs={"anat": {"kind": "regional", "atlas": ATLAS, "normalize": "tiv"},
                       "func": {"kind": "connectivity", "atlas": ATLAS}})
    norm = load_cohort(bids, root, cfg)
    a, b = raw.inputs["anat"].features, norm.inputs["anat"].features
    assert list(a.columns) == list(b.columns)
    tiv = a["tiv_ml"]
    np.testing.assert_allclose(b["tiv_ml"], tiv)
    for col in [c for c in a.columns if c != "tiv_ml"]:
        np.testing.assert_allclose(b[col], a[col] / tiv)
    assert norm.spec["inputs"]["anat"]["normalize"] == "tiv"
    assert "normalize" not in raw.spec["inputs"]["anat"]
