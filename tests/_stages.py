"""Small real stages used to test the participant task runner.

They read the participant's T1w with nibabel and write derivatives through the
stage context, like the real stages do, but in milliseconds. Each run appends
``sub-XX:stage`` to ``OUTPUT_DIR/../calls.log`` so tests can count executions.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pandas as pd

from brainage.exceptions import InputFileError
from brainage.writing import atomic_write_tsv, save_nifti


def _note(ctx, stage):
    with open(ctx.output_dir.parent / "calls.log", "a") as fh:
        fh.write(f"sub-{ctx.subject}:{stage}\n")


def _load(path):
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise InputFileError(path, "cannot be read as NIfTI", "replace the file") from exc
    return img, data


def run_copy(ctx):
    _note(ctx, "copy")
    with ctx.step("load"):
        img, data = _load(ctx.inputs.t1w[0])
    save_nifti(nib.Nifti1Image(data * 2, img.affine), ctx.path(datatype="anat", desc="copy",
                                                                suffix="T1w", extension=".nii.gz"))
    atomic_write_tsv(ctx.path(datatype="anat", desc="stats", suffix="morph", extension=".tsv"),
                     pd.DataFrame({"mean": [float(data.mean())]}))
    return {"mean": float(data.mean())}


def run_fail_after_writing(ctx):
    _note(ctx, "partial")
    save_nifti(nib.Nifti1Image(np.zeros((2, 3, 4), np.float32), np.eye(4)),
               ctx.path(datatype="anat", desc="partial", suffix="T1w", extension=".nii.gz"))
    if ctx.subject == "bad":
        raise RuntimeError("boom after writing one output")
    return {}


def run_crash(ctx):
    _note(ctx, "crash")
    if ctx.subject == "crash":
        os._exit(13)  # the worker process dies, as on an out-of-memory kill
    return {}


def run_downstream(ctx):
    _note(ctx, "down")
    upstream = ctx.final_path(datatype="anat", desc="copy", suffix="T1w", extension=".nii.gz")
    if not upstream.exists():
        raise FileNotFoundError(f"{upstream} missing: upstream stage has not run")
    img = nib.load(upstream)
    save_nifti(img, ctx.path(datatype="func", task="rest", desc="down", suffix="bold",
                             extension=".nii.gz"))
    return {}


def run_exclude(ctx):
    _note(ctx, "exclude")
    return {"excluded": True, "reason": "too little clean data (synthetic)"}
