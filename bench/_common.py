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
