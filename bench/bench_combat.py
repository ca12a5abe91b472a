"""Benchmark: ComBat harmonization (``brainage.stats.harmonize.ComBat``), accuracy and speed.

1. Accuracy (the simulation of ``tests/test_stats_harmonize.py``): four sites
   with different age ranges (8-35, 20-50, 40-70, 55-90 years), an inverted-U
   age effect, site location and scale effects. ComBat is fitted on 70 % of
   each site and applied to the held-out 30 %; the figure is the held-out RMSE
   to the site-free truth (same noise) for linear ComBat (``nonlinear=()``)
   and spline ComBat (``nonlinear=("age",)``), per seed and on average.
2. Speed: ``fit`` and ``transform`` on 1,000 participants x 1,000 features
   from 5 sites of unequal size (age as a spline, sex), parametric and
   non-parametric empirical Bayes; median of ``--repeats`` runs.

Run from the repository root::

    .venv/bin/python bench/bench_combat.py [--seeds 5] [--repeats 3] [--n 1000] [--features 1000]

Writes ``bench/results/combat.json``. Timings on a shared machine are inflated.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy  # noqa: E402
import sklearn  # noqa: E402
from _common import write_result  # noqa: E402

from brainage.stats.harmonize import ComBat  # noqa: E402
from tests.test_stats_harmonize import heldout_rmse  # noqa: E402


def timing_data(n: int, p: int, sites: int, seed: int = 0):
    """Participants x features with site location/scale effects, age and sex effects."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 1.5, sites)
    site = rng.choice(sites, n, p=weights / weights.sum())
    age = rng.uniform(20, 85, n) + 3 * site
    sex = rng.choice(["F", "M"], n)
    z = (age - 50) / 20
    X = (100 + rng.normal(0, 5, p) + np.outer(z, rng.normal(-2, 1, p)) - np.outer(z**2, rng.uniform(0, 2, p))
         + np.outer(sex == "M", rng.normal(1, 0.5, p)) + rng.normal(0, 2, (sites, p))[site]
         + np.exp(rng.normal(0, 0.3, (sites, p)))[site] * rng.standard_normal((n, p)))
    cov = pd.DataFrame({"site": [f"site{s}" for s in site], "age": age, "sex": sex})
    return X, cov


def time_it(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--features", type=int, default=1000)
    parser.add_argument("--sites", type=int, default=5)
    args = parser.parse_args()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None

    per_seed = []
    for seed in range(args.seeds):
        res = heldout_rmse(seed)
        res["ratio_spline_to_linear"] = res["rmse_spline"] / res["rmse_linear"]
        per_seed.append({"seed": seed, **res})
        print(f"seed {seed}: raw {res['rmse_raw']:.3f}, linear {res['rmse_linear']:.3f}, "
              f"spline {res['rmse_spline']:.3f}")
    accuracy = {
        "setting": "4 sites (n = 90, 110, 100, 120; ages 8-35, 20-50, 40-70, 55-90), 20 features, "
                   "inverted-U age effect, site location + scale, 30 % of each site held out",
        "per_seed": per_seed,
        **{f"mean_{k}": float(np.mean([r[k] for r in per_seed]))
           for k in ("rmse_raw", "rmse_linear", "rmse_spline", "ratio_spline_to_linear")},
    }

    X, cov = timing_data(args.n, args.features, args.sites)
    speed = {"n_participants": args.n, "n_features": args.features, "n_sites": args.sites,
             "participants_per_site": cov["site"].value_counts().sort_index().to_dict(),
             "repeats": args.repeats}
    for name, kw in (("parametric", {}), ("nonparametric", {"parametric": False}),
                     ("parametric_linear", {"nonlinear": ()})):
        model = ComBat(**kw).fit(X, cov)
        speed[f"fit_s_{name}"] = time_it(lambda kw=kw: ComBat(**kw).fit(X, cov), args.repeats)
        speed[f"transform_s_{name}"] = time_it(lambda m=model: m.transform(X, cov), args.repeats)
        speed[f"transform_one_participant_s_{name}"] = time_it(
            lambda m=model: m.transform(X[:1], cov.iloc[:1]), max(args.repeats, 20))
        print(f"{name}: fit {speed[f'fit_s_{name}']:.3f} s, transform {speed[f'transform_s_{name}']:.3f} s")

    out = write_result("combat", {
        "accuracy_heldout_rmse": accuracy,
        "speed": speed,
        "versions": {"numpy": np.__version__, "scipy": scipy.__version__, "pandas": pd.__version__,
                     "scikit-learn": sklearn.__version__},
        "loadavg_at_start": load_start,
        "note": "wall times on a shared machine: inflated when other jobs run",
        "command": "python bench/bench_combat.py " + " ".join(sys.argv[1:]),
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
