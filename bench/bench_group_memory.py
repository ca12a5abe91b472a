"""Benchmark: peak memory of training on 3D maps does not grow with the cohort.

Volumes stream from disk (:class:`brainage.training.datasets.VolumeDataset`),
so a cohort of 10,000 participants' 2 mm maps (36 GB as float32) must train on
a 24 GB machine. This benchmark builds derivative trees of ``N`` participants
whose maps are symbolic links to the maps of a simulated cohort (cycled, with
renamed files, so each of the ``N`` is a distinct participant to the reader),
then, in a fresh process per size, loads the cohort with
:func:`brainage.cohort.data.load_cohort` (maps inputs: the structural
``GM_modulated`` map at res-2 and the functional fALFF map at res-4) and fits
PIDReg with 3D CNN encoders for one epoch, and records peak RSS, the time per
participant and the size of the volumes on disk and in memory (float32).

Run from the repository root::

    .venv/bin/python bench/bench_group_memory.py --derivatives COHORT/bids/derivatives/brainage \\
        --sizes 250 2000

Writes ``bench/results/group_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result

GM = "space-MNI152NLin2009aSym_res-2_label-GM_desc-modulated_probseg.nii.gz"
FALFF = "task-rest_space-MNI152NLin2009aSym_res-4_desc-falff_boldmap.nii.gz"
#: The files the loader reads per participant, as (datatype, name after ``sub-<label>_``).
FILES = [("anat", "desc-qc_anat.json"), ("anat", GM), ("func", "task-rest_desc-qc_bold.json"),
         ("func", FALFF)]
CONFIG = {
    "anat": {"kind": "maps", "maps": ["GM_modulated"], "resolution": 2},
    "func": {"kind": "maps", "maps": ["falff"], "resolution": 4},
}
PARAMS = {"max_epochs": 1, "latent_dim": 4, "hidden": [8], "batch_size": 16, "lr": 0.01,
          "encoders": {"anat": {"channels": [4, 8, 16], "final_channels": 8, "input_pool": 2},
                       "func": {"channels": [4, 8], "final_channels": 8}}}


def build_tree(source: Path, bids_src: Path, root: Path, n: int) -> tuple[Path, Path]:
    """A BIDS folder and derivatives of ``n`` participants linked to ``source``'s files."""
    import pandas as pd

    people = pd.read_csv(bids_src / "participants.tsv", sep="\t")
    people = people[[(source / p / "anat" / f"{p}_{GM}").exists() and
                     (source / p / "func" / f"{p}_{FALFF}").exists() for p in people["participant_id"]]]
    if people.empty:
        raise SystemExit(f"no participant of {source} has both maps ({GM}, {FALFF})")
    bids = root / "bids"
    deriv = bids / "derivatives" / "brainage"
    rows = []
    for i in range(n):
        src = people.iloc[i % len(people)]
        label = f"sub-{i + 1:05d}"
        for datatype, name in FILES:
            target = deriv / label / datatype / f"{label}_{name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(source / src["participant_id"] / datatype / f"{src['participant_id']}_{name}", target)
        rows.append({**src.to_dict(), "participant_id": label})
    pd.DataFrame(rows).to_csv(bids / "participants.tsv", sep="\t", index=False)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "memory", "BIDSVersion": "1.9.0"}))
    return bids, deriv


def child(bids: Path, deriv: Path) -> dict:
    """Load the cohort and fit one epoch; return time and peak memory (runs in its own process)."""
    import resource

    import torch

    from brainage.cohort.data import load_cohort
    from brainage.config import GroupConfig
    from brainage.estimators.registry import make_estimator
    from brainage.group.transforms import FeatureTransforms

    torch.set_num_threads(2)
    cfg = GroupConfig(inputs=CONFIG, models=["pidreg"], primary_model="pidreg",
                      model_params={"pidreg": PARAMS})
    t0 = time.perf_counter()
    cohort = load_cohort(bids, deriv, cfg)
    load_s = time.perf_counter() - t0
    parts = cohort.participants
    keys = parts.index[parts["is_control"].to_numpy(bool)]
    X = FeatureTransforms.fit(cohort, keys, cfg, ["anat", "func"]).inputs(cohort, keys, ["anat", "func"])
    y = parts.loc[keys, "age"].to_numpy(float)
    est = make_estimator("pidreg", modalities=["anat", "func"], params=PARAMS, device="cpu")
    t0 = time.perf_counter()
    est.fit(X, y)
    fit_s = time.perf_counter() - t0
    shape = tuple(X["anat"][0].shape)
    return {"n_participants": len(parts), "n_trained": len(keys), "load_seconds": round(load_s, 1),
            "fit_seconds_one_epoch": round(fit_s, 1),
            "fit_seconds_per_participant": round(fit_s / len(keys), 4),
            "anat_shape": list(shape),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--derivatives", type=Path, help="derivatives of a simulated cohort")
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 2000])
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(*args.child)))
        return 0
    source = args.derivatives.resolve()
    bids_src = source.parents[1]
    runs = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            bids, deriv = build_tree(source, bids_src, Path(tmp), n)
            proc = subprocess.run([sys.executable, __file__, "--child", str(bids), str(deriv)],
                                  capture_output=True, text=True, check=False)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.stderr.write(proc.stderr[-4000:])
                return 1
            result = json.loads(line[0][7:])
        voxels = 1
        for s in result["anat_shape"]:
            voxels *= s
        result["anat_float32_gb_if_in_memory"] = round(n * voxels * 4 / 1e9, 2)
        runs.append(result)
        print(json.dumps(result))
    per = runs[-1]["anat_float32_gb_if_in_memory"] / runs[-1]["n_participants"]
    figures = {
        "runs": runs, "params": PARAMS, "inputs": CONFIG,
        "anat_float32_gb_at_10000": round(per * 10_000, 1),
        "peak_rss_growth_mb": round(runs[-1]["peak_rss_mb"] - runs[0]["peak_rss_mb"], 1),
        "note": "One epoch per size in a fresh process; volumes stream from disk through symbolic "
                "links, so the page cache, not the process, holds recently read files.",
    }
    print(f"wrote {write_result('group_memory', figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
