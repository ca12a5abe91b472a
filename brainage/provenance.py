"""Provenance: software versions, input checksums and per-stage records.

Every participant × stage leaves a JSON record in ``sub-XX/log/`` saying what
ran, on which inputs (with SHA-256), with which configuration, for how long,
what it wrote and, on failure, the error with its cause. A rerun compares the
record's fingerprint with the current one to decide whether the stage is up to
date.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import platform
from importlib import metadata
from pathlib import Path

__all__ = [
    "TRACKED_PACKAGES",
    "code_digest",
    "fingerprint",
    "read_record",
    "sha256_file",
    "software_versions",
    "source_closure",
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


def _package_root(name: str) -> Path | None:
    """Folder of the top-level package ``name`` (imports only that package), or None."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _module_file(name: str, roots: dict[str, Path | None]) -> Path | None:
    """Source file of module ``name`` under its package root, without importing it."""
    parts = name.split(".")
    root = roots.get(parts[0])
    if root is None:
        return None
    base = root.joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    source = base.parent / f"{base.name}.py"
    return source if len(parts) > 1 and source.is_file() else None


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """Every module name an import statement of ``tree`` may load (also inside functions).

    ``from a import b`` yields ``a`` and ``a.b``: ``b`` may be a submodule; names
    that are not modules are dropped when no file is found for them.
    """
    package = module if is_package else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
    return names


def source_closure(module: str, packages: tuple[str, ...] = ("brainage",)) -> dict[str, Path]:
    """Source files of ``module`` and of every module it imports, directly or not.

    Only modules of ``module``'s own top-level package and of ``packages`` are
    followed (third-party code is covered by :func:`software_versions`). The
    closure is static: every ``import`` statement counts, including those inside
    functions, and the ``__init__.py`` of each enclosing package is included
    because importing a submodule runs it. Nothing is imported except the
    top-level packages, to locate them.

    Returns
    -------
    dict
        Module name -> source file, sorted by name.
    """
    tops = {module.partition(".")[0], *packages}
    roots = {top: _package_root(top) for top in tops}
    found: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        path = _module_file(name, roots)
        if path is None:
            continue
        found[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:k]) for k in range(1, len(parts))]  # enclosing packages
        tree = ast.parse(path.read_bytes(), filename=str(path))
        todo += _imported_names(tree, name, path.name == "__init__.py")
    return dict(sorted(found.items()))


def code_digest(module: str) -> str:
    """SHA-256 over the source files of :func:`source_closure` (names and bytes).

    Part of a stage's fingerprint, so that outputs made by different code are not
    reported up to date even when the version string is the same (an editable
    install, a checkout of another commit). About 50 ms for a stage of brainage;
    the planner computes it once per stage and run.
    """
    digest = hashlib.sha256()
    for name, path in source_closure(module).items():
        digest.update(name.encode() + b"\0" + sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def fingerprint(
    stage: str, config_section: dict, inputs: list[dict], upstream: dict, code: str | None = None
) -> str:
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
    code : str, optional
        :func:`code_digest` of the stage's module, so that a change of the code
        that produces the outputs redoes the work.

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
            "code": code,
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
