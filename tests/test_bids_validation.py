"""The official BIDS validator runs before the participant level unless --skip-bids-validation."""

from __future__ import annotations

import json
import logging
import shutil
import stat

import pytest

from brainage import bids as bids_module
from brainage.bids import VALIDATOR_ENV, find_bids_validator, validate_bids
from brainage.cli import main
from brainage.exceptions import BIDSError


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    from brainage.simulate.cohort import simulate_cohort

    return simulate_cohort(tmp_path_factory.mktemp("sim") / "ds", n_subjects=1, preset="test", seed=2)


@pytest.fixture
def validator(monkeypatch):
    monkeypatch.delenv(VALIDATOR_ENV, raising=False)
    exe = find_bids_validator()
    if exe is None:
        pytest.fail("bids-validator is not installed: `make tools` (what `make test` runs) installs it, "
                    "or npm install -g bids-validator@1.15.0")
    return exe


@pytest.fixture
def broken(simulated, tmp_path):
    """The simulated dataset without BIDSVersion and with a misspelled file name."""
    root = tmp_path / "broken"
    shutil.copytree(simulated, root, ignore=shutil.ignore_patterns("sourcedata"))
    description = root / "dataset_description.json"
    data = json.loads(description.read_text())
    data.pop("BIDSVersion")
    description.write_text(json.dumps(data))
    t1w = root / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    shutil.copyfile(t1w, t1w.with_name("sub-01_T1W.nii.gz"))
    return root


@pytest.fixture
def fast_stages(monkeypatch):
    from brainage import stages

    monkeypatch.setitem(stages.STAGES, "anat", stages.StageSpec("anat", "tests._stages:run_copy"))


def test_valid_dataset_passes_and_warnings_are_logged_once(validator, simulated, caplog):
    caplog.set_level(logging.INFO, logger="brainage")
    report = validate_bids(simulated)
    assert report is not None and report["issues"]["errors"] == []
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "bids-validator" in r.getMessage()]
    assert len(warned) == 1
    assert "SLICE_TIMING_NOT_DEFINED (code 13" in warned[0].getMessage()


def test_errors_are_listed_with_codes_and_files(validator, broken):
    with pytest.raises(BIDSError) as err:
        validate_bids(broken)
    message = str(err.value)
    assert "bids-validator found 2 error(s)" in message
    assert "[55 JSON_SCHEMA_VALIDATION_ERROR] in /dataset_description.json" in message
    assert "BIDSVersion" in message
    assert "[1 NOT_INCLUDED] in /sub-01/anat/sub-01_T1W.nii.gz" in message
    assert "--skip-bids-validation" in message


def test_participant_level_refuses_invalid_bids_unless_skipped(validator, broken, tmp_path, capsys,
                                                               fast_stages):
    out = tmp_path / "out"
    code = main([str(broken), str(out), "participant", "--modalities", "anat"])
    err = capsys.readouterr().err
    assert code == 2
    (line,) = [x for x in err.splitlines() if x.startswith("brainage: error:")]
    assert "NOT_INCLUDED" in line and "Traceback" not in err
    assert not out.exists()
    code = main([str(broken), str(out), "participant", "--modalities", "anat", "--skip-bids-validation"])
    assert code == 0
    assert (out / "sub-01" / "anat" / "sub-01_desc-copy_T1w.nii.gz").is_file()


def test_participant_level_runs_on_a_valid_dataset(validator, simulated, tmp_path, fast_stages):
    assert main([str(simulated), str(tmp_path / "out"), "participant", "--modalities", "anat"]) == 0


def test_without_a_validator_one_line_says_how_to_install_it(monkeypatch, simulated, caplog):
    monkeypatch.delenv(VALIDATOR_ENV, raising=False)
    monkeypatch.setattr(bids_module, "find_bids_validator", lambda: None)
    caplog.set_level(logging.INFO, logger="brainage")
    assert validate_bids(simulated) is None
    (record,) = [r for r in caplog.records if "bids-validator" in r.getMessage()]
    assert "not installed" in record.getMessage() and "npm install" in record.getMessage()


def test_validator_can_be_turned_off_or_chosen_by_environment(monkeypatch, simulated, tmp_path, caplog):
    monkeypatch.setenv(VALIDATOR_ENV, "off")
    assert find_bids_validator() is None and validate_bids(simulated) is None
    # a validator that does not answer in JSON: reported, and the dataset is used as it is
    fake = tmp_path / "fake-validator"
    fake.write_text("#!/bin/sh\necho 'not json'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(VALIDATOR_ENV, str(fake))
    assert find_bids_validator() == str(fake)
    caplog.set_level(logging.WARNING, logger="brainage")
    assert validate_bids(simulated) is None
    assert any("could not check" in r.getMessage() for r in caplog.records)
