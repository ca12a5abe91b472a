"""Shared fixtures: seeded randomness, tiny images, fake BIDS datasets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

#: A 2 mm MNI-like affine (RAS, origin so that the grid covers the brain).
MNI_AFFINE_2MM = np.array(
    [[2.0, 0, 0, -90.0], [0, 2.0, 0, -126.0], [0, 0, 2.0, -72.0], [0, 0, 0, 1.0]]
)
#: Distinct sizes per axis so a swapped axis fails.
SHAPE_3D = (7, 8, 9)


@pytest.fixture
def rng():
    return np.random.default_rng(42)


@pytest.fixture
def affine_2mm():
    return MNI_AFFINE_2MM.copy()


def make_image(shape=SHAPE_3D, affine=MNI_AFFINE_2MM, *, seed=0, dtype=np.float32):
    """A small NIfTI image with positive random values."""
    import nibabel as nib

    data = np.random.default_rng(seed).uniform(1, 100, size=shape).astype(dtype)
    return nib.Nifti1Image(data, affine)


@pytest.fixture
def img_3d():
    return make_image()


@pytest.fixture
def img_4d():
    return make_image((*SHAPE_3D, 10))


def write_bids_dataset(root: Path, subjects: dict, *, participants=True, ages=None) -> Path:
    """Write a minimal BIDS dataset.

    ``subjects`` maps a label to a list of files, each a dict of entities with
    ``suffix`` in {"T1w", "bold"}; BOLD runs get a JSON sidecar with
    ``RepetitionTime``.
    """
    import nibabel as nib

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "fake", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    for i, (label, files) in enumerate(subjects.items()):
        for ents in files:
            suffix = ents["suffix"]
            datatype = "anat" if suffix == "T1w" else "func"
            parts = [f"sub-{label}"]
            for key, short in (("session", "ses"), ("task", "task"), ("run", "run")):
                if key in ents:
                    parts.append(f"{short}-{ents[key]}")
            folder = root / f"sub-{label}"
            if "session" in ents:
                folder = folder / f"ses-{ents['session']}"
            folder = folder / datatype
            folder.mkdir(parents=True, exist_ok=True)
            name = "_".join([*parts, suffix])
            shape = SHAPE_3D if suffix == "T1w" else (*SHAPE_3D, 12)
            nib.save(make_image(shape, seed=i), folder / f"{name}.nii.gz")
            if suffix == "bold":
                (folder / f"{name}.json").write_text(
                    json.dumps({"RepetitionTime": 2.0, "TaskName": ents.get("task", "rest")})
                )
    if participants:
        labels = list(subjects)
        ages = ages or [20.0 + 3 * i for i in range(len(labels))]
        lines = ["participant_id\tage\tsex"] + [
            f"sub-{lab}\t{age}\tF" for lab, age in zip(labels, ages)
        ]
        (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def bids_factory(tmp_path):
    """Build a fake BIDS dataset from a dict of entities."""

    def build(subjects=None, **kwargs):
        subjects = subjects or {
            "01": [{"suffix": "T1w"}, {"suffix": "bold", "task": "rest"}],
            "02": [{"suffix": "T1w"}, {"suffix": "bold", "task": "rest"}],
        }
        return write_bids_dataset(tmp_path / "bids", subjects, **kwargs)

    return build


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="session")
def aged_test_anatomy():
    """The simulator's "test" preset at 3 mm, its tissues aged to 20 and to 80 years.

    Returns ``(params, templates, young, old)``; read-only (shared by the session).
    """
    from brainage.simulate import aging, anatomy
    from brainage.simulate.params import resolve_params

    params = resolve_params("test")
    tpl = anatomy.load_templates(3.0, params.atlas, params.regional_weights)
    flat = np.zeros(tpl.shape, np.float32)
    return params, tpl, aging.aged_tissues(tpl, 20.0, params, flat), aging.aged_tissues(tpl, 80.0, params, flat)
