"""The participant task runner: isolation of failures, atomic outputs, reruns, Dask."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from brainage.bids import discover_inputs
from brainage.config import load_config, parse_config
from brainage.parallel import run_participants
from brainage.stages import StageSpec, record_path

COPY = StageSpec("anat", "tests._stages:run_copy")
DOWN = StageSpec("func", "tests._stages:run_downstream", requires=("anat",))


def _calls(out: Path) -> list[str]:
    log = out.parent / "calls.log"
    return log.read_text().split() if log.exists() else []


def _corrupt(bids: Path, label: str) -> Path:
    path = bids / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz"
    path.write_bytes(path.read_bytes()[:100])  # a truncated .nii.gz
    return path


@pytest.fixture
def three(bids_factory):
    return bids_factory({lab: [{"suffix": "T1w"}] for lab in ("01", "02", "03")})


def test_failure_is_isolated_listed_and_redone_after_fix(three, tmp_path):
    out = tmp_path / "out"
    good = (three / "sub-02" / "anat" / "sub-02_T1w.nii.gz").read_bytes()
    bad = _corrupt(three, "02")
    parts = discover_inputs(three, modalities=["anat"])
    cfg = load_config("default")
    summary = run_participants(parts, [COPY], cfg, out, nprocs=2)
    assert summary.exit_code == 1
    assert [r.subject for r in summary.failed] == ["02"]
    assert "cannot be read as NIfTI" in summary.failed[0].error
    assert str(bad) in summary.failed[0].error
    assert sorted(r.subject for r in summary.done) == ["01", "03"]
    for label in ("01", "03"):
        assert (out / f"sub-{label}/anat/sub-{label}_desc-copy_T1w.nii.gz").is_file()
    assert not (out / "sub-02/anat").exists()
    record = json.loads(record_path(out, "02", "anat").read_text())
    assert record["status"] == "failed"
    assert record["error"]["type"] == "InputFileError"
    assert record["error"]["cause"]  # the underlying nibabel/gzip error is kept
    assert (out / "sub-02/log/sub-02_desc-anat_log.txt").is_file()

    bad.write_bytes(good)
    calls_before = len(_calls(out))
    summary = run_participants(discover_inputs(three, modalities=["anat"]), [COPY], cfg, out)
    assert summary.exit_code == 0
    assert [r.subject for r in summary.done] == ["02"]
    assert sorted(summary.skipped) == ["sub-01:anat", "sub-03:anat"]
    assert _calls(out)[calls_before:] == ["sub-02:copy"]


def test_record_has_provenance(three, tmp_path):
    out = tmp_path / "out"
    run_participants(discover_inputs(three, participant_labels=["sub-01"]), [COPY],
                     load_config("default"), out)
    record = json.loads(record_path(out, "01", "anat").read_text())
    assert record["status"] == "done"
    assert record["inputs"][0]["sha256"] and record["inputs"][0]["path"].endswith("sub-01_T1w.nii.gz")
    assert record["versions"]["nibabel"] and record["versions"]["brainage"]
    assert "load" in record["timings"]
    assert record["summary"]["mean"] > 0
    assert "sub-01/anat/sub-01_desc-copy_T1w.nii.gz" in record["outputs"]
    assert (out / "sub-01/log/sub-01_desc-anat_config.yaml").is_file()


def test_config_change_or_input_change_redoes(three, tmp_path):
    out = tmp_path / "out"
    parts = discover_inputs(three, participant_labels=["01"])
    run_participants(parts, [COPY], load_config("default"), out)
    assert run_participants(parts, [COPY], load_config("default"), out).skipped == ["sub-01:anat"]
    changed = parse_config({"anat": {"n4_shrink_factor": 2}})
    assert [r.subject for r in run_participants(parts, [COPY], changed, out).done] == ["01"]
    # a deleted output makes the stage incomplete
    (out / "sub-01/anat/sub-01_desc-stats_morph.tsv").unlink()
    assert [r.subject for r in run_participants(parts, [COPY], changed, out).done] == ["01"]


def test_failed_stage_leaves_no_partial_outputs(bids_factory, tmp_path):
    bids = bids_factory({"good": [{"suffix": "T1w"}], "bad": [{"suffix": "T1w"}]})
    out = tmp_path / "out"
    spec = StageSpec("anat", "tests._stages:run_fail_after_writing")
    summary = run_participants(discover_inputs(bids), [spec], load_config("default"), out)
    assert [r.subject for r in summary.failed] == ["bad"]
    assert "boom after writing" in summary.failed[0].error
    assert (out / "sub-good/anat/sub-good_desc-partial_T1w.nii.gz").is_file()
    assert not list(out.glob("sub-bad/anat/*"))
    assert not [p for p in (out / ".staging").rglob("*") if p.is_file()]


def test_downstream_waits_for_and_skips_after_failed_upstream(three, tmp_path):
    out = tmp_path / "out"
    _corrupt(three, "03")
    summary = run_participants(discover_inputs(three), [COPY, DOWN], load_config("default"), out,
                               nprocs=2)
    assert sorted((r.subject, r.stage) for r in summary.done) == [
        ("01", "anat"), ("01", "func"), ("02", "anat"), ("02", "func")]
    failed = {(r.subject, r.stage): r.error for r in summary.failed}
    assert set(failed) == {("03", "anat"), ("03", "func")}
    assert "'anat' stage did not complete" in failed[("03", "func")]
    assert (out / "sub-01/func/sub-01_task-rest_desc-down_bold.nii.gz").is_file()


def test_worker_death_is_retried_then_reported(bids_factory, tmp_path):
    bids = bids_factory({"ok": [{"suffix": "T1w"}], "crash": [{"suffix": "T1w"}]})
    out = tmp_path / "out"
    spec = StageSpec("anat", "tests._stages:run_crash")
    summary = run_participants(discover_inputs(bids), [spec], load_config("default"), out, nprocs=1)
    assert [r.subject for r in summary.done] == ["ok"]
    assert [r.subject for r in summary.failed] == ["crash"]
    assert "worker process died" in summary.failed[0].error
    assert _calls(out).count("sub-crash:crash") == 2  # first attempt + one retry (run.retries=1)


@pytest.mark.parametrize("keep_work", [False, True])
def test_a_dead_workers_staging_and_scratch_folders_are_removed(bids_factory, tmp_path, keep_work, caplog):
    bids = bids_factory({"crash": [{"suffix": "T1w"}]})
    out, work = tmp_path / "out", tmp_path / "work"
    spec = StageSpec("anat", "tests._stages:run_crash")
    with caplog.at_level(logging.WARNING, logger="brainage.parallel"):
        summary = run_participants(discover_inputs(bids), [spec], load_config("default"), out, nprocs=1,
                                   work_dir=work, keep_work=keep_work)
    assert [r.subject for r in summary.failed] == ["crash"]
    assert not list((out / ".staging").glob("sub-crash_*"))  # no half-written outputs left behind
    kept = sorted(p.name for p in work.glob("sub-crash_anat_*"))
    assert len(kept) == (2 if keep_work else 0)  # both attempts' scratch, only with --keep-work
    assert ("scratch files of the attempt whose worker died kept" in caplog.text) == keep_work


def test_excluded_is_recorded_not_failed(three, tmp_path):
    out = tmp_path / "out"
    spec = StageSpec("anat", "tests._stages:run_exclude")
    summary = run_participants(discover_inputs(three, participant_labels=["01"]), [spec],
                               load_config("default"), out)
    assert summary.exit_code == 0 and [r.subject for r in summary.excluded] == ["01"]
    assert json.loads(record_path(out, "01", "anat").read_text())["status"] == "excluded"


@pytest.mark.slow
def test_dask_local_cluster_two_workers(three, tmp_path):
    from distributed import LocalCluster

    out = tmp_path / "out"
    _corrupt(three, "01")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        summary = run_participants(discover_inputs(three), [COPY, DOWN], load_config("default"),
                                   out, scheduler_address=cluster.scheduler_address)
    assert summary.exit_code == 1
    assert sorted((r.subject, r.stage) for r in summary.done) == [
        ("02", "anat"), ("02", "func"), ("03", "anat"), ("03", "func")]
    assert {r.subject for r in summary.failed} == {"01"}
    assert (out / "sub-03/func/sub-03_task-rest_desc-down_bold.nii.gz").is_file()


def _write_package(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_source_closure_follows_imports_of_the_stage_only(tmp_path, monkeypatch):
    from brainage.provenance import code_digest, source_closure

    _write_package(tmp_path, {
        "codepkg/__init__.py": "",
        "codepkg/stage.py": "import numpy\nfrom . import helpers\n\n"
                            "def run(ctx):\n    from codepkg.sub.deep import VALUE\n    return VALUE\n",
        "codepkg/helpers.py": "from brainage.exceptions import InputFileError\n",
        "codepkg/sub/__init__.py": "",
        "codepkg/sub/deep.py": "VALUE = 1\n",
        "codepkg/unrelated.py": "X = 0\n",
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    closure = source_closure("codepkg.stage")
    ours = [name for name in closure if name.startswith("codepkg")]
    assert ours == ["codepkg", "codepkg.helpers", "codepkg.stage", "codepkg.sub", "codepkg.sub.deep"]
    # brainage modules the stage reaches are followed; third-party packages are not
    assert {"brainage", "brainage.exceptions"} <= set(closure)
    assert not any(name.startswith("numpy") for name in closure)

    before = code_digest("codepkg.stage")
    (tmp_path / "codepkg/unrelated.py").write_text("X = 1\n")
    assert code_digest("codepkg.stage") == before
    (tmp_path / "codepkg/sub/deep.py").write_text("VALUE = 2\n")  # imported inside a function
    assert code_digest("codepkg.stage") != before


def test_changed_stage_code_redoes_the_stage(three, tmp_path, monkeypatch):
    pkg = tmp_path / "pkgs"
    _write_package(pkg, {
        "codestage/__init__.py": "",
        "codestage/run.py": "from tests._stages import run_copy\n\nfrom .helper import FACTOR\n\n\n"
                            "def run(ctx):\n    return run_copy(ctx)\n",
        "codestage/helper.py": "FACTOR = 2\n",
        "codestage/other.py": "",
    })
    monkeypatch.syspath_prepend(str(pkg))
    spec = StageSpec("anat", "codestage.run:run")
    out = tmp_path / "out"
    parts = discover_inputs(three, participant_labels=["01"])
    cfg = load_config("default")
    assert [r.subject for r in run_participants(parts, [spec], cfg, out).done] == ["01"]
    record = json.loads(record_path(out, "01", "anat").read_text())
    assert len(record["code_sha256"]) == 64
    assert run_participants(parts, [spec], cfg, out).skipped == ["sub-01:anat"]
    (pkg / "codestage/other.py").write_text("# not imported by the stage\n")
    assert run_participants(parts, [spec], cfg, out).skipped == ["sub-01:anat"]
    (pkg / "codestage/helper.py").write_text("FACTOR = 3\n")
    summary = run_participants(parts, [spec], cfg, out)
    assert [r.subject for r in summary.done] == ["01"]
    assert json.loads(record_path(out, "01", "anat").read_text())["code_sha256"] != record["code_sha256"]
