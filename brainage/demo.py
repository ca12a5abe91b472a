"""``brainage demo``: simulate a small cohort and run every stage on it.

Each stage is a library call on files on disk, exactly what the command line
does: simulation, the participant level (structural and functional stages),
the group level (cross-validated models, interpretation) and the reports. The
time of each step goes to ``OUT/bids/derivatives/brainage/logs/demo_timings.json``
(read by ``bench/bench_demo.py``); the last lines printed say where the report
is and how to open it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from . import __version__
from .console import flush_warnings
from .exceptions import NotAvailableError, UsageError

logger = logging.getLogger(__name__)

__all__ = ["open_command", "run_demo"]


def open_command(path) -> str:
    """Return the shell command that opens ``path`` in the default browser on this platform."""
    quoted = f'"{path}"' if " " in str(path) else str(path)
    if sys.platform == "darwin":
        return f"open {quoted}"
    if sys.platform.startswith("win"):
        return f"start {quoted}"
    return f"xdg-open {quoted}"


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


def run_demo(out_dir, *, n_subjects: int | None = None, seed: int = 0, nprocs: int = 2,
             config_file="demo") -> int:
    """Run the demo; return the exit code (0 done, 1 some participants failed).

    Parameters
    ----------
    out_dir : path-like
        Receives ``bids/`` (the simulated dataset), ``bids/derivatives/brainage``
        (participant and group outputs) and its ``reports/``.
    n_subjects : int, optional
        Cohort size (default: the demo preset's).
    seed : int
        Random seed of the simulation.
    nprocs : int
        Local worker processes (simulation and participant level).
    config_file : str or path-like
        Pipeline spec: a shipped name (``demo``, ``demo-tabular``) or a YAML file.

    Returns
    -------
    int
        Exit code.
    """
    from .bids import discover_inputs, write_dataset_description
    from .config import dump_config, load_config
    from .parallel import run_participants
    from .stages import STAGES
    from .writing import atomic_write_json

    out_dir = Path(out_dir).resolve()
    bids_dir = out_dir / "bids"
    deriv = bids_dir / "derivatives" / "brainage"
    lines = []
    steps: dict[str, float] = {}
    load_start = _load()
    start = time.perf_counter()

    try:
        from .simulate import simulate_cohort
        from .simulate.params import resolve_params
    except ImportError:
        raise NotAvailableError(
            f"the demo needs the simulator, which is not available in brainage {__version__} yet"
        ) from None
    n_subjects = n_subjects or resolve_params("demo").n_subjects
    if n_subjects < 4:
        raise UsageError(f"--n-subjects must be at least 4 for the demo; got {n_subjects}")
    if nprocs < 1:
        raise UsageError(f"--nprocs must be at least 1; got {nprocs}")
    config = load_config(config_file)  # before simulating: a bad spec fails at once
    t0 = time.perf_counter()
    simulate_cohort(bids_dir, n_subjects=n_subjects, seed=seed, preset="demo", n_jobs=nprocs)
    steps["simulate"] = time.perf_counter() - t0
    lines.append(f"simulated cohort ({n_subjects} participants, {steps['simulate']:.0f} s): {bids_dir}")
    lines.append(f"  ground truth: {bids_dir / 'sourcedata' / 'brainage-truth'}")

    available = [name for name, spec in STAGES.items() if spec.available()]
    exit_code = 0
    deriv.mkdir(parents=True, exist_ok=True)
    write_dataset_description(deriv, bids_dir)
    dump_config(config, deriv / "logs" / "demo_config.yaml")
    participants = discover_inputs(bids_dir, modalities=available)
    t0 = time.perf_counter()
    summary = run_participants(participants, [STAGES[n] for n in available], config, deriv, nprocs=nprocs)
    steps["participant"] = time.perf_counter() - t0
    exit_code = summary.exit_code
    lines.append(
        f"participant level ({'+'.join(available)}, {steps['participant']:.0f} s): {deriv} "
        f"— {len(summary.done)} done, {len(summary.excluded)} excluded, "
        f"{len(summary.skipped)} up to date, {len(summary.failed)} failed"
    )
    for result in summary.failed:
        lines.append(f"  failed sub-{result.subject} {result.stage}: {result.error}")

    from .levels import group_summary, run_group, run_reports

    report = None
    try:
        t0 = time.perf_counter()
        outputs = run_group(bids_dir, deriv, config, train=True, report=False)
        steps["group"] = time.perf_counter() - t0
        lines.extend(group_summary(outputs))
        t0 = time.perf_counter()
        reports = run_reports(deriv)
        steps["report"] = time.perf_counter() - t0
        lines.extend(reports.summary())
        report = reports.cohort
    except UsageError as exc:
        lines.append(f"group level: stopped: {exc}")
        exit_code = exit_code or 2
    steps["total"] = time.perf_counter() - start
    atomic_write_json(deriv / "logs" / "demo_timings.json", {
        "n_subjects": n_subjects, "seed": seed, "nprocs": nprocs, "config": str(config_file),
        "seconds": {k: round(v, 1) for k, v in steps.items()},
        "load_average_start": load_start, "load_average_end": _load(),
        "cpu_count": os.cpu_count(), "version": __version__,
    })
    lines.append(f"demo finished in {steps['total']:.0f} s "
                 f"(step times in {deriv / 'logs' / 'demo_timings.json'})")
    if report is not None:
        lines.append(f"the report: {report}")
        lines.append(f"  open it in a browser: {open_command(report)}   (or file://{report})")
    flush_warnings()
    print("\n".join(lines))
    return exit_code
