"""Provenance: software versions, input checksums and per-stage records.

Every participant × stage leaves a JSON record in ``sub-XX/log/`` saying what
ran, on which inputs (with SHA-256), with which configuration, for how long,
what it wrote and, on failure, the error with its cause. A rerun compares the
record's fingerprint with the current one to decide whether the stage is up to
date.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

__all__ = [
    "TRACKED_PACKAGES",
    "fingerprint",
    "read_record",
    "sha256_file",
    "software_versions",
]

#: Packages whose versions are recorded with every output.
TRACKED_PACKAGES = (
    "brainage",
    "numpy",
    "scipy",
    "pandas",
    "nibabel",
    "nilearn",
    "antspyx",
    "pybids",
    "torch",
    "monai",
    "scikit-learn",
    "dask",
    "distributed",
)

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def software_versions() -> dict[str, str | None]:
    """Python, platform and the versions of :data:`TRACKED_PACKAGES` (None if absent)."""
    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if versions["brainage"] is None:
        from . import __version__

        versions["brainage"] = __version__
    return versions


def input_manifest(paths) -> list[dict]:
    """Path, size and SHA-256 of each input file."""
    return [
        {"path": str(p), "size": Path(p).stat().st_size, "sha256": sha256_file(p)} for p in paths
    ]


def fingerprint(stage: str, config_section: dict, inputs: list[dict], upstream: dict) -> str:
    """Hash of everything that determines a stage's outputs.

    Parameters
    ----------
    stage : str
        Stage name.
    config_section : dict
        The stage's configuration (plain data).
    inputs : list of dict
        :func:`input_manifest` of the stage's inputs (only checksums count).
    upstream : dict
        Fingerprints of the stages this one reads from.

    Returns
    -------
    str
        SHA-256 hex digest. The brainage version is part of it, so an upgrade
        redoes the work.
    """
    from . import __version__

    blob = json.dumps(
        {
            "stage": stage,
            "version": __version__,
            "config": config_section,
            "inputs": sorted(item["sha256"] for item in inputs),
            "upstream": upstream,
        },
        sort_keys=True,
    ).encode()
    return hashlib.sha256(blob).hexdigest()


def read_record(path: str | Path) -> dict | None:
    """Read a stage record; ``None`` if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
