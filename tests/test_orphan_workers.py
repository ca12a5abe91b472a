"""A killed participant run leaves no worker process behind (issue 19, item 9)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil  # installed with dask.distributed, a dependency of brainage
import pytest

from brainage.stages import record_path

ROOT = Path(__file__).resolve().parents[1]


def _alive(proc) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE  # an unreaped zombie holds nothing
    except psutil.NoSuchProcess:
        return False


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process semantics")
def test_sigkilled_run_leaves_no_worker_behind(bids_factory, tmp_path):
    bids = bids_factory({lab: [{"suffix": "T1w"}] for lab in ("01", "02")})
    busy = tmp_path / "busy"
    busy.mkdir()
    env = dict(os.environ, BRAINAGE_BIDS_VALIDATOR="off", BRAINAGE_TEST_SLOW_DIR=str(busy),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    argv = [sys.executable, "-m", "tests._slow_stage", str(bids), str(tmp_path / "out"), "participant",
            "--modalities", "anat", "--nprocs", "2", "--skip-bids-validation"]
    log = tmp_path / "run.log"  # a file, not a pipe: a chatty run never blocks on a full pipe
    with open(log, "wb") as fh:
        run = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    children = []
    try:
        parent = psutil.Process(run.pid)
        # both workers are inside the stage (each wrote its pid), as in a real run
        _wait_for(lambda: len(list(busy.glob("*.pid"))) == 2 or run.poll() is not None, 60,
                  "both workers to start their task")
        assert run.poll() is None, log.read_text()
        workers = {int(p.stem) for p in busy.glob("*.pid")}
        children = parent.children(recursive=True)  # the workers and the resource tracker
        assert workers <= {c.pid for c in children}
        run.send_signal(signal.SIGKILL)
        run.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [c for c in children if _alive(c)]
        assert not left, f"still running 10 s after the run was killed: {[c.cmdline() for c in left]}"

        # a rerun is neither blocked nor slowed by what the killed run left
        start = time.monotonic()
        rerun = subprocess.run(argv, cwd=ROOT, env=dict(env, BRAINAGE_TEST_SLOW_SECONDS="0"),
                               capture_output=True, text=True, timeout=60)
        assert rerun.returncode == 0, rerun.stderr
        assert time.monotonic() - start < 30
        for label in ("01", "02"):
            assert json.loads(record_path(tmp_path / "out", label, "anat").read_text())["status"] == "done"
    finally:
        for c in children:  # never leak processes into the test session
            try:
                c.kill()
            except psutil.NoSuchProcess:
                pass
        if run.poll() is None:
            run.kill()
            run.wait()
