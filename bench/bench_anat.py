"""Benchmark of the structural pipeline: time, peak memory, agreement and accuracy.

Three parts, each a fresh subprocess per run (``os.wait4`` gives its ``ru_maxrss``, the
peak resident memory including ANTs' native allocations, which tracemalloc cannot see):

1. **default**: one participant of the realistic simulator preset (``--preset default``,
   1 mm full head) with the default configuration (``pipelines/default.yaml``).
2. **reference**: the same participant with an fMRIPrep-like configuration (N4 at full
   resolution, SyN of the full-resolution T1w to the 1 mm template with iterations at the
   finest level, Atropos at full resolution); the time
   ratio and the Pearson r of our MNI GM map with the reference's (inside the template
   brain mask, both on the 2 mm output grid).
3. **accuracy**: a few participants of the demo preset with the demo configuration
   against the simulator's truth (``sourcedata/brainage-truth``): GM map r, Dice of
   GM > 0.5, regional Harvard-Oxford GM r; medians across participants.

4. **age trend** (``--n-age N``): N simulated controls of the demo preset across the age
   range (seed 2, no patients) with the demo configuration; least-squares slopes of total
   GM and lateral-ventricle volume against age, ours and the simulator's truth for the same
   participants (``participants_truth.tsv``), raw and adjusted for TIV (ours with our TIV,
   the truth with the true TIV); sign agreement and the ratio ours / truth.

Writes ``bench/results/anat.json``, merged with the sections already there (a run that
skips a part keeps that part's previous figures). Timings taken on a shared machine are
inflated; each section records the load average.

Usage: ``python bench/bench_anat.py [--n-demo 3] [--n-age 10] [--skip-reference] [--skip-default]``
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REFERENCE = {
    "n4_shrink_factor": 1, "segmentation_resolution": None,
    "registration": {"template_resolution": 1.0, "syn_iterations": [100, 70, 20],
                     "linear_iterations": 500, "linear_shrink_factors": [8, 4, 2, 1],
                     "moving_resolution": None},
}


def _child(args) -> None:
    """Run process_t1w on one T1w in this process and save the MNI GM map and timings."""
    import contextlib

    import nibabel as nib

    from brainage.anat.pipeline import process_t1w
    from brainage.anat.stage import regional_gm_volumes, tissue_volumes
    from brainage.config import load_config
    from brainage.imageio import load_checked

    cfg = load_config(args.config).anat
    override = json.loads(args.override)
    reg = override.pop("registration", {})
    cfg = cfg.model_copy(update=override)
    cfg = cfg.model_copy(update={"registration": cfg.registration.model_copy(update=reg)})
    times = {}

    @contextlib.contextmanager
    def step(name):
        t0 = time.perf_counter()
        yield
        times[name] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    img = load_checked(args.t1w, ndim=3, role="T1w")
    with tempfile.TemporaryDirectory() as work:
        res = process_t1w(img, cfg, work, step=step)
    times["total_s"] = round(time.perf_counter() - t0, 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    nib.save(res.gm_mni, out / "gm_mni.nii.gz")
    regional_gm_volumes(res.gm_modulated_mni, "HarvardOxford").to_csv(
        out / "ho.tsv", sep="\t", index=False)
    (out / "run.json").write_text(json.dumps({"times": times, "tissue": tissue_volumes(res),
                                              "segmentation": res.metrics.get("segmentation", {})},
                                             default=float))


def _run(t1w: Path, config: str, override: dict, out: Path) -> dict:
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1", OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", "--t1w", str(t1w), "--config", config,
         "--override", json.dumps(override), "--out", str(out)], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"structural run on {t1w} failed (status {status})")
    info = json.loads((out / "run.json").read_text())
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), **info}


def _gm_r(a: Path, b: Path, mask) -> float:
    import nibabel as nib
    import numpy as np

    x = nib.load(a).get_fdata()[mask]
    y = nib.load(b).get_fdata()[mask]
    return float(np.corrcoef(x, y)[0, 1])


def slope_table(age, ours: dict, truth: dict, tiv_ours, tiv_truth, *, n_boot: int = 2000,
                seed: int = 0) -> dict:
    """Slopes (mL/year) of each measure against age: ours vs truth, raw and TIV-adjusted.

    Parameters
    ----------
    age : array-like
        Ages (years).
    ours, truth : dict
        Measure name → values per participant (same order as ``age``).
    tiv_ours, tiv_truth : array-like
        TIV per participant, the covariate of the adjusted slopes.
    n_boot : int
        Bootstrap resamples of participants for the interval of the ratio.
    seed : int
        Bootstrap seed.

    Returns
    -------
    dict
        Per measure: ``slope_ours``, ``slope_truth`` with their OLS standard errors
        (``se_*``), ``ratio``, ``same_sign``, the 95 % bootstrap interval of the ratio
        (``ratio_ci95``; participants resampled with replacement) and the same for the
        TIV-adjusted fit (``adjusted_*``).
    """
    import numpy as np

    age = np.asarray(age, float)
    tiv_o, tiv_t = np.asarray(tiv_ours, float), np.asarray(tiv_truth, float)

    def fit(y, tiv=None, idx=None):
        idx = np.arange(age.size) if idx is None else idx
        cols = [np.ones(idx.size), age[idx]] + ([tiv[idx]] if tiv is not None else [])
        x = np.column_stack(cols)
        y = np.asarray(y, float)[idx]
        beta = np.linalg.lstsq(x, y, rcond=None)[0]
        dof = max(idx.size - x.shape[1], 1)
        resid = y - x @ beta
        cov = (resid @ resid / dof) * np.linalg.pinv(x.T @ x)
        return float(beta[1]), float(np.sqrt(cov[1, 1]))

    rng = np.random.default_rng(seed)
    boots = [rng.integers(0, age.size, age.size) for _ in range(n_boot)]
    boots = [b for b in boots if np.ptp(age[b]) > 1.0 and np.unique(b).size > 3]

    def ci(y_o, y_t, adjust):
        ratios = []
        for b in boots:
            o = fit(y_o, tiv_o if adjust else None, b)[0]
            t = fit(y_t, tiv_t if adjust else None, b)[0]
            if t != 0:
                ratios.append(o / t)
        return [round(float(v), 3) for v in np.percentile(ratios, [2.5, 97.5])]

    out = {}
    for name in ours:
        (raw_o, se_o), (raw_t, se_t) = fit(ours[name]), fit(truth[name])
        (adj_o, ase_o), (adj_t, ase_t) = fit(ours[name], tiv_o), fit(truth[name], tiv_t)
        out[name] = {
            "slope_ours": round(raw_o, 4), "se_ours": round(se_o, 4),
            "slope_truth": round(raw_t, 4), "se_truth": round(se_t, 4),
            "ratio": round(raw_o / raw_t, 3), "ratio_ci95": ci(ours[name], truth[name], False),
            "same_sign": bool(np.sign(raw_o) == np.sign(raw_t)),
            "adjusted_slope_ours": round(adj_o, 4), "adjusted_se_ours": round(ase_o, 4),
            "adjusted_slope_truth": round(adj_t, 4), "adjusted_se_truth": round(ase_t, 4),
            "adjusted_ratio": round(adj_o / adj_t, 3),
            "adjusted_ratio_ci95": ci(ours[name], truth[name], True),
            "adjusted_same_sign": bool(np.sign(adj_o) == np.sign(adj_t)),
        }
    return out


def _age_trend(work: Path, n: int) -> dict:
    import numpy as np
    import pandas as pd

    from brainage.simulate import simulate_cohort

    root = work / "age"
    if not (root / f"sub-{n:02d}").is_dir():
        simulate_cohort(root, n_subjects=n, preset="demo", seed=2, patient_fraction=0.0)
    truth = pd.read_csv(root / "sourcedata" / "brainage-truth" / "participants_truth.tsv",
                        sep="\t").set_index("participant_id")
    rows = []
    for i in range(1, n + 1):
        sub = f"{i:02d}"
        run = _run(root / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz", "demo", {}, work / f"run_age_{sub}")
        t = truth.loc[f"sub-{sub}"]
        rows.append({"subject": sub, "age": float(t["age"]), "wall_s": run["wall_s"],
                     "tissue": run["tissue"],
                     "tissue_truth": {k: round(float(t[k]), 3) for k in
                                      ("gm_ml", "wm_ml", "csf_ml", "tiv_ml", "ventricles_ml")},
                     "segmentation": run.get("segmentation", {})})
    measures = ("gm_ml", "ventricles_ml", "csf_ml", "tiv_ml")
    ours = {m: [r["tissue"][m] for r in rows] for m in measures}
    true = {m: [r["tissue_truth"][m] for r in rows] for m in measures}
    ages = [r["age"] for r in rows]
    slopes = slope_table(ages, {m: ours[m] for m in measures[:3]},
                         {m: true[m] for m in measures[:3]}, ours["tiv_ml"], true["tiv_ml"])
    tiv = slope_table(ages, {"tiv_ml": ours["tiv_ml"]}, {"tiv_ml": true["tiv_ml"]},
                      ours["tiv_ml"], true["tiv_ml"])["tiv_ml"]
    return {
        "config": "demo", "preset": "demo", "seed": 2, "n_controls": n,
        "participants": rows,
        "slopes_ml_per_year": slopes,
        "tiv_slope_ml_per_year": {k: v for k, v in tiv.items() if not k.startswith("adjusted")},
        "tiv_r_ours_truth": round(float(np.corrcoef(ours["tiv_ml"], true["tiv_ml"])[0, 1]), 4),
        "csf_r_ours_truth": round(float(np.corrcoef(ours["csf_ml"], true["csf_ml"])[0, 1]), 4),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "note": "slopes by least squares against chronological age; 'adjusted' adds TIV as a "
                "covariate (ours: our TIV, truth: the true TIV); se_*: OLS standard errors; "
                "ratio_ci95: bootstrap over participants (2000 resamples)",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--t1w")
    p.add_argument("--config", default="default")
    p.add_argument("--override", default="{}")
    p.add_argument("--out")
    p.add_argument("--n-demo", type=int, default=3)
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--skip-default", action="store_true")
    p.add_argument("--reference-gm", default=None,
                   help="With --skip-reference: MNI GM map of an earlier reference run to compare "
                        "the default run with (the reference takes ~35 min).")
    p.add_argument("--n-age", type=int, default=0,
                   help="Simulated controls of the age-trend check (0 skips it).")
    p.add_argument("--workdir", default=None, help="Keep simulated data here (default: temp).")
    args = p.parse_args()
    if args.child:
        _child(args)
        return

    import nibabel as nib
    import numpy as np
    import pandas as pd

    from bench._common import write_result
    from brainage.simulate import simulate_cohort
    from brainage.templates import template

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_anat_"))
    figures: dict = {"note": "wall times on a 2-core machine shared with other work: inflated",
                     "reference_config": REFERENCE}
    mask = template(2.0)["mask"].get_fdata() > 0.5

    if not args.skip_default:
        root = work / "default"
        if not (root / "sub-01").is_dir():
            simulate_cohort(root, n_subjects=1, preset="default", seed=3)
        t1w = root / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
        figures["default"] = _run(t1w, "default", {}, work / "run_default")
        figures["default"]["loadavg"] = [round(x, 2) for x in os.getloadavg()]
        if args.skip_reference and args.reference_gm:
            figures["gm_r_default_vs_kept_reference"] = {
                "r": round(_gm_r(work / "run_default/gm_mni.nii.gz", Path(args.reference_gm), mask), 4),
                "reference_gm": str(args.reference_gm),
                "note": "reference map from the earlier reference run (section 'reference'), "
                        "not rerun with this version",
            }
            from bench._common import RESULTS

            kept = RESULTS / "anat.json"
            if kept.is_file() and "reference" in json.loads(kept.read_text()):
                ref_wall = json.loads(kept.read_text())["reference"]["wall_s"]
                figures["time_ratio_reference_over_default"] = round(
                    ref_wall / figures["default"]["wall_s"], 2)
                figures["gm_r_default_vs_reference"] = figures["gm_r_default_vs_kept_reference"]["r"]
        if not args.skip_reference:
            ref = _run(t1w, "default", json.loads(json.dumps(REFERENCE)), work / "run_reference")
            figures["reference"] = ref
            figures["time_ratio_reference_over_default"] = round(
                ref["wall_s"] / figures["default"]["wall_s"], 2)
            figures["gm_r_default_vs_reference"] = round(
                _gm_r(work / "run_default/gm_mni.nii.gz", work / "run_reference/gm_mni.nii.gz",
                      mask), 4)

    if args.n_demo > 0:
        root = work / "demo"
        if not (root / f"sub-{args.n_demo:02d}").is_dir():
            simulate_cohort(root, n_subjects=args.n_demo, preset="demo", seed=1)
        rows = []
        for i in range(1, args.n_demo + 1):
            sub = f"{i:02d}"
            out = work / f"run_demo_{sub}"
            run = _run(root / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz", "demo", {}, out)
            truth = root / "sourcedata" / "brainage-truth" / f"sub-{sub}" / "anat"
            tgm = nib.load(truth / f"sub-{sub}_space-MNI152NLin2009aSym_res-2_label-GM_probseg"
                                   ".nii.gz").get_fdata()
            tmask = nib.load(truth / f"sub-{sub}_space-MNI152NLin2009aSym_res-2_desc-brain_mask"
                                     ".nii.gz").get_fdata() > 0
            gm = nib.load(out / "gm_mni.nii.gz").get_fdata()
            dice = 2 * ((gm > 0.5) & (tgm > 0.5)).sum() / ((gm > 0.5).sum() + (tgm > 0.5).sum())
            ours = pd.read_csv(out / "ho.tsv", sep="\t")
            true_regions = pd.read_csv(truth / f"sub-{sub}_atlas-HarvardOxford_desc-gm_morph.tsv",
                                       sep="\t")
            merged = true_regions.merge(ours, on="index")
            true_tissue = pd.read_csv(truth / f"sub-{sub}_desc-tissue_morph.tsv", sep="\t").iloc[0]
            rows.append({
                "subject": sub, "wall_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"],
                "steps_s": run["times"],
                "gm_r": round(float(np.corrcoef(gm[tmask], tgm[tmask])[0, 1]), 4),
                "gm_dice": round(float(dice), 4),
                "regional_r_within": round(float(np.corrcoef(merged["gm_volume_ml_x"],
                                                             merged["gm_volume_ml_y"])[0, 1]), 4),
                "tissue": run["tissue"], "tissue_truth": {k: float(v) for k, v in
                                                          true_tissue.items()},
                "_regions": merged.set_index("index")[["gm_volume_ml_x", "gm_volume_ml_y"]],
            })
        # across-participant regional r: for each region, ours vs truth across participants
        across = []
        if len(rows) >= 3:
            idx = rows[0]["_regions"].index
            for region in idx:
                x = [r["_regions"].loc[region, "gm_volume_ml_x"] for r in rows]
                y = [r["_regions"].loc[region, "gm_volume_ml_y"] for r in rows]
                if np.std(x) > 0 and np.std(y) > 0:
                    across.append(np.corrcoef(x, y)[0, 1])
        for r in rows:
            r.pop("_regions")
        figures["demo_accuracy"] = {
            "config": "demo",
            "participants": rows,
            "median_wall_s": float(np.median([r["wall_s"] for r in rows])),
            "median_gm_r": float(np.median([r["gm_r"] for r in rows])),
            "median_gm_dice": float(np.median([r["gm_dice"] for r in rows])),
            "median_regional_r_within": float(np.median([r["regional_r_within"] for r in rows])),
            "median_regional_r_across_participants": (
                round(float(np.median(across)), 4) if across else None),
            "note": "across-participant regional r needs >= 3 participants and is noisy with few",
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        }
    if args.n_age > 0:
        figures["age_trend"] = _age_trend(work, args.n_age)

    from bench._common import RESULTS

    previous = RESULTS / "anat.json"
    if previous.is_file():
        old = json.loads(previous.read_text())
        for key in ("benchmark", "machine"):
            old.pop(key, None)
        figures = {**old, **figures}
    path = write_result("anat", figures)
    print(path)


if __name__ == "__main__":
    main()
