"""Shared helpers for benchmarks: machine description and atomic JSON results."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    """Platform, CPU count, memory and the versions of the main libraries."""
    from brainage.provenance import software_versions

    info = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": software_versions(),
    }
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def write_result(name: str, figures: dict) -> Path:
    """Write bench/results/<name>.json (machine info + figures) atomically."""
    from brainage.writing import atomic_write_json

    return atomic_write_json(RESULTS / f"{name}.json", {"benchmark": name, "machine": machine_info(),
                                                        **figures})


def add_cohort_arguments(parser, *, bids_default=None) -> None:
    """Add the options that name a simulated cohort: ``--bids``, ``--derivatives``, ``--config``."""
    parser.add_argument("--bids", type=Path, required=bids_default is None, default=bids_default,
                        help="simulated BIDS dataset")
    parser.add_argument("--derivatives", type=Path, help="default: BIDS/derivatives/brainage")
    parser.add_argument("--config", default="demo", help="a shipped pipeline name or a YAML file")


def cohort_paths(args) -> tuple[Path, Path]:
    """Return the resolved BIDS folder and derivatives folder that ``add_cohort_arguments`` named."""
    bids = args.bids.resolve()
    return bids, (args.derivatives or bids / "derivatives" / "brainage").resolve()


def oracle_mae(truth_dir, participant_ids) -> float:
    """The simulator's oracle MAE (``participants_truth.tsv``) on exactly these participants."""
    import pandas as pd

    people = pd.read_csv(Path(truth_dir) / "participants_truth.tsv", sep="\t").set_index("participant_id")
    rows = people.loc[participant_ids]
    return float((rows["age"] - rows["oracle_age"]).abs().mean())
