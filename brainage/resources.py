"""Locate the data folders shipped with brainage (pipelines, atlases, reports).

In an installed wheel they live in ``brainage/_data/<name>``; in a checkout or
an editable install they are the top-level folders of the repository.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
DATA_FOLDERS = ("pipelines", "atlases", "reports")


def data_dir(name: str) -> Path:
    """Return the folder of shipped data called ``name``.

    Parameters
    ----------
    name : {"pipelines", "atlases", "reports"}
        Which data folder.

    Returns
    -------
    pathlib.Path
        An existing directory.

    Raises
    ------
    ValueError
        If ``name`` is not a shipped data folder.
    FileNotFoundError
        If the folder is missing from the installation.

    Examples
    --------
    >>> (data_dir("pipelines") / "default.yaml").is_file()
    True
    """
    if name not in DATA_FOLDERS:
        raise ValueError(f"Unknown data folder {name!r}; expected one of {DATA_FOLDERS}.")
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"brainage's {name!r} data folder is missing from {_PACKAGE_DIR}; "
        "reinstall brainage (pip install --force-reinstall brainage)."
    )


def pipeline_file(name: str) -> Path:
    """Return the path of a shipped pipeline spec, e.g. ``pipeline_file("demo")``."""
    path = data_dir("pipelines") / f"{name.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in data_dir("pipelines").glob("*.yaml"))
        raise FileNotFoundError(f"No shipped pipeline {name!r}; shipped pipelines: {known}.")
    return path
