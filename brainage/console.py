"""What the user sees on the console: logging, progress bars, and library output kept out of it.

* :func:`setup_logging` sets up the ``brainage`` loggers for the command line:
  a rich handler on a terminal, time-stamped lines otherwise, Python warnings of
  the libraries routed through the same handler, and a repeated identical
  warning shown once (with how many times it was repeated, at the end).
* :func:`progress` is a rich progress bar on a terminal and one log line per
  finished item otherwise; :func:`report_epoch` lets the training loop show its
  epoch on the innermost bar, at no cost when there is none.
* :func:`route_library_output` sends what libraries print (Python warnings,
  and C/C++ code writing to file descriptors 1 and 2, such as ITK and ANTs)
  into a log file for the duration of a block: a participant's stage log.

This module imports nothing from brainage, so that every layer may use it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "DedupeFilter",
    "ProgressTask",
    "current",
    "flush_warnings",
    "get_console",
    "is_terminal",
    "progress",
    "report_epoch",
    "route_library_output",
    "setup_logging",
]

logger = logging.getLogger("brainage")

_console = None
_lock = threading.RLock()


def is_terminal(stream=None) -> bool:
    """Return whether ``stream`` (default ``sys.stderr``) is a terminal worth drawing on.

    False in a worker process (a participant task, a Dask worker): only the main
    process draws, so that bars of several processes never interleave.
    """
    import multiprocessing

    stream = sys.stderr if stream is None else stream
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False
    return tty and multiprocessing.parent_process() is None


def get_console():
    """Return the rich console on stderr shared by the log handler and the progress bars."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True)
    return _console


# --------------------------------------------------------------------------- logging
_WARNING_LOCATION = re.compile(r"^.*?:\d+: (?=\w+: )")


class DedupeFilter(logging.Filter):
    """Let a warning through once; count the ones that follow.

    A warning repeats another when it comes from the same logger with the same
    message template (``logger.warning("... %s ...", value)``: other values are
    repeats too, e.g. one per fold) or, without arguments, the same text.
    Records below ``level`` always pass. :meth:`flush` logs, through
    ``handler``, one line per warning that was repeated, with the count.

    Parameters
    ----------
    handler : logging.Handler, optional
        Where :meth:`flush` writes the counts (the handler the filter is on).
    level : int
        Lowest level that is deduplicated.
    """

    def __init__(self, handler: logging.Handler | None = None, level: int = logging.WARNING):
        super().__init__()
        self.handler = handler
        self.level = level
        self.counts: dict[tuple, int] = {}
        self._first: dict[tuple, tuple] = {}
        self._varied: set[tuple] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        """Return False for a repeat of a warning already shown."""
        if record.levelno < self.level or getattr(record, "brainage_repeats", False):
            return True
        text = record.getMessage()
        key = (record.name, record.levelno, record.msg if record.args else text)
        with _lock:
            if key in self.counts:
                self.counts[key] += 1
                if text != self._first[key][1]:
                    self._varied.add(key)
                return False
            self.counts[key] = 0
            self._first[key] = (record, text)
        return True

    def flush(self) -> None:
        """Log how often each repeated warning was suppressed, then forget the counts."""
        with _lock:
            repeated = [(k, n) for k, n in self.counts.items() if n]
            self.counts.clear()
            first, self._first = self._first, {}
            varied, self._varied = self._varied, set()
        stream = getattr(self.handler, "stream", None) or getattr(getattr(self.handler, "console", None),
                                                                  "file", None)
        if self.handler is None or getattr(stream, "closed", False):
            return  # e.g. at exit, after a test harness closed the stream it had lent
        for key, n in repeated:
            rec, text = first[key]
            text = text.splitlines()[0] if text else ""
            if rec.name == "py.warnings":  # "path:line: Category: message": the path says little
                text = _WARNING_LOCATION.sub("", text, count=1)
            if len(text) > 80:
                text = text[:79] + "…"
            times = "time" if n == 1 else "times"
            other = " (with other values)" if key in varied else ""
            line = logging.LogRecord(rec.name, rec.levelno, rec.pathname, rec.lineno,
                                     f"the warning {text!r} was repeated {n} more {times}{other}", None, None)
            line.brainage_repeats = True
            self.handler.handle(line)


class _StderrHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is when a record is emitted.

    A handler bound to the ``sys.stderr`` of the moment would keep writing to a stream that
    an embedding application (or pytest's capture) has since replaced and closed.
    """

    def __init__(self):
        self._fixed = None
        super().__init__(None)
        self._fixed = None

    @property
    def stream(self):
        """The stream given to :meth:`setStream`, else the current ``sys.stderr``."""
        return self._fixed if self._fixed is not None else sys.stderr

    @stream.setter
    def stream(self, value):
        self._fixed = None if value is sys.stderr else value


def setup_logging(verbose: int = 0) -> logging.Handler:
    """Send the ``brainage`` logs, and the libraries' Python warnings, to stderr.

    On a terminal a rich handler (sharing :func:`get_console` with the progress
    bars), otherwise ``HH:MM:SS LEVEL message`` lines. Below ``-vv`` a warning
    repeated word for word is shown once and counted at exit. ``verbose`` 0 keeps
    the participant stages' own logs (``brainage.stage``) to warnings; 1 shows
    them; 2 and more shows debug messages. Calling it again only sets the levels.

    Parameters
    ----------
    verbose : int
        Number of ``-v`` flags.

    Returns
    -------
    logging.Handler
        The console handler.
    """
    level = logging.DEBUG if verbose > 1 else logging.INFO
    root = logging.getLogger("brainage")
    root.setLevel(level)
    logging.getLogger("brainage.stage").setLevel(logging.WARNING if verbose == 0 else logging.NOTSET)
    handler = next((h for h in root.handlers if getattr(h, "brainage_console", False)), None)
    if handler is None and root.handlers:
        return root.handlers[0]  # configured by the embedding application
    if handler is None:
        if is_terminal():
            from rich.logging import RichHandler

            handler = RichHandler(console=get_console(), show_path=False, markup=False)
            handler.setFormatter(logging.Formatter("%(message)s"))
        else:
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        handler.brainage_console = True
        dedupe = DedupeFilter(handler)
        handler.addFilter(dedupe)
        handler.brainage_dedupe = dedupe
        atexit.register(dedupe.flush)
        root.addHandler(handler)
        root.propagate = False
        # the libraries' warnings (FutureWarning, ConvergenceWarning, ...) through the same handler
        if warnings.showwarning is not getattr(logging, "_showwarning", None):
            # logging keeps its own "already captured" flag, which goes stale when someone
            # (pytest, an application) restores warnings.showwarning behind its back
            logging.captureWarnings(False)
        logging.captureWarnings(True)
        py_warnings = logging.getLogger("py.warnings")
        py_warnings.addHandler(handler)
        py_warnings.propagate = False
    handler.brainage_dedupe.level = logging.CRITICAL + 1 if verbose > 1 else logging.WARNING
    return handler


def flush_warnings() -> None:
    """Write now the counts of repeated warnings that :func:`setup_logging` would write at exit.

    Called before a command's closing lines, so that its last line is the one that says
    where the outputs are, not a count of warnings.
    """
    for handler in logging.getLogger("brainage").handlers:
        dedupe = getattr(handler, "brainage_dedupe", None)
        if dedupe is not None:
            dedupe.flush()


# --------------------------------------------------------------------------- progress
class ProgressTask:
    """One bar of :func:`progress` (or, off a terminal, its log lines)."""

    def __init__(self, description: str, total: int | None, bar, log: logging.Logger):
        self.description = description
        self.total = total
        self.count = 0
        self.bar = bar
        self.log = log
        self._suffix = ""
        self.task_id = bar.add_task(description, total=total) if bar is not None else None

    def describe(self, description: str) -> None:
        """Set the bar's text (e.g. the fit under way); nothing off a terminal."""
        self.description = description
        self._suffix = ""
        if self.bar is not None:
            self.bar.update(self.task_id, description=description)

    def note(self, suffix: str) -> None:
        """Append ``suffix`` to the bar's text (e.g. the epoch); nothing off a terminal."""
        if self.bar is not None and suffix != self._suffix:
            self._suffix = suffix
            self.bar.update(self.task_id, description=f"{self.description} {suffix}")

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items done, without a line."""
        self.count += n
        if self.bar is not None:
            self.bar.advance(self.task_id, n)

    def finished(self, line: str, level: int = logging.INFO) -> None:
        """Count one item done and show its line: above the bar, or as a log record."""
        self.advance()
        line = f"[{self.count}/{self.total}] {line}" if self.total else line
        if self.bar is not None and self.log.isEnabledFor(level):
            self.bar.console.print(line, markup=False, highlight=False)
        else:
            self.log.log(level, line)


_live: list = []  # [rich Progress, number of open tasks] while a bar is drawn
_tasks: list[ProgressTask] = []  # open tasks, innermost last


@contextlib.contextmanager
def progress(description: str, total: int | None = None, *, log: logging.Logger | None = None,
             bar: bool | None = None) -> Iterator[ProgressTask]:
    """Show a progress bar on a terminal, one log line per finished item otherwise.

    Nested calls add a bar under the one already drawn. Off a terminal (a file, a
    pipe, a worker process) nothing is drawn: :meth:`ProgressTask.finished` logs its
    line at INFO and :meth:`ProgressTask.describe` / :meth:`ProgressTask.note` do nothing.

    Parameters
    ----------
    description : str
        Text of the bar.
    total : int, optional
        Number of items; lines are numbered ``[k/total]``.
    log : logging.Logger, optional
        Logger of the lines off a terminal (default ``brainage``).
    bar : bool, optional
        Force the bar on or off (default :func:`is_terminal`).

    Yields
    ------
    ProgressTask
    """
    log = log or logger
    draw = is_terminal() if bar is None else bar
    live = None
    if draw:
        with _lock:
            if not _live:
                import rich.progress as rp

                p = rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                                rp.TimeElapsedColumn(), console=get_console(), transient=False)
                p.start()
                _live[:] = [p, 0]
            _live[1] += 1
            live = _live[0]
    task = ProgressTask(description, total, live, log)
    _tasks.append(task)
    try:
        yield task
    finally:
        _tasks.remove(task)
        if live is not None:
            with _lock:
                _live[1] -= 1
                if _live[1] == 0:
                    live.stop()
                    _live.clear()


def current() -> ProgressTask | None:
    """Return the innermost open :func:`progress` task, or None."""
    return _tasks[-1] if _tasks else None


def report_epoch(epoch: int, max_epochs: int) -> None:
    """Show ``epoch k/max`` on the innermost bar; nothing when no bar is drawn.

    Called by the training loop after every epoch: without a bar it costs a list lookup.
    """
    if _tasks and _tasks[-1].bar is not None:
        _tasks[-1].note(f"· epoch {epoch}/{max_epochs}")


# --------------------------------------------------------------------------- library output
def _log_warning(message, category, filename, lineno, file=None, line=None):
    logging.getLogger("brainage.warnings").warning(
        "%s", warnings.formatwarning(message, category, filename, lineno, line).rstrip())


@contextlib.contextmanager
def route_library_output(log_file: str | Path | None, fds: tuple[int, ...] = (1, 2)) -> Iterator[None]:
    """Keep the libraries' output off the console for the duration of the block.

    Python warnings become records of the ``brainage.warnings`` logger (so they
    reach the handlers of ``brainage``: a participant's log file); whatever is
    written to the file descriptors ``fds`` (print, and C/C++ code such as ITK and
    ANTs writing to stdout or stderr) is appended to ``log_file``. Everything is
    restored on exit. The descriptors are the process's: while one block holds
    them, a block entered by another thread (tasks run as threads of one Dask
    worker) routes the warnings only, so that no output lands in another
    participant's log and the descriptors are restored once.

    Parameters
    ----------
    log_file : path-like or None
        File the descriptors go to; None routes the warnings only.
    fds : tuple of int
        Descriptors to redirect.
    """
    global _fd_owner
    saved, streams, text, owner = [], None, None, False
    with warnings.catch_warnings():
        # entering catch_warnings resets the "shown once" registries: each block's log gets its own
        warnings.showwarning = _log_warning
        try:
            if log_file is not None:
                with _lock:
                    owner = _fd_owner is None
                    if owner:
                        _fd_owner = threading.get_ident()
            if owner:
                _flush_std()
                target = os.open(os.fspath(log_file), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    for fd in fds:
                        saved.append((fd, os.dup(fd)))
                        os.dup2(target, fd)
                finally:
                    os.close(target)
                # Python-level writers too, where sys.stdout / sys.stderr are not the descriptors
                streams = (sys.stdout, sys.stderr)
                text = open(log_file, "a", encoding="utf-8", errors="replace", buffering=1)
                sys.stdout = sys.stderr = text
            yield
        finally:
            if owner:
                _flush_std()
                if streams is not None:
                    sys.stdout, sys.stderr = streams
                    text.close()
                for fd, copy in reversed(saved):
                    os.dup2(copy, fd)
                    os.close(copy)
                with _lock:
                    _fd_owner = None


_fd_owner: int | None = None  # thread whose route_library_output holds the descriptors


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
