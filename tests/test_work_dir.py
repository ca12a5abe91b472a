"""Scratch folders: outside the derivatives by default, removed after every task unless --keep-work."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from brainage.bids import discover_inputs
from brainage.cli import main
from brainage.config import load_config
from brainage.parallel import run_participants
from brainage.stages import StageSpec, default_work_dir, record_path

#: Writes a scratch file, then fails for sub-bad.
PARTIAL = StageSpec("anat", "tests.test_work_dir:run_scratch_then_fail")
COPY = StageSpec("anat", "tests._stages:run_copy")


def run_scratch_then_fail(ctx):
    """Stage: write into the scratch folder, then fail for sub-bad."""
    (ctx.work_dir / "scratch.txt").write_text("intermediate")
    if ctx.subject == "bad":
        raise RuntimeError("boom after writing scratch files")
    return {}


@pytest.fixture
def tmpdir_env(tmp_path, monkeypatch):
    """A private system temporary folder, for this process and the spawned workers."""
    tmp = tmp_path / "systmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    return tmp


@pytest.fixture
def two(bids_factory):
    return bids_factory({lab: [{"suffix": "T1w"}] for lab in ("good", "bad")})


def _leftovers(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


def test_default_work_dir_is_outside_the_derivatives_and_per_output_dir(tmpdir_env, tmp_path):
    out = tmp_path / "derivatives" / "brainage"
    work = default_work_dir(out)
    assert work.parent == tmpdir_env
    assert out not in work.parents and work != out
    assert work == default_work_dir(tmp_path / "derivatives" / ".." / "derivatives" / "brainage")
    assert work != default_work_dir(tmp_path / "other")


def test_failed_task_scratch_is_removed_and_derivatives_stay_clean(two, tmp_path, tmpdir_env):
    out = tmp_path / "out"
    parts = discover_inputs(two, modalities=["anat"])
    summary = run_participants(parts, [PARTIAL], load_config("default"), out, nprocs=1)
    assert [r.subject for r in summary.failed] == ["bad"]
    # nothing brainage-private is left in the derivatives: no .work, no .staging
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    # the scratch folders of the failed and the successful task are gone, and so is the run's root
    assert _leftovers(tmpdir_env) == []
    record = json.loads(record_path(out, "bad", "anat").read_text())
    assert record["status"] == "failed" and "work_dir" not in record


def test_keep_work_keeps_only_the_failed_tasks_scratch(two, tmp_path, tmpdir_env):
    out, work = tmp_path / "out", tmp_path / "work"
    parts = discover_inputs(two, modalities=["anat"])
    summary = run_participants(parts, [PARTIAL], load_config("default"), out, nprocs=1,
                               work_dir=work, keep_work=True)
    assert [r.subject for r in summary.failed] == ["bad"]
    kept = sorted(p.name for p in work.iterdir())
    assert len(kept) == 1 and kept[0].startswith("sub-bad_anat_")
    assert (work / kept[0] / "scratch.txt").read_text() == "intermediate"
    record = json.loads(record_path(out, "bad", "anat").read_text())
    assert record["work_dir"] == str(work / kept[0])
    assert not (out / ".staging").exists()
    assert _leftovers(tmpdir_env) == []  # -w given: the default folder is never used


def test_user_work_dir_is_used_and_kept_empty_after_success(bids_factory, tmp_path, tmpdir_env):
    bids = bids_factory({"01": [{"suffix": "T1w"}]})
    out, work = tmp_path / "out", tmp_path / "work"
    summary = run_participants(discover_inputs(bids, modalities=["anat"]), [COPY],
                               load_config("default"), out, nprocs=1, work_dir=work)
    assert summary.exit_code == 0
    assert work.is_dir() and list(work.iterdir()) == []  # the user's folder stays, emptied
    assert not (out / ".staging").exists()


def test_keep_work_flag_on_the_command_line(two, tmp_path, tmpdir_env, monkeypatch):
    from brainage import stages

    monkeypatch.setenv("BRAINAGE_BIDS_VALIDATOR", "off")
    monkeypatch.setitem(stages.STAGES, "anat", PARTIAL)
    out = tmp_path / "out"
    argv = [str(two), str(out), "participant", "--modalities", "anat"]
    assert main(argv) == 1
    assert _leftovers(tmpdir_env) == []
    assert main([*argv, "--keep-work"]) == 1
    (root,) = tmpdir_env.iterdir()
    assert root == default_work_dir(out)
    assert [p.name.split("_")[0] for p in root.iterdir()] == ["sub-bad"]
    record = json.loads(record_path(out, "bad", "anat").read_text())
    assert Path(record["work_dir"]).parent == root


def test_work_dir_help_names_the_default(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--keep-work" in text and "brainage-work-<hash of OUTPUT_DIR>" in text
