"""Running participant tasks: local worker processes or a Dask cluster.

One task per participant × stage. A stage that requires another (``func``
needs ``anat``) is submitted once its requirement finished for that
participant. A failing participant never stops the others: its error is
recorded in its ``sub-XX/log/`` and listed at the end. A rerun skips every task
whose record says it is complete and whose fingerprint (inputs' checksums,
configuration, brainage version, the source of the stage's code, upstream
results) is unchanged.

Local execution uses a :class:`concurrent.futures.ProcessPoolExecutor` with
``spawn`` workers; a worker that dies (out of memory, a crash in native code)
costs a retry of the tasks it may have been running, not the run. Workers
exit as soon as the process that started them dies, even killed with
``SIGKILL`` (see :func:`_exit_with_parent`), so a killed run leaves nothing
running behind it. With a scheduler address the same tasks go to a
``dask.distributed`` cluster, whose workers must have brainage installed; Dask
retries tasks lost with a worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .provenance import code_digest, fingerprint, input_manifest, read_record
from .stages import ParticipantTask, StageSpec, TaskResult, default_work_dir, execute_task, record_path

__all__ = ["RunSummary", "plan_tasks", "run_participants"]

logger = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """Outcome of a participant-level run."""

    done: list[TaskResult] = field(default_factory=list)
    excluded: list[TaskResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[TaskResult] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, 1 otherwise (the rest is complete)."""
        return 1 if self.failed else 0


def _stage_inputs(spec: StageSpec, inputs, derivatives_dir=None) -> list:
    """List the files a stage reads for one participant (their checksums enter its fingerprint).

    Each stage names the function that lists them (:attr:`StageSpec.inputs`,
    e.g. fMRIPrep's outputs too with ``--derivatives``, so that a changed
    fMRIPrep output makes the stage run again); a stage that names none reads
    all of the participant's raw input files.
    """
    return spec.input_files(inputs, derivatives_dir)


def plan_tasks(participants, stages, config, output_dir, work_dir, *, derivatives_dir=None,
               keep_work: bool = False):
    """Build the task list and find which tasks are already up to date.

    ``work_dir`` None lets each worker use :func:`brainage.stages.default_work_dir`;
    ``keep_work`` keeps the scratch folders of failed tasks.

    Returns
    -------
    tasks : list of ParticipantTask
        Tasks to run (not up to date), in dependency order.
    skipped : list of str
        Keys of up-to-date tasks.
    """
    from .config import config_to_dict

    cfg = config_to_dict(config)
    tasks, skipped = [], []
    codes = {spec.module: code_digest(spec.module) for spec in stages}  # once per plan
    for inputs in participants:
        upstream: dict[str, str | None] = {}
        for spec in stages:
            section = cfg.get(spec.name, {})
            manifest = input_manifest(_stage_inputs(spec, inputs, derivatives_dir))
            ups = {}
            for name in spec.requirements(derivatives_dir):
                if name in upstream:
                    ups[name] = upstream[name]
                else:
                    rec = read_record(record_path(output_dir, inputs.subject, name))
                    ups[name] = rec.get("fingerprint") if rec else None
            code = codes[spec.module]
            fp = fingerprint(spec.name, section, manifest, ups, code)
            upstream[spec.name] = fp
            rec = read_record(record_path(output_dir, inputs.subject, spec.name))
            complete = (
                rec is not None
                and rec.get("status") in ("done", "excluded")
                and rec.get("fingerprint") == fp
                and all((Path(output_dir) / o).exists() for o in rec.get("outputs", []))
            )
            key = f"sub-{inputs.subject}:{spec.name}"
            if complete:
                skipped.append(key)
                continue
            record = {
                "subject": inputs.subject,
                "stage": spec.name,
                "fingerprint": fp,
                "config_hash": fingerprint(spec.name, section, [], {}),
                "config": section,
                "inputs": manifest,
                "upstream": ups,
                "code_sha256": code,
            }
            tasks.append(
                ParticipantTask(
                    subject=inputs.subject,
                    stage=spec,
                    inputs=inputs,
                    config=cfg,
                    output_dir=str(output_dir),
                    work_dir=str(work_dir) if work_dir else None,
                    fingerprint=fp,
                    record=record,
                    derivatives_dir=str(derivatives_dir) if derivatives_dir else None,
                    threads=config.run.threads_per_process,
                    keep_work=keep_work,
                )
            )
    return tasks, skipped


#: How often a local worker checks that the run that started it is still alive (seconds).
PARENT_POLL_SECONDS = 1.0


def _exit_with_parent(parent_pid: int, death_signal: bool) -> None:
    """Make this worker process exit when the process ``parent_pid`` that started it dies.

    The pool initializer of the local backend. A worker busy in a stage (or
    idle, waiting for work) would otherwise keep running, parented to init,
    after its run is killed with ``SIGKILL``, holding its memory and the
    multiprocessing resource tracker (which exits by itself once no process
    holds its pipe). On Linux, with ``death_signal``, the kernel sends the
    worker ``SIGKILL`` when its parent thread ends (``PR_SET_PDEATHSIG``); only
    asked for when the pool is started from the main thread, since the signal
    follows the thread that spawned the worker. Everywhere, a daemon thread
    also compares :func:`os.getppid` with ``parent_pid`` every
    :data:`PARENT_POLL_SECONDS` and calls :func:`os._exit` once the parent is
    gone, which works even while the main thread is inside native code.

    Parameters
    ----------
    parent_pid : int
        Process id of the run that started the pool.
    death_signal : bool
        Ask Linux for ``SIGKILL`` on the parent's death.
    """
    if death_signal and sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # no libc or no prctl: the polling thread remains
            import ctypes
            import signal

            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the worker got here
        os._exit(1)

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="brainage-parent-watch", daemon=True).start()


class _LocalBackend:
    def __init__(self, nprocs: int):
        self.nprocs = nprocs
        self.capacity = nprocs  # never queue work inside a pool that may break
        self._pool = None

    def _ensure(self):
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                max_workers=self.nprocs, mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_parent,
                initargs=(os.getpid(), threading.current_thread() is threading.main_thread()),
            )
        return self._pool

    def submit(self, task):
        return self._ensure().submit(execute_task, task)

    def wait(self, futures):
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(futures, return_when=FIRST_COMPLETED)
        return done

    def outcome(self, future):
        """Return (result, lost); lost is True when the worker died under the task."""
        from concurrent.futures.process import BrokenProcessPool

        try:
            return future.result(), False
        except BrokenProcessPool:
            self._pool = None  # start a fresh pool for whatever runs next
            return None, True

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


#: How long to try to reach a Dask scheduler before giving up.
DASK_CONNECT_TIMEOUT = "30s"


class _DaskBackend:
    def __init__(self, address: str, retries: int):
        from distributed import Client

        from .exceptions import UsageError

        try:
            self.client = Client(address, timeout=DASK_CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            raise UsageError(
                f"cannot reach the Dask scheduler at {address} within {DASK_CONNECT_TIMEOUT} "
                f"({' '.join(str(exc).split()) or type(exc).__name__}); start the scheduler and its "
                "workers first (README, 'On a Dask or SLURM cluster') and pass the address it "
                "prints, or leave out --scheduler-address to run on this machine; nothing was run"
            ) from None
        self.retries = retries
        self.capacity = 1_000_000  # the scheduler queues and balances

    def submit(self, task):
        return self.client.submit(
            execute_task, task, key=f"brainage-{task.key}-{time.time_ns()}", pure=False,
            retries=self.retries,
        )

    def wait(self, futures):
        from distributed import wait

        return wait(list(futures), return_when="FIRST_COMPLETED").done

    def outcome(self, future):
        from distributed import KilledWorker

        try:
            return future.result(), False
        except KilledWorker:
            return None, True

    def close(self):
        self.client.close()


class _Progress:
    """A rich progress bar on a terminal, one log line per finished task otherwise."""

    def __init__(self, total: int):
        from .console import progress

        self.total = total
        self._context = progress("participants", total, log=logger)
        self.task = self._context.__enter__()

    def update(self, result: TaskResult):
        line = f"sub-{result.subject} {result.stage}: {result.status} in {result.seconds:.1f} s"
        if result.error:
            line += f": {result.error}"
        self.task.finished(line, logging.WARNING if result.status == "failed" else logging.INFO)

    def close(self):
        self._context.__exit__(None, None, None)


def run_participants(
    participants,
    stages,
    config,
    output_dir,
    *,
    work_dir=None,
    nprocs: int | None = None,
    scheduler_address: str | None = None,
    derivatives_dir=None,
    keep_work: bool = False,
) -> RunSummary:
    """Run every stage for every participant, in parallel, skipping what is up to date.

    Parameters
    ----------
    participants : list of ParticipantInputs
        From :func:`brainage.bids.discover_inputs`.
    stages : list of StageSpec
        From :func:`brainage.stages.resolve_stages` (dependency order).
    config : PipelineConfig
        Effective configuration.
    output_dir : path-like
        Derivatives root.
    work_dir : path-like, optional
        Scratch space; each task works in its own folder under it. Default
        :func:`brainage.stages.default_work_dir` (the temporary directory of
        the host running the task, outside the derivatives).
    nprocs : int, optional
        Local worker processes (default ``config.run.nprocs``).
    scheduler_address : str, optional
        A ``dask.distributed`` scheduler (``tcp://host:8786``); overrides ``nprocs``.
    derivatives_dir : path-like, optional
        fMRIPrep derivatives.
    keep_work : bool
        Keep the scratch folder of a failed task (``--keep-work``); it is
        removed otherwise, as is every successful task's.

    Returns
    -------
    RunSummary
    """
    output_dir = Path(output_dir)
    work_dir = Path(work_dir).resolve() if work_dir else None
    tasks, skipped = plan_tasks(
        participants, stages, config, output_dir, work_dir, derivatives_dir=derivatives_dir,
        keep_work=keep_work,
    )
    summary = RunSummary(skipped=skipped)
    for key in skipped:
        logger.info("%s is up to date; skipped", key)
    if not tasks:
        return summary
    backend = _make_backend(config, nprocs, scheduler_address)
    scheduler = _Scheduler(tasks, backend, summary, config.run.retries,
                           local_scratch=bool(work_dir) or not scheduler_address)
    _log_scratch_folder(output_dir, work_dir, scheduler_address)
    try:
        scheduler.run()
    finally:
        scheduler.close()
        default_root = None if work_dir or scheduler_address else default_work_dir(output_dir)
        _remove_empty_scratch(output_dir, default_root)
    return summary


def _make_backend(config, nprocs: int | None, scheduler_address: str | None):
    """Connect to the Dask scheduler at ``scheduler_address``, else prepare local workers."""
    if scheduler_address:
        return _DaskBackend(scheduler_address, config.run.retries)
    return _LocalBackend(nprocs or config.run.nprocs)


def _log_scratch_folder(output_dir: Path, work_dir: Path | None,
                        scheduler_address: str | None) -> None:
    """Say where the tasks' scratch folders go (``-w``, each Dask worker's, or the default)."""
    if work_dir is not None:
        logger.info("scratch folder: %s", work_dir)
    elif scheduler_address:
        logger.info("scratch folder: the temporary folder of each Dask worker (-w to choose one)")
    else:
        logger.info("scratch folder: %s", default_work_dir(output_dir))


class _Scheduler:
    """The task loop of a run: submits tasks whose requirements finished, collects results.

    A task waits while a stage it requires is pending or running for its
    participant, and fails without running once that stage failed or excluded
    the participant. A task whose worker died is retried; one that was running
    beside others when that happened is a suspect and is retried alone, so
    that the task killing its worker is found and the others are not blamed.
    Only losses while a task ran alone count against its ``retries``.
    """

    def __init__(self, tasks, backend, summary: RunSummary, retries: int, *, local_scratch: bool = True):
        self.backend = backend
        self.local_scratch = local_scratch
        self.capacity = backend.capacity
        self.summary = summary
        self.retries = retries
        self.pending = {t.key: t for t in tasks}
        self.by_key = dict(self.pending)
        self.attempts = dict.fromkeys(self.pending, 0)  # worker losses while the task ran alone
        self.suspects: set[str] = set()  # lost with a worker while others ran: rerun each alone
        self.finished: dict[str, str] = {}
        #: future -> [key, alone]; "alone" stays true only if nothing else ran beside the task
        self.running: dict = {}
        self.progress = _Progress(len(tasks))

    def run(self) -> None:
        """Submit and collect tasks until none is pending or running."""
        while self.pending or self.running:
            self._fail_blocked()
            self._submit_next()
            if self.running:
                self._collect()

    def close(self) -> None:
        """Close the progress display and the backend."""
        self.progress.close()
        self.backend.close()

    def _requirement_keys(self, task) -> list[str]:
        return [f"sub-{task.subject}:{req}" for req in task.stage.requirements(task.derivatives_dir)]

    def _ready(self, task) -> bool:
        """Whether no requirement of ``task`` is pending or running (finished or up to date)."""
        active = {entry[0] for entry in self.running.values()}
        return not any(k in self.pending or k in active for k in self._requirement_keys(task))

    def _blocked(self, task) -> list[str]:
        """Return the requirements of ``task`` that failed or excluded its participant."""
        return [
            req for req in task.stage.requirements(task.derivatives_dir)
            if self.finished.get(f"sub-{task.subject}:{req}") in ("failed", "excluded")
        ]

    def _finish(self, result: TaskResult) -> None:
        """Record a task's result in the summary and the progress display."""
        self.finished[f"sub-{result.subject}:{result.stage}"] = result.status
        {"done": self.summary.done, "excluded": self.summary.excluded,
         "failed": self.summary.failed}[result.status].append(result)
        self.progress.update(result)

    def _fail_blocked(self) -> None:
        """Fail, without running them, the pending tasks whose requirement did not complete."""
        for key, task in list(self.pending.items()):
            why = self._blocked(task)
            if why:
                del self.pending[key]
                self._finish(TaskResult(task.subject, task.stage.name, "failed", 0.0,
                                        f"not run because its {why[0]!r} stage did not complete"))

    def _submit(self, key: str) -> None:
        for entry in self.running.values():
            entry[1] = False
        task = dataclasses.replace(self.pending.pop(key), submission=uuid.uuid4().hex[:8])
        self.by_key[key] = task
        self.running[self.backend.submit(task)] = [key, not self.running]

    def _submit_next(self) -> None:
        """Submit a ready suspect alone once nothing runs, else ready tasks up to capacity."""
        isolated = [k for k in self.pending if k in self.suspects and self._ready(self.pending[k])]
        if isolated:
            if not self.running:
                self._submit(isolated[0])
            return
        for key in [k for k in self.pending if self._ready(self.pending[k])]:
            if len(self.running) >= self.capacity:
                break
            self._submit(key)

    def _collect(self) -> None:
        """Wait for at least one running task to end and record it (or requeue it)."""
        for future in self.backend.wait(list(self.running)):
            key, alone = self.running.pop(future)
            result, lost = self.backend.outcome(future)
            if lost:
                result = self._after_worker_loss(key, alone)
                if result is None:
                    continue
            self._finish(result)

    def _after_worker_loss(self, key: str, alone: bool) -> TaskResult | None:
        """Requeue a task whose worker died; its failure once it died alone too often.

        The dead attempt's staging folder (half-written outputs) is removed, and its scratch
        folder too unless ``--keep-work`` (where this process can reach it: not on the hosts
        of Dask workers when no ``-w`` folder is shared).
        """
        task = self.by_key[key]
        _remove_attempt_folders(task, local=self.local_scratch)
        self.attempts[key] += alone
        if not alone or self.attempts[key] <= self.retries:
            logger.warning("%s: worker lost; retrying", key)
            self.suspects.add(key)
            self.pending[key] = task
            return None
        return TaskResult(
            task.subject, task.stage.name, "failed", 0.0,
            "the worker process died while running this task (out of memory, or a "
            "crash in native code); rerun with fewer --nprocs or more memory",
        )


def _remove_attempt_folders(task: ParticipantTask, *, local: bool) -> None:
    """Remove the staging (and, unless ``keep_work``, scratch) folders of a submission of ``task``."""
    if not task.submission:
        return
    pattern = task.folder_name("*")
    for folder in (Path(task.output_dir) / ".staging").glob(pattern):
        shutil.rmtree(folder, ignore_errors=True)
    if not local:
        return
    for folder in task.work_root.glob(pattern):
        if task.keep_work:
            logger.warning("%s: scratch files of the attempt whose worker died kept in %s (--keep-work)",
                           task.key, folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def _remove_empty_scratch(output_dir: Path, work_root: Path | None) -> None:
    """Remove ``OUTPUT_DIR/.staging`` and the default work root once no task uses them.

    Only empty folders go (a kept ``--keep-work`` folder, or another run's
    staging on the same ``OUTPUT_DIR``, stays); a ``-w`` folder is the user's
    and is never removed.
    """
    for folder in (output_dir / ".staging", work_root):
        if folder is not None:
            with contextlib.suppress(OSError):
                folder.rmdir()
