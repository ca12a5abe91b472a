"""Benchmark: the seed-to-seed spread of a group-level model's out-of-fold accuracy.

One cross-validation is one draw: with 84 controls the folds and the network's
initialisation move PIDReg's MAE by about half a year. This benchmark repeats the outer
cross-validation of one model (``brainage.group.cv.cross_validate``, outer folds only: no
bias correction, so no inner folds; no attributions) with ``group.cv.seed`` = 0 … N − 1
(each seed draws other folds and other initialisations) for one or more variants of the
model's settings, and records per variant

* the uncorrected MAE of the controls per seed, its mean, sd and range, and over the oracle
  MAE of the same controls (``participants_truth.tsv``);
* the MAE of the mean prediction over the seeds (an ensemble of N cross-validations: each
  control is still predicted only by models that did not train on them);
* the gap–age slope per seed;
* for PIDReg, the held-out PID atoms per seed (``brainage.group.summary.held_out_pid``)
  against the true atoms, and the Gaussianity of the fold models' training latents.

Run from the repository root::

    .venv/bin/python bench/bench_group_seeds.py --bids /work/cohorts/main/bids \\
        --config bench/configs/group_compact.yaml --model pidreg --seeds 8 \\
        --variant 'shipped={}' --variant 'no_cmi={"settings": {"lambda_cmi": 0.0}}'

A variant is ``NAME=JSON``: model parameters merged into the config's ``model_params`` of the
model (a ``settings`` mapping is merged key by key). Writes ``bench/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench._common import add_cohort_arguments, cohort_paths, oracle_mae, write_result

ATOMS = ("U1", "U2", "R", "S")


def parse_variant(text: str) -> tuple[str, dict]:
    """Split ``NAME=JSON`` into its name and parameters."""
    name, sep, spec = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--variant {text!r}: expected NAME=JSON, e.g. 'no_cmi={{\"settings\": "
                         f"{{\"lambda_cmi\": 0.0}}}}'")
    return name, json.loads(spec or "{}")


def merged_params(base: dict, extra: dict) -> dict:
    """Return the model parameters ``base`` with ``extra`` merged in (``settings`` key by key)."""
    out = {**base, **{k: v for k, v in extra.items() if k != "settings"}}
    if "settings" in extra:
        out["settings"] = {**(base.get("settings") or {}), **extra["settings"]}
    return out


def _gaussianity(folds: list) -> dict:
    """Mean over folds of each modality's latent Gaussianity figures."""
    acc: dict = {}
    for info in folds:
        for modality, figures in (info.get("gaussianity") or {}).items():
            for key in ("shapiro_w_mean", "shapiro_w_min", "mardia_kurtosis_ratio"):
                acc.setdefault(modality, {}).setdefault(key, []).append(figures[key])
    return {m: {k: float(np.mean(v)) for k, v in d.items()} for m, d in acc.items()}


def run_variant(cohort, group: dict, model: str, params: dict, seeds: int, oracle, truth) -> dict:
    """Cross-validate one variant once per seed; return its per-seed and summary figures."""
    from brainage.config import GroupConfig
    from brainage.group.cv import cross_validate
    from brainage.group.summary import held_out_pid

    parts = cohort.participants
    controls = parts.index[parts["is_control"].to_numpy(bool)]
    age = parts.loc[controls, "age"].to_numpy(float)
    per_seed, predictions = [], []
    for seed in range(seeds):
        cfg = GroupConfig(**{**group, "models": [model], "primary_model": model,
                             "model_params": {model: params}, "attributions": False,
                             "bias_correction": {"method": "none"},
                             "cv": {**group["cv"], "seed": seed}})
        start = time.perf_counter()
        run = cross_validate(cohort, cfg, device="cpu").runs[model]
        pred = run.predictions.loc[controls, "predicted_age"].to_numpy(float)
        predictions.append(pred)
        row = {"seed": seed, "mae": float(np.abs(pred - age).mean()),
               "gap_age_slope": float(np.polyfit(age, pred - age, 1)[0]),
               "seconds": round(time.perf_counter() - start, 1)}
        held = held_out_pid(run, parts, n_boot=0)
        if held:
            row["pid_held_out"] = {a: held[a] for a in ATOMS}
        gauss = _gaussianity(run.folds)
        if gauss:
            row["latent_gaussianity"] = gauss
        per_seed.append(row)
        print(f"  seed {seed}: MAE {row['mae']:.3f}, slope {row['gap_age_slope']:.3f}"
              + ("".join(f", {a} {held[a]:.2f}" for a in ATOMS) if held else "")
              + f" ({row['seconds']} s)", flush=True)
    maes = np.array([r["mae"] for r in per_seed])
    ensemble = float(np.abs(np.mean(predictions, axis=0) - age).mean())
    out = {
        "params": params,
        "per_seed": per_seed,
        "mae_mean": float(maes.mean()), "mae_sd": float(maes.std(ddof=1)) if seeds > 1 else 0.0,
        "mae_min": float(maes.min()), "mae_max": float(maes.max()),
        "mae_mean_over_oracle": float(maes.mean() / oracle),
        "seeds_within_15_percent_of_oracle": int((maes <= 1.15 * oracle).sum()),
        "ensemble_mae": ensemble, "ensemble_mae_over_oracle": ensemble / oracle,
        "gap_age_slope_mean": float(np.mean([r["gap_age_slope"] for r in per_seed])),
    }
    if all("pid_held_out" in r for r in per_seed):
        out["pid_held_out_mean"] = {a: float(np.mean([r["pid_held_out"][a] for r in per_seed]))
                                    for a in ATOMS}
        out["pid_true"] = {a: truth["pid_bits"][a] for a in ATOMS}
    if all("latent_gaussianity" in r for r in per_seed):
        mods = per_seed[0]["latent_gaussianity"]
        out["latent_gaussianity_mean"] = {
            m: {k: float(np.mean([r["latent_gaussianity"][m][k] for r in per_seed])) for k in mods[m]}
            for m in mods}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cohort_arguments(parser)
    parser.add_argument("--model", default="pidreg", help="the model of the comparison to repeat")
    parser.add_argument("--seeds", type=int, default=8, help="cross-validations (group.cv.seed 0 … N-1)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                        help="settings to compare (repeatable); default: the config's as 'config'")
    parser.add_argument("--name", default="group_seed_spread", help="results file bench/results/<name>.json")
    args = parser.parse_args()
    import torch

    from brainage.cohort.data import load_cohort
    from brainage.config import GroupConfig, load_config

    torch.set_num_threads(2)
    bids, deriv = cohort_paths(args)
    truth_dir = bids / "sourcedata" / "brainage-truth"
    truth = json.loads((truth_dir / "truth.json").read_text())
    group = load_config(args.config).group.model_dump(mode="json")
    base = dict(group["model_params"].get(args.model, {}))
    only = {"models": [args.model], "primary_model": args.model, "model_params": {args.model: base}}
    cohort = load_cohort(bids, deriv, GroupConfig(**{**group, **only}))
    parts = cohort.participants
    controls = parts.index[parts["is_control"].to_numpy(bool)]
    oracle = oracle_mae(truth_dir, parts.loc[controls, "participant_id"])
    print(f"{len(controls)} controls, oracle MAE {oracle:.3f}")
    variants = dict(parse_variant(v) for v in args.variant) or {"config": {}}
    results = {}
    for name, extra in variants.items():
        print(f"{name}:", flush=True)
        results[name] = run_variant(cohort, group, args.model, merged_params(base, extra), args.seeds,
                                    oracle, truth)
        r = results[name]
        print(f"{name}: MAE {r['mae_mean']:.3f} ± {r['mae_sd']:.3f} ({r['mae_min']:.2f}–{r['mae_max']:.2f}; "
              f"×{r['mae_mean_over_oracle']:.3f} of the oracle), ensemble {r['ensemble_mae']:.3f}",
              flush=True)
    figures = {"bids": str(bids), "config": args.config, "model": args.model, "seeds": args.seeds,
               "n_controls": len(controls), "oracle_mae_controls": oracle,
               "note": "outer cross-validation only (no bias correction, no inner folds): uncorrected "
                       "out-of-fold MAE of the controls; each seed draws other folds and other "
                       "initialisations",
               "variants": results}
    write_result(args.name, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
