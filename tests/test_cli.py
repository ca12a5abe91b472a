"""The `brainage` command line: help, version, and every usage error (exit 2, one line)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from brainage import __version__
from brainage.cli import main


@pytest.fixture(autouse=True)
def fast_stages(monkeypatch):
    """Real but millisecond-fast stages, so CLI tests do not depend on the imaging pipelines."""
    from brainage import stages

    # the fake datasets are not valid BIDS (their NIfTI headers have no TR): no bids-validator here
    monkeypatch.setenv("BRAINAGE_BIDS_VALIDATOR", "off")

    monkeypatch.setitem(stages.STAGES, "anat", stages.StageSpec("anat", "tests._stages:run_copy"))
    monkeypatch.setitem(stages.STAGES, "func", stages.StageSpec(
        "func", "tests._stages:run_downstream", requires=("anat",)))


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_imports_nothing_heavy():
    # how long `--help` takes is measured by bench/bench_cli_help.py, not asserted here
    code = (
        "import sys; from brainage.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'ants', 'nilearn', 'monai', 'bids', 'pandas', 'dask') "
        "if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "participant" in out.stdout and "simulate" in out.stdout
    assert "HEAVY []" in out.stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"brainage {__version__}"


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        pytest.param(["{missing}", "{out}", "participant"], "does not exist", id="missing-bids-dir"),
        pytest.param(["{notbids}", "{out}", "participant"], "no dataset_description.json",
                     id="not-bids"),
        pytest.param(["{bids}", "{bids}", "participant"], "derivatives/brainage", id="output-is-input"),
        pytest.param(["{bids}", "{bids}/outputs", "participant"], "inside BIDS_DIR.*derivatives/brainage",
                     id="output-inside-input"),
        pytest.param(["{bids}", "{out}", "participant", "--participant-label", "99", "sub-01"],
                     "unknown participant label.*99.*participants in .*: 01, 02", id="unknown-label"),
        pytest.param(["{bids}", "{out}", "participant", "--config-file", "{badyaml}"],
                     "not valid YAML", id="unreadable-config"),
        pytest.param(["{bids}", "{out}", "participant", "--config-file", "{missing}/c.yaml"],
                     "config file not found", id="missing-config"),
        pytest.param(["{bids}", "{out}", "participant", "--config-file", "{typo}"],
                     "anat.n4_shrink: unknown key; did you mean 'n4_shrink_factor'", id="config-typo"),
        pytest.param(["{bids}", "{out}", "participant", "--nprocs", "0"], "at least 1", id="nprocs"),
        pytest.param(["{bids}", "{out}", "participant", "--bogus"], "unrecognized arguments",
                     id="unknown-option"),
        pytest.param(["{bids}", "{out}", "pilot"], "invalid choice: 'pilot'", id="bad-level"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, match, bids_factory, tmp_path, capsys):
    bids = bids_factory()
    (tmp_path / "notbids").mkdir()
    (tmp_path / "bad.yaml").write_text("anat: [unclosed\n")
    (tmp_path / "typo.yaml").write_text("anat:\n  n4_shrink: 2\n")
    fill = {"missing": tmp_path / "nope", "notbids": tmp_path / "notbids", "bids": bids,
            "out": tmp_path / "out", "badyaml": tmp_path / "bad.yaml", "typo": tmp_path / "typo.yaml"}
    argv = [a.format(**fill) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("brainage")
    import re

    assert re.search(match, err), err
    assert not (tmp_path / "out").exists()


def test_no_t1w_is_a_usage_error(bids_factory, tmp_path, capsys):
    bids = bids_factory({"01": [{"suffix": "bold", "task": "rest"}]})
    code, _, err = _run(capsys, str(bids), str(tmp_path / "out"), "participant")
    assert code == 2
    assert "no T1w image found" in err


def test_stage_not_available_says_so(bids_factory, tmp_path, capsys, monkeypatch):
    from brainage import stages

    monkeypatch.setitem(stages.STAGES, "anat", stages.StageSpec("anat", "brainage.nonexistent:run",
                                                                description="structural"))
    code, _, err = _run(capsys, str(bids_factory()), str(tmp_path / "out"), "participant",
                        "--modalities", "anat")
    assert code == 2
    assert "'anat' stage (structural) is not available" in err
    assert "nothing was run" in err


def test_group_training_without_derivatives_is_a_usage_error(bids_factory, tmp_path, capsys):
    code, _, err = _run(capsys, str(bids_factory()), str(tmp_path / "out"), "group", "--train")
    assert code == 2
    assert "does not exist; run the participant level first" in err


def test_group_says_what_to_choose(bids_factory, tmp_path, capsys):
    code, _, err = _run(capsys, str(bids_factory()), str(tmp_path / "out"), "group")
    assert code == 2
    assert "--train" in err and "--model BUNDLE" in err


def test_participant_run_writes_description_config_and_exit_1_on_failure(
    bids_factory, tmp_path, capsys, monkeypatch
):
    bids = bids_factory()
    t1 = bids / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    t1.write_bytes(b"")  # zero-byte file
    out = tmp_path / "derivs"
    code, stdout, _ = _run(capsys, str(bids), str(out), "participant", "--participant-label",
                           "sub-01", "02", "--modalities", "anat")
    assert code == 1
    assert "sub-02 anat:" in stdout and "cannot be read as NIfTI" in stdout
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0] == {"Name": "brainage", "Version": __version__,
                                      "Description": "Multimodal brain-age prediction (PIDReg)"}
    assert desc["SourceDatasets"][0]["URL"].startswith("file://")
    configs = list((out / "logs").glob("*_participant_config.yaml"))
    assert len(configs) == 1
    # the effective config can be passed back to reproduce the run: nothing left to do for sub-01
    code, stdout, _ = _run(capsys, str(bids), str(out), "participant", "--participant-label", "01",
                           "--modalities", "anat", "--config-file", str(configs[0]))
    assert code == 0
    assert "1 up to date" in stdout
