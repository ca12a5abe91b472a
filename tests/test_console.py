"""The console: progress as log lines off a terminal, a warning shown once, library output kept in a log file."""

from __future__ import annotations

import io
import logging
import os
import warnings
from types import SimpleNamespace

import pytest

from brainage import console
from brainage.console import DedupeFilter, progress, report_epoch, route_library_output


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def records():
    """Collect what the ``brainage`` loggers emit (whatever propagation earlier tests set)."""
    handler = _Records()
    root = logging.getLogger("brainage")
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler.records
    root.removeHandler(handler)
    root.setLevel(level)


def test_progress_off_a_terminal_is_one_log_line_per_item_and_no_bar(records, capsys):
    assert not console.is_terminal()  # pytest captures stderr: not a terminal
    with progress("training", 3) as task:
        assert task.bar is None
        for k in range(3):
            task.describe(f"training: ridge fold {k + 1}/3")  # nothing off a terminal
            report_epoch(5, 10)
            task.finished(f"ridge fold {k + 1}/3: fitted")
    lines = [r.getMessage() for r in records]
    assert lines == ["[1/3] ridge fold 1/3: fitted", "[2/3] ridge fold 2/3: fitted",
                     "[3/3] ridge fold 3/3: fitted"]
    err = capsys.readouterr().err
    assert "━" not in err and "\r" not in err  # no bar drawn: at most the log lines themselves
    assert all(" INFO [" in line for line in err.splitlines())


def test_cross_validation_logs_one_line_per_model_and_fold(records):
    from brainage.config import GroupConfig
    from brainage.group.cv import cross_validate
    from tests._group import make_cohort

    cfg = GroupConfig(models=["ridge", "ridge_anat"], primary_model="ridge",
                      cv={"n_splits": 3, "inner_splits": 2})
    cross_validate(make_cohort(40, seed=3), cfg)
    lines = [r.getMessage() for r in records if r.name == "brainage.group.cv" and r.levelno == logging.INFO]
    assert len(lines) == 6
    assert lines[0].startswith("[1/6] ridge fold 1/3: ") and lines[-1].startswith("[6/6] ridge_anat fold 3/3: ")
    assert all("fitted in" in line for line in lines)


def test_fit_line_names_epochs_and_best_validation_loss():
    from brainage.group.cv import fit_line

    est = SimpleNamespace(history_=[{"epoch": e, "val_loss": 1.0 / (e + 1)} for e in range(8)], best_epoch_=5,
                          training_summary_={"n_validation": 12})
    assert fit_line(est) == ", 8 epochs (best 6), validation loss 0.167"
    assert fit_line(SimpleNamespace()) == ""  # a classical model: no epochs


def test_bar_on_a_terminal_shows_the_fit_and_its_epoch(monkeypatch, records):
    from rich.console import Console

    monkeypatch.setattr(console, "_console", Console(file=io.StringIO(), force_terminal=True, width=100))
    with progress("training", 2, bar=True) as task:
        task.describe("training: pidreg fold 1/2")
        report_epoch(3, 50)
        assert task.bar.tasks[0].description == "training: pidreg fold 1/2 · epoch 3/50"
        task.finished("pidreg fold 1/2: fitted")
        assert task.bar.tasks[0].completed == 1
    assert not console._live  # the bar is stopped with the last open task
    assert "[1/2] pidreg fold 1/2: fitted" in console._console.file.getvalue()


def test_a_repeated_warning_is_shown_once_then_counted():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    dedupe = DedupeFilter(handler)
    handler.addFilter(dedupe)
    log = logging.getLogger("brainage.test_console.dedupe")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        for _ in range(4):
            log.warning("ComBat found one site; set group.combat.enabled: false")
        log.warning("another warning")
        for fold in (1, 2, 3):  # the same template with other values: one warning per fold
            log.warning("the reference covariance of fold %d is singular", fold)
        log.info("info lines are never deduplicated")
        log.info("info lines are never deduplicated")
        dedupe.flush()
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines.count("ComBat found one site; set group.combat.enabled: false") == 1
    assert lines.count("info lines are never deduplicated") == 2
    assert lines.count("another warning") == 1
    assert "the reference covariance of fold 1 is singular" in lines
    assert not any("fold 2" in line or "fold 3" in line for line in lines)
    assert lines[-2:] == [
        "the warning 'ComBat found one site; set group.combat.enabled: false' was repeated 3 more times",
        "the warning 'the reference covariance of fold 1 is singular' was repeated 2 more times "
        "(with other values)"]


def test_setup_logging_routes_library_warnings_once(monkeypatch):
    root = logging.getLogger("brainage")
    py = logging.getLogger("py.warnings")
    saved = (root.handlers[:], root.level, root.propagate, py.handlers[:], py.propagate)
    monkeypatch.setattr(console.atexit, "register", lambda f: f)
    root.handlers.clear()
    try:
        handler = console.setup_logging(0)
        stream = io.StringIO()
        handler.setStream(stream)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            for _ in range(3):
                warnings.warn("a library's deprecation", FutureWarning, stacklevel=1)
        console.flush_warnings()  # what a command calls before its closing lines
        text = stream.getvalue()
        assert text.count("FutureWarning: a library's deprecation") == 2  # once, and once in the count
        summary = [line for line in text.splitlines() if "was repeated" in line]
        assert len(summary) == 1 and "was repeated 2 more times" in summary[0]
        # the summary names the warning, not where it was raised: a long checkout path would
        # otherwise push the message itself past the line's 80 characters
        assert "test_console.py" not in summary[0]
        assert "FutureWarning: a library's deprecation" in summary[0]
        console.flush_warnings()  # the counts are written once: at exit, nothing more
        assert stream.getvalue() == text
    finally:
        logging.captureWarnings(False)
        root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]
        py.handlers[:], py.propagate = saved[3], saved[4]


def test_route_library_output_keeps_c_level_output_and_warnings_in_the_log(tmp_path, capfd, records):
    log_file = tmp_path / "sub-01_desc-anat_log.txt"
    log_file.write_text("first line\n")
    with route_library_output(log_file):
        os.write(2, b"Warning: NIftI spatial units are 'unknown'.\n")  # what ITK/ANTs C++ code does
        os.write(1, b"antsRegistration iteration 1\n")
        print("a library's print", flush=True)
        warnings.warn("a library's UserWarning", UserWarning, stacklevel=1)
        with route_library_output(tmp_path / "inner.txt"):  # nested: the descriptors stay with the outer
            os.write(2, b"from a nested block\n")
        os.write(2, b"still in the block\n")
    os.write(2, b"after the block\n")
    text = log_file.read_text()
    assert text.startswith("first line\n")  # appended to the stage log, not truncated
    assert "Warning: NIftI spatial units are 'unknown'." in text
    assert "antsRegistration iteration 1" in text and "a library's print" in text
    assert "from a nested block" in text and text.endswith("still in the block\n")
    assert not (tmp_path / "inner.txt").exists()
    out, err = capfd.readouterr()
    assert "NIftI" not in err and "antsRegistration" not in out
    assert err == "after the block\n"  # fd 2 restored
    assert any("UserWarning: a library's UserWarning" in r.getMessage() for r in records
               if r.name == "brainage.warnings")
    with route_library_output(None):  # warnings only: the descriptors are left alone
        os.write(2, b"still the console\n")
    assert capfd.readouterr().err == "still the console\n"
