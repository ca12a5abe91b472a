"""Participant-level stages: registry, stage context and worker-side execution.

The registry names each stage's code and the function listing the files it
reads for a participant (:attr:`StageSpec.inputs`, for its fingerprint); the
context is what a stage function receives; :func:`execute_task` runs one
participant × stage in a worker.

A stage is a function ``run(ctx: StageContext) -> dict``. It reads its inputs
from ``ctx.inputs`` (and, for a downstream stage, the final outputs of the
stages it requires under ``ctx.output_dir``), writes every output to
``ctx.path(**entities)`` (a private staging folder), and returns a summary
(QC metrics, flags) for its provenance record. The runner moves the staged
files into ``OUTPUT_DIR`` only when the stage succeeded, so a failure never
leaves half-written outputs. A stage that decides to exclude a participant
(too little clean data, say) returns ``{"excluded": True, "reason": ...}``;
that is recorded and is not an error.

Scratch files go to a per-task folder under the work directory (``-w``; by
default :func:`default_work_dir`, outside the derivatives so that they stay
BIDS-clean). It is removed when the task ends, failed or not, unless the
task asks to keep it (``--keep-work``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .bids import ParticipantInputs, derivative_path
from .exceptions import NotAvailableError

__all__ = [
    "STAGES",
    "StageContext",
    "StageSpec",
    "TaskResult",
    "default_work_dir",
    "execute_task",
    "record_path",
    "resolve_stages",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSpec:
    """A participant-level stage: where its code lives, what it reads and what it needs first."""

    name: str
    entry: str
    requires: tuple[str, ...] = ()
    description: str = ""
    #: Requirements that preprocessed input given with ``--derivatives`` (fMRIPrep) replaces.
    replaced_by_derivatives: tuple[str, ...] = ()
    #: ``"module:function"`` listing the files the stage reads for one participant,
    #: ``(inputs: ParticipantInputs, derivatives_dir) -> list[Path]`` (their checksums enter
    #: its fingerprint); empty: all of the participant's raw input files.
    inputs: str = ""

    def requirements(self, derivatives_dir=None) -> tuple[str, ...]:
        """Stages that must have run first for a participant.

        With fMRIPrep derivatives the functional stage reads MNI-space BOLD and
        fMRIPrep's confounds (WM and CSF signals included), so it needs no
        structural result.
        """
        if derivatives_dir is None:
            return self.requires
        return tuple(r for r in self.requires if r not in self.replaced_by_derivatives)

    @property
    def module(self) -> str:
        """Name of the module that holds the stage function."""
        return self.entry.partition(":")[0]

    def load(self):
        """Import and return the stage function."""
        return getattr(importlib.import_module(self.module), self.entry.partition(":")[2])

    def input_files(self, inputs: ParticipantInputs, derivatives_dir=None) -> list[Path]:
        """List the files this stage reads for one participant.

        Calls the function named by :attr:`inputs`; without one, every raw input
        file of the participant (:meth:`ParticipantInputs.files`).
        """
        if not self.inputs:
            return inputs.files()
        module, _, name = self.inputs.partition(":")
        return list(getattr(importlib.import_module(module), name)(inputs, derivatives_dir))

    def available(self) -> bool:
        """Whether this installation provides the stage's code."""
        try:
            return importlib.util.find_spec(self.module) is not None
        except ModuleNotFoundError:
            return False


#: The participant-level stages, in dependency order.
STAGES: dict[str, StageSpec] = {
    "anat": StageSpec(
        "anat",
        "brainage.anat.stage:run",
        description="structural: N4, registration to MNI, tissue maps, regional volumes",
        inputs="brainage.anat.stage:input_files",
    ),
    "func": StageSpec(
        "func",
        "brainage.func.stage:run",
        requires=("anat",),
        description="functional: motion correction, confounds, denoising, connectivity, maps",
        replaced_by_derivatives=("anat",),
        inputs="brainage.func.stage:input_files",
    ),
}


def resolve_stages(modalities, registry: dict[str, StageSpec] | None = None) -> list[StageSpec]:
    """Check that the requested stages exist in this version and order them.

    Raises
    ------
    NotAvailableError
        A requested stage is unknown or not implemented in this version.
    """
    from . import __version__

    registry = STAGES if registry is None else registry
    out = []
    for name in modalities:
        if name not in registry:
            raise NotAvailableError(
                f"unknown modality {name!r}; available: {', '.join(registry)}"
            )
        spec = registry[name]
        if not spec.available():
            raise NotAvailableError(
                f"the {name!r} stage ({spec.description}) is not available in brainage "
                f"{__version__} yet; nothing was run"
            )
        out.append(spec)
    order = list(registry)
    return sorted(out, key=lambda s: order.index(s.name))


def default_work_dir(output_dir: str | Path) -> Path:
    """Return the default scratch folder of runs writing to ``output_dir``.

    A folder of the system's temporary directory (``$TMPDIR``, else ``/tmp``)
    named from a hash of the resolved ``OUTPUT_DIR``, so that runs on
    different outputs never share scratch files and the derivatives stay
    BIDS-clean. On a Dask cluster each worker resolves it on its own host.

    Parameters
    ----------
    output_dir : path-like
        The derivatives root.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> default_work_dir("/data/out") == default_work_dir("/data/out/")
    True
    """
    resolved = Path(output_dir).resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"brainage-work-{digest}"


def record_path(output_dir: str | Path, subject: str, stage: str) -> Path:
    """Where the provenance record of ``subject`` × ``stage`` lives."""
    return derivative_path(
        output_dir, subject=subject, datatype="log", desc=stage, suffix="provenance",
        extension=".json",
    )


@dataclass
class StageContext:
    """What a stage function receives.

    Attributes
    ----------
    subject : str
        Participant label without ``sub-``.
    inputs : ParticipantInputs
        The participant's raw inputs.
    config : brainage.config.PipelineConfig
        The effective configuration (the stage reads its own section).
    output_dir : Path
        Final derivatives root; read upstream stages' outputs from here.
    staging_dir : Path
        Where this attempt's outputs are written (through :meth:`path`).
    work_dir : Path
        Scratch space for this participant × stage; removed after success.
    derivatives_dir : Path or None
        fMRIPrep derivatives given with ``--derivatives``.
    """

    subject: str
    inputs: ParticipantInputs
    config: object
    output_dir: Path
    staging_dir: Path
    work_dir: Path
    derivatives_dir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("brainage.stage"))

    def path(self, **entities) -> Path:
        """Staging path of an output, built from BIDS entities (subject is filled in)."""
        out = derivative_path(self.staging_dir, subject=self.subject, **entities)
        out.parent.mkdir(parents=True, exist_ok=True)
        return out

    def final_path(self, **entities) -> Path:
        """Return the final path of an output in OUTPUT_DIR (to read an upstream stage's result)."""
        return derivative_path(self.output_dir, subject=self.subject, **entities)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time a processing step; the timing goes into the provenance record."""
        start = time.perf_counter()
        self.logger.info("sub-%s: %s …", self.subject, name)
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - start, 3)


@dataclass(frozen=True)
class ParticipantTask:
    """One participant × stage, as shipped to a worker (plain, picklable data)."""

    subject: str
    stage: StageSpec
    inputs: ParticipantInputs
    config: dict
    output_dir: str
    work_dir: str | None
    fingerprint: str
    record: dict
    derivatives_dir: str | None = None
    threads: int = 1
    #: Keep the scratch folder of a failed task (``--keep-work``; successful ones are always removed).
    keep_work: bool = False
    #: Set by the scheduler for each submission: the prefix of this attempt's staging and scratch
    #: folder names, so that it can remove them when the worker dies under the task.
    submission: str | None = None

    @property
    def work_root(self) -> Path:
        """The folder holding this task's scratch folders (``-w``, else :func:`default_work_dir`)."""
        return Path(self.work_dir) if self.work_dir else default_work_dir(self.output_dir)

    def folder_name(self, token: str) -> str:
        """Name of this attempt's staging and scratch folders (``token``: unique per execution)."""
        prefix = f"{self.submission}-" if self.submission else ""
        return f"sub-{self.subject}_{self.stage.name}_{prefix}{token}"

    @property
    def key(self) -> str:
        """A unique, readable task key."""
        return f"sub-{self.subject}:{self.stage.name}"


@dataclass(frozen=True)
class TaskResult:
    """What a worker sends back."""

    subject: str
    stage: str
    status: str  # "done" | "excluded" | "failed"
    seconds: float
    error: str | None = None
    summary: dict | None = None


def _limit_threads(threads: int) -> None:
    for var in (
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
    ):
        os.environ[var] = str(threads)


def _describe_error(exc: BaseException) -> dict:
    cause = exc.__cause__ or exc.__context__
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "cause": f"{type(cause).__name__}: {cause}" if cause is not None else None,
        "traceback": "".join(traceback.format_exception(exc)),
    }


def _commit(staging: Path, output_dir: Path, previous: dict | None) -> list[str]:
    """Move staged files into place; remove outputs of the previous run no longer produced."""
    written = []
    for src in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = src.relative_to(staging)
        dst = output_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        written.append(rel.as_posix())
    if previous:
        for rel in set(previous.get("outputs", [])) - set(written):
            (output_dir / rel).unlink(missing_ok=True)
    return written


def execute_task(task: ParticipantTask) -> TaskResult:
    """Run one participant × stage in the current process; never raises for stage errors.

    Writes the provenance record (and on success the outputs) under
    ``OUTPUT_DIR``. Exceptions of the stage are caught and recorded; the
    result carries the error message. The task's scratch folder is removed
    at the end unless the task failed and ``task.keep_work`` is set (its
    path is then logged and recorded as ``work_dir``).
    """
    from .config import PipelineConfig, dump_config
    from .console import route_library_output
    from .provenance import read_record, software_versions
    from .writing import atomic_write_json

    _limit_threads(task.threads)
    output_dir = Path(task.output_dir)
    name = task.folder_name(uuid.uuid4().hex[:8])
    staging = output_dir / ".staging" / name
    work = task.work_root / name
    staging.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    config = PipelineConfig.model_validate(task.config)
    ctx = StageContext(
        subject=task.subject,
        inputs=task.inputs,
        config=config,
        output_dir=output_dir,
        staging_dir=staging,
        work_dir=work,
        derivatives_dir=Path(task.derivatives_dir) if task.derivatives_dir else None,
        logger=logging.getLogger(f"brainage.{task.stage.name}"),
    )
    log_file = ctx.path(datatype="log", desc=task.stage.name, suffix="log", extension=".txt")
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("brainage")
    root.addHandler(handler)
    previous_level = root.level
    root.setLevel(logging.INFO)
    rec_path = record_path(output_dir, task.subject, task.stage.name)
    previous = read_record(rec_path)
    record = dict(task.record)
    record.update(versions=software_versions(), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    start = time.perf_counter()
    status, error, summary = "failed", None, None
    try:
        dump_config(config, ctx.path(datatype="log", desc=task.stage.name, suffix="config",
                                     extension=".yaml"))
        with route_library_output(log_file):
            summary = task.stage.load()(ctx) or {}
        status = "excluded" if summary.get("excluded") else "done"
    except Exception as exc:
        error = _describe_error(exc)
        ctx.logger.error("sub-%s %s failed: %s", task.subject, task.stage.name, exc)
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()
    seconds = round(time.perf_counter() - start, 3)
    record.update(status=status, seconds=seconds, timings=ctx.timings, summary=summary, error=error)
    if status == "failed":
        # keep only the log files of the failed attempt; drop its partial outputs
        keep = {p for p in staging.rglob("*") if p.is_file() and "/log/" in p.as_posix()}
        for p in staging.rglob("*"):
            if p.is_file() and p not in keep:
                p.unlink()
        record["outputs"] = previous.get("outputs", []) if previous else []
        _commit(staging, output_dir, None)
        record["fingerprint"] = None  # a failed record is never up to date
        if task.keep_work:
            record["work_dir"] = str(work)
    else:
        record["outputs"] = [
            *_commit(staging, output_dir, previous),
            rec_path.relative_to(output_dir).as_posix(),
        ]
    atomic_write_json(rec_path, record)
    shutil.rmtree(staging, ignore_errors=True)
    if status == "failed" and task.keep_work:
        logger.warning("sub-%s %s: scratch files kept in %s (--keep-work)", task.subject,
                       task.stage.name, work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    message = None
    if error:
        message = error["message"] + (f" (caused by {error['cause']})" if error["cause"] else "")
    return TaskResult(task.subject, task.stage.name, status, seconds, message, summary)
