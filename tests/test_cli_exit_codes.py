"""Exit codes of the command line: one per outcome, one line on stderr, never a traceback."""

from __future__ import annotations

import pytest

from brainage.cli import main
from brainage.exceptions import (
    EXIT_CODES,
    BrainageError,
    ConfigError,
    GroupLevelError,
    InputFileError,
    ModelBundleError,
    ProcessingError,
    StatsInputError,
    UsageError,
    exit_code,
)

# millisecond stages and no BIDS validator, as in test_cli (autouse there and here)
from .test_cli import fast_stages  # noqa: F401


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("brainage")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def _raise_in_group_level(monkeypatch, exc):
    import brainage.levels

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(brainage.levels, "run_group", boom)


def test_0_all_done(bids_factory, tmp_path, capsys):
    code, out, err = _run(capsys, bids_factory(), tmp_path / "out", "participant", "--modalities", "anat")
    assert code == 0, err
    assert "0 failed" in out


def test_1_some_participants_failed(bids_factory, tmp_path, capsys):
    bids = bids_factory()
    (bids / "sub-02" / "anat" / "sub-02_T1w.nii.gz").write_bytes(b"")
    code, out, _ = _run(capsys, bids, tmp_path / "out", "participant", "--modalities", "anat")
    assert code == 1
    assert "sub-02 anat:" in out and (tmp_path / "out" / "sub-01" / "anat").is_dir()


def test_2_usage_config_and_bids_errors(bids_factory, tmp_path, capsys):
    bids = bids_factory()
    bad = tmp_path / "bad.yaml"
    bad.write_text("func:\n  low_pass: '0.1'\n")
    code, _, err = _run(capsys, bids, tmp_path / "out", "participant", "--config-file", bad)
    assert code == 2
    assert "func.low_pass" in _one_error_line(err)
    code, _, err = _run(capsys, tmp_path / "nowhere", tmp_path / "out", "participant")
    assert code == 2 and "does not exist" in _one_error_line(err)


def test_3_unreadable_model_bundle(bids_factory, tmp_path, capsys):
    bids, out = bids_factory(), tmp_path / "out"
    out.mkdir()
    notabundle = tmp_path / "model"
    notabundle.mkdir()
    (notabundle / "config.json").write_text("{not json")
    code, _, err = _run(capsys, bids, out, "group", "--model", notabundle)
    assert code == 3
    assert "config.json" in _one_error_line(err)


def test_4_cohort_unusable_at_the_group_level(bids_factory, tmp_path, capsys):
    """`group --train` on an OUTPUT_DIR without participant-level results."""
    bids, out = bids_factory(), tmp_path / "out"
    out.mkdir()
    code, _, err = _run(capsys, bids, out, "group", "--train")
    assert code == 4
    assert "no participant is left for the group level" in _one_error_line(err)


@pytest.mark.parametrize("exc", [
    InputFileError("/data/map.nii.gz", "is truncated", "rerun the participant level"),
    ProcessingError("the model did not converge"),
])
def test_5_input_or_processing_error_outside_a_participant_task(bids_factory, tmp_path, capsys,
                                                                monkeypatch, exc):
    _raise_in_group_level(monkeypatch, exc)
    (tmp_path / "out").mkdir()
    code, _, err = _run(capsys, bids_factory(), tmp_path / "out", "group", "--train")
    assert code == 5
    assert str(exc) in _one_error_line(err)


def test_70_internal_error_is_one_line_pointing_to_verbose(bids_factory, tmp_path, capsys,
                                                           monkeypatch, caplog):
    _raise_in_group_level(monkeypatch, ZeroDivisionError("division by zero"))
    (tmp_path / "out").mkdir()
    code, _, err = _run(capsys, bids_factory(), tmp_path / "out", "group", "--train")
    assert code == 70
    line = _one_error_line(err)
    assert "internal error: ZeroDivisionError: division by zero" in line and "-v" in line
    # with -v the traceback is logged
    code, _, err = _run(capsys, bids_factory(), tmp_path / "out", "group", "--train", "-v")
    assert code == 70
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


def test_130_interrupted(bids_factory, tmp_path, capsys, monkeypatch):
    _raise_in_group_level(monkeypatch, KeyboardInterrupt())
    (tmp_path / "out").mkdir()
    code, _, err = _run(capsys, bids_factory(), tmp_path / "out", "group", "--train")
    assert code == 130
    assert "interrupted" in _one_error_line(err)


def test_every_error_class_has_its_code():
    assert exit_code(UsageError("x")) == exit_code(ConfigError("x")) == 2
    assert exit_code(ModelBundleError("p", "bad", "fix")) == 3
    assert exit_code(GroupLevelError("x")) == exit_code(StatsInputError("x")) == 4
    assert exit_code(BrainageError("x")) == exit_code(ProcessingError("x")) == 5
    assert exit_code(RuntimeError("x")) == 70
    assert exit_code(KeyboardInterrupt()) == 130
    # a generic UsageError re-raised from a bundle error keeps the bundle's code
    try:
        try:
            raise ModelBundleError("p", "bad", "fix")
        except ModelBundleError as err:
            raise UsageError(str(err)) from None
    except UsageError as wrapped:
        assert exit_code(wrapped) == 3
    assert set(EXIT_CODES) == {0, 1, 2, 3, 4, 5, 70, 130}


def test_help_lists_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "exit codes:" in out
    for code, meaning in EXIT_CODES.items():
        assert f"{code:>3}  {meaning[:30]}" in out


def test_2_unreachable_dask_scheduler(bids_factory, tmp_path, capsys, monkeypatch):
    # nothing listens on port 9 of this machine: a clear usage error, not an internal error (70)
    import brainage.parallel

    monkeypatch.setattr(brainage.parallel, "DASK_CONNECT_TIMEOUT", "2s")
    code, _, err = _run(capsys, bids_factory(), tmp_path / "out", "participant", "--modalities", "anat",
                        "--scheduler-address", "tcp://127.0.0.1:9")
    assert code == 2
    line = _one_error_line(err)
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in line and "nothing was run" in line
    assert not list((tmp_path / "out").glob("sub-*/anat/*"))
