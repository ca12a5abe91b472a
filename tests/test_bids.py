"""BIDS input discovery, participants.tsv checks and derivative paths."""

from __future__ import annotations

import json

import pytest

from brainage.bids import (
    derivative_path,
    discover_inputs,
    read_participants,
    validate_output_dir,
    write_dataset_description,
)
from brainage.exceptions import BIDSError, ParticipantsTableError, UsageError


def test_discovers_t1w_bold_sidecars_and_sessions(bids_factory):
    bids = bids_factory({
        "01": [{"suffix": "T1w"}, {"suffix": "bold", "task": "rest"}],
        "02": [{"suffix": "T1w", "session": "a"}, {"suffix": "bold", "task": "rest", "session": "a",
                                                     "run": "1"}],
    })
    found = {p.subject: p for p in discover_inputs(bids)}
    assert set(found) == {"01", "02"}
    assert found["01"].t1w[0].name == "sub-01_T1w.nii.gz"
    assert found["01"].bold[0].sidecar.name == "sub-01_task-rest_bold.json"
    assert found["02"].sessions == ("a",)
    assert found["02"].bold[0].entities == {"session": "a", "task": "rest", "run": 1}


def test_labels_with_or_without_prefix(bids_factory):
    bids = bids_factory()
    assert [p.subject for p in discover_inputs(bids, participant_labels=["sub-02"])] == ["02"]
    assert [p.subject for p in discover_inputs(bids, participant_labels=["01"])] == ["01"]
    with pytest.raises(UsageError, match="unknown participant label.*07.*: 01, 02"):
        discover_inputs(bids, participant_labels=["07"])


def test_not_bids(tmp_path):
    with pytest.raises(BIDSError, match="no dataset_description.json"):
        discover_inputs(tmp_path)
    with pytest.raises(BIDSError, match="does not exist"):
        discover_inputs(tmp_path / "nope")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        pytest.param("participant_id\tage\nsub-01\t30\nsub-01\t31\n", "duplicate participant_id sub-01",
                     id="duplicate"),
        pytest.param("participant_id\tage\nsub-01\tn/a\n", "age is missing for sub-01", id="missing-age"),
        pytest.param("participant_id\tage\nsub-01\tthirty\n", "age must be a number.*sub-01='thirty'",
                     id="non-numeric"),
        pytest.param("participant_id\tsex\nsub-01\tF\n", "no age column", id="no-age-column"),
        pytest.param("id\tage\n01\t30\n", "no participant_id column", id="no-id-column"),
    ],
)
def test_participants_tsv_errors(tmp_path, content, match):
    (tmp_path / "participants.tsv").write_text(content)
    with pytest.raises(ParticipantsTableError, match=match):
        read_participants(tmp_path)


def test_participants_tsv_ok(bids_factory):
    table = read_participants(bids_factory())
    assert list(table.index) == ["01", "02"]
    assert table["age"].dtype == float


def test_missing_participants_tsv(tmp_path):
    with pytest.raises(ParticipantsTableError, match="participants.tsv.*not found"):
        read_participants(tmp_path)


def test_derivative_path_from_entities(tmp_path):
    path = derivative_path(tmp_path, subject="sub-01", datatype="func", task="rest",
                           atlas="HarvardOxford", meas="PearsonCorrelation", suffix="relmat",
                           extension="tsv")
    assert path == tmp_path / "sub-01/func/sub-01_task-rest_atlas-HarvardOxford_meas-PearsonCorrelation_relmat.tsv"
    xfm = derivative_path(tmp_path, subject="01", datatype="anat", from_="T1w",
                          to="MNI152NLin2009aSym", mode="image", suffix="xfm", extension=".h5")
    assert xfm.name == "sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.h5"
    with pytest.raises(ValueError, match="atlas='Harvard_Oxford' must be alphanumeric"):
        derivative_path(tmp_path, subject="01", datatype="anat", atlas="Harvard_Oxford",
                        suffix="morph", extension=".tsv")
    with pytest.raises(ValueError, match="no brainage derivative pattern fits"):
        derivative_path(tmp_path, subject="01", suffix="T1w", extension=".nii.gz")


def test_output_dir_rules(tmp_path):
    bids = tmp_path / "ds"
    bids.mkdir()
    assert validate_output_dir(bids, bids / "derivatives" / "brainage") == (
        bids / "derivatives" / "brainage").resolve()
    assert validate_output_dir(bids, tmp_path / "elsewhere") == (tmp_path / "elsewhere").resolve()
    for bad in (bids, bids / "out", bids / "derivatives"):
        with pytest.raises(UsageError, match="derivatives/brainage"):
            validate_output_dir(bids, bad)


def test_dataset_description(bids_factory, tmp_path):
    path = write_dataset_description(tmp_path / "d", bids_factory())
    desc = json.loads(path.read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "brainage"
    assert desc["Name"] == "brainage derivatives of fake"
    assert desc["SourceDatasets"][0]["URL"].startswith("file:///")


def test_invalid_sidecar_does_not_stop_discovery(bids_factory):
    bids = bids_factory()
    (bids / "sub-01/func/sub-01_task-rest_bold.json").write_text('{"RepetitionTime": 2.0,,}')
    found = {p.subject: p for p in discover_inputs(bids)}
    assert set(found) == {"01", "02"}
    assert found["01"].bold[0].sidecar.name == "sub-01_task-rest_bold.json"
