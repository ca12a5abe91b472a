"""``brainage demo``: simulate a small cohort and run every stage that exists on it.

Each stage is a library call on files on disk, exactly what the command line
does; a stage that this version does not provide yet is named as such in the
output, never skipped silently.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from . import __version__
from .exceptions import NotAvailableError, UsageError

logger = logging.getLogger(__name__)


def run_demo(out_dir, *, n_subjects: int = 40, seed: int = 0, nprocs: int = 2) -> int:
    """Run the demo; return the exit code (0 done, 1 some participants failed).

    Parameters
    ----------
    out_dir : path-like
        Receives ``bids/`` (the simulated dataset) and ``derivatives/brainage``.
    n_subjects : int
        Cohort size.
    seed : int
        Random seed of the simulation.
    nprocs : int
        Local worker processes.

    Returns
    -------
    int
        Exit code.
    """
    from .bids import discover_inputs, write_dataset_description
    from .config import dump_config, load_config
    from .parallel import run_participants
    from .stages import STAGES

    out_dir = Path(out_dir).resolve()
    bids_dir = out_dir / "bids"
    deriv = bids_dir / "derivatives" / "brainage"
    lines = []
    start = time.perf_counter()

    try:
        from .simulate import simulate_cohort
    except ImportError:
        raise NotAvailableError(
            f"the demo needs the simulator, which is not available in brainage {__version__} yet"
        ) from None
    if n_subjects < 4:
        raise UsageError(f"--n-subjects must be at least 4 for the demo; got {n_subjects}")
    t0 = time.perf_counter()
    simulate_cohort(bids_dir, n_subjects=n_subjects, seed=seed, preset="demo")
    seconds = time.perf_counter() - t0
    lines.append(f"simulated cohort ({n_subjects} participants, {seconds:.0f} s): {bids_dir}")
    lines.append(f"  ground truth: {bids_dir / 'sourcedata' / 'brainage-truth'}")

    config = load_config("demo")
    available = [name for name, spec in STAGES.items() if spec.available()]
    missing = [name for name in STAGES if name not in available]
    exit_code = 0
    if available:
        deriv.mkdir(parents=True, exist_ok=True)
        write_dataset_description(deriv, bids_dir)
        dump_config(config, deriv / "logs" / "demo_config.yaml")
        participants = discover_inputs(bids_dir, modalities=available)
        t0 = time.perf_counter()
        summary = run_participants(
            participants, [STAGES[n] for n in available], config, deriv, nprocs=nprocs
        )
        exit_code = summary.exit_code
        lines.append(
            f"participant level ({'+'.join(available)}, {time.perf_counter() - t0:.0f} s): {deriv} "
            f"— {len(summary.done)} done, {len(summary.excluded)} excluded, "
            f"{len(summary.skipped)} up to date, {len(summary.failed)} failed"
        )
        for result in summary.failed:
            lines.append(f"  failed sub-{result.subject} {result.stage}: {result.error}")
    for name in missing:
        lines.append(f"participant stage {name!r}: not available in brainage {__version__} yet")

    from .levels import group_summary, run_group

    try:
        outputs = run_group(bids_dir, deriv, config, train=True)
        lines.extend(group_summary(outputs))
    except UsageError as exc:
        lines.append(f"group level: stopped: {exc}")
        exit_code = exit_code or 2
    lines.append(f"demo finished in {time.perf_counter() - start:.0f} s")
    print("\n".join(lines))
    return exit_code
