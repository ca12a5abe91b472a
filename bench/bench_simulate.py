"""Benchmark and figures of the simulator.

Times ``simulate_cohort`` for the demo cohort (40 participants, preset demo)
and for one participant at the realistic default preset, writes
``bench/results/simulate.json``, and draws ``docs/img/simulate_participant.png``
(a simulated T1w and BOLD mean beside the template) and
``docs/img/simulate_age_trends.png`` (true GM and ventricle volume against age).

Usage: ``python bench/bench_simulate.py [--n-subjects 40] [--nprocs 2] [--skip-default]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _cpu() -> float:
    """CPU seconds of this process and its finished worker processes."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def participant_figure(root: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    import numpy as np
    from nilearn import datasets

    tpl = datasets.load_mni152_template(resolution=1)
    t1 = nib.load(root / "sub-01/anat/sub-01_T1w.nii.gz")
    bold = nib.load(root / "sub-01/func/sub-01_task-rest_bold.nii.gz")
    gm = nib.load(root / "sourcedata/brainage-truth/sub-01/anat/"
                  "sub-01_space-MNI152NLin2009aSym_res-2_label-GM_probseg.nii.gz")
    panels = [
        ("MNI152 2009a template (brain-extracted)", np.asarray(tpl.dataobj)),
        ("sub-01 T1w, native pose", np.asarray(t1.dataobj)),
        ("sub-01 BOLD mean, native pose", np.asarray(bold.dataobj).mean(axis=3)),
        ("sub-01 true GM probability (MNI, res-2)", np.asarray(gm.dataobj)),
    ]
    fig, axes = plt.subplots(3, 4, figsize=(14, 10))
    for col, (title, data) in enumerate(panels):
        cx, cy, cz = (s // 2 for s in data.shape[:3])
        views = (data[cx, :, :].T, data[:, cy, :].T, data[:, :, cz].T)
        for row, view in enumerate(views):
            ax = axes[row, col]
            ax.imshow(view, origin="lower", cmap="gray")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def trends_figure(root: Path, out: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    truth = pd.read_csv(root / "sourcedata/brainage-truth/participants_truth.tsv", sep="\t")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    slopes = {}
    for ax, column, label in ((axes[0], "gm_ml", "total GM (ml)"),
                              (axes[1], "ventricles_ml", "lateral ventricles (ml)")):
        for group, marker in (("control", "o"), ("patient", "^")):
            part = truth[truth["group"] == group]
            ax.scatter(part["age"], part[column], marker=marker, label=group, alpha=0.8)
        controls = truth[truth["group"] == "control"]
        slope, intercept = np.polyfit(controls["age"], controls[column], 1)
        grid = np.linspace(truth["age"].min(), truth["age"].max(), 10)
        ax.plot(grid, slope * grid + intercept, "k--", lw=1)
        slopes[column] = {"per_year_controls": float(slope),
                          "r_age_controls": float(np.corrcoef(controls["age"],
                                                              controls[column])[0, 1])}
        ax.set_xlabel("chronological age (years)")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle("Simulated cohort: true volumes in each participant's own head")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return slopes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-subjects", type=int, default=40)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--skip-default", action="store_true")
    args = parser.parse_args()

    import nibabel
    import nilearn
    import numpy
    import scipy

    from brainage import __version__
    from brainage.simulate import simulate_cohort

    work = Path(tempfile.mkdtemp(prefix="bench-simulate-"))
    result = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "processor": platform.processor()},
        "versions": {"brainage": __version__, "numpy": numpy.__version__,
                     "scipy": scipy.__version__, "nibabel": nibabel.__version__,
                     "nilearn": nilearn.__version__},
        "note": "wall-clock seconds on a machine shared with other jobs (see load_average: "
                "other processes competed for the same cores, so the figures are upper "
                "bounds); cpu_seconds is CPU time of this process and its workers; each "
                "run includes building the model grids once",
        "load_average_start": list(os.getloadavg()),
    }

    def timed(func):
        cpu0 = _cpu()
        t0 = time.perf_counter()
        value = func()
        return value, round(time.perf_counter() - t0, 1), round(_cpu() - cpu0, 1)

    _test, wall, cpu = timed(lambda: simulate_cohort(work / "test", preset="test", seed=0))
    result["test"] = {"n_subjects": 4, "nprocs": 1, "seconds": wall, "cpu_seconds": cpu}
    demo, wall, cpu = timed(lambda: simulate_cohort(
        work / "demo", n_subjects=args.n_subjects, preset="demo", seed=0, n_jobs=args.nprocs))
    result["demo"] = {"n_subjects": args.n_subjects, "nprocs": args.nprocs, "seconds": wall,
                      "cpu_seconds": cpu,
                      "cpu_seconds_per_participant": round(cpu / args.n_subjects, 2)}
    truth = json.loads((demo / "sourcedata/brainage-truth/truth.json").read_text())
    result["demo"]["pid_bits"] = truth["pid_bits"]
    result["demo"]["oracle_mae_years"] = truth["oracle_mae_years"]
    result["demo"]["oracle_mae_sample_controls_years"] = truth["oracle_mae_sample_controls_years"]
    (ROOT / "docs/img").mkdir(parents=True, exist_ok=True)
    result["demo"]["age_trends"] = trends_figure(demo, ROOT / "docs/img/simulate_age_trends.png")
    participant_figure(demo, ROOT / "docs/img/simulate_participant_demo.png")
    if not args.skip_default:
        full, wall, cpu = timed(lambda: simulate_cohort(work / "default", n_subjects=1,
                                                        preset="default", seed=0))
        result["default_one_participant"] = {"seconds": wall, "cpu_seconds": cpu}
        participant_figure(full, ROOT / "docs/img/simulate_participant.png")
    result["load_average_end"] = list(os.getloadavg())
    out = ROOT / "bench/results/simulate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
