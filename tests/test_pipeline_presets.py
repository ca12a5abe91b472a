"""Simulator presets and shipped pipelines agree: `simulate` names the next command, and it works."""

from __future__ import annotations

import shlex

import pytest

from brainage.cli import main
from brainage.config import load_config
from brainage.simulate.cli import PIPELINE_OF_PRESET, next_command
from brainage.simulate.params import resolve_params


@pytest.mark.parametrize("preset", sorted(PIPELINE_OF_PRESET))
def test_next_command_names_the_matching_pipeline(preset, tmp_path):
    line = next_command(tmp_path / "my data", preset)
    argv = shlex.split(line)
    assert argv[:2] == ["brainage", str(tmp_path / "my data")]
    assert argv[2:] == [str(tmp_path / "my data" / "derivatives" / "brainage"), "participant",
                        "--config-file", preset]
    config = load_config(PIPELINE_OF_PRESET[preset])  # a shipped pipeline of that name
    # the pipeline accepts the runs the preset writes
    assert config.func.min_volumes <= resolve_params(preset).n_volumes


def test_simulate_ends_with_the_command_to_run_next(tmp_path, capsys):
    assert main(["simulate", str(tmp_path / "ds"), "--preset", "test", "--n-subjects", "1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"next: {next_command(tmp_path / 'ds', 'test')}"


def test_the_test_pipeline_processes_the_test_preset(tmp_path, capsys, monkeypatch):
    """The command `simulate --preset test` prints succeeds, structural and functional stages."""
    monkeypatch.setenv("BRAINAGE_BIDS_VALIDATOR", "off")  # validated in test_bids_validation.py
    assert main(["simulate", str(tmp_path / "ds"), "--preset", "test", "--n-subjects", "1"]) == 0
    argv = shlex.split(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("next: "))[1:]
    code = main([*argv, "--nprocs", "1", "--modalities", "anat", "func"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 task(s) completed" in out and "excluded" not in out
    func = tmp_path / "ds" / "derivatives" / "brainage" / "sub-01" / "func"
    assert list(func.glob("*_atlas-HarvardOxford_*relmat.tsv"))
