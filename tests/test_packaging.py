"""Packaging: the data folders ship inside the wheel; the console script is declared."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_data_folders(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    wheel = next(tmp_path.glob("brainage-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "brainage/_data/pipelines/default.yaml" in names
    assert "brainage/_data/pipelines/demo.yaml" in names
    for folder in ("atlases", "reports"):
        shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*") if p.is_file()}
        assert {f"brainage/_data/{s}" for s in shipped} <= set(names)
    assert any(n.endswith("entry_points.txt") for n in names)


def test_console_script_and_extras_declared():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["scripts"]["brainage"] == "brainage.cli:main"
    assert {"test", "gpu"} <= set(meta["optional-dependencies"])
