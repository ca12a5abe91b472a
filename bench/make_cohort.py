"""Simulate a cohort and run the participant level on it, for the group benchmarks.

The group-level benchmarks (``bench_group.py``, ``bench_apply.py``) need the
derivatives of cohorts larger than the demo's and of a second cohort to apply
a bundle to. This script builds one such cohort at the demo preset: the
simulated BIDS dataset with its truth, then every participant stage with the
demo configuration, and records the time of each step.

Run from the repository root, for example::

    .venv/bin/python bench/make_cohort.py /tmp/cohorts/main --n-subjects 120 --seed 1
    .venv/bin/python bench/make_cohort.py /tmp/cohorts/new --n-subjects 60 --seed 2 --n-sites 3

With three or more sites the extra sites get their own noise level and grey
matter contrast (``--n-sites 3`` adds a site whose scanner differs from the
first two), so a bundle trained on two sites meets a site it has not seen.

``--patient-fraction``, ``--patient-gap``, ``--patient-gap-struct``, ``--patient-gap-func`` and
``--patient-subtypes`` pass through to the simulator (``docs/simulator.md``), e.g. for
``bench/bench_contributions.py``::

    .venv/bin/python bench/make_cohort.py /work/cohorts/subtypes --n-subjects 60 --seed 5 \
        --patient-fraction 0.4 --patient-gap 9 --patient-subtypes structural=0.5,functional=0.5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: Per-site T1 noise and grey-matter contrast of the third and later sites.
_EXTRA_SITES = {"t1_noise": (0.02, 0.035, 0.05, 0.025), "site_gm_contrast": (0.62, 0.68, 0.58, 0.65)}


def main() -> int:
    from brainage.bids import discover_inputs, write_dataset_description
    from brainage.config import load_config
    from brainage.parallel import run_participants
    from brainage.simulate import simulate_cohort
    from brainage.stages import STAGES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory for bids/ (derivatives inside it)")
    parser.add_argument("--n-subjects", type=int, default=120)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n-sites", type=int, default=2)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--patient-fraction", type=float, default=None,
                        help="fraction of patients (simulator default 0.3)")
    parser.add_argument("--patient-gap", type=float, default=None,
                        help="patients' excess in years (simulator default 5)")
    parser.add_argument("--patient-gap-struct", type=float, default=None)
    parser.add_argument("--patient-gap-func", type=float, default=None)
    parser.add_argument("--patient-subtypes", default=None,
                        help="e.g. structural=0.5,functional=0.5 (simulator default: all shared)")
    args = parser.parse_args()
    bids = args.out.resolve() / "bids"
    deriv = bids / "derivatives" / "brainage"
    overrides = {}
    if args.n_sites > 2:
        overrides = {k: v[: args.n_sites] for k, v in _EXTRA_SITES.items()}
    patients = {name: getattr(args, name) for name in
                ("patient_fraction", "patient_gap", "patient_gap_struct", "patient_gap_func")
                if getattr(args, name) is not None}
    if args.patient_subtypes is not None:
        from brainage.simulate.params import parse_patient_subtypes
        patients["patient_subtypes"] = parse_patient_subtypes(args.patient_subtypes)
    overrides.update(patients)
    times = {}
    if not (bids / "participants.tsv").exists():
        start = time.perf_counter()
        simulate_cohort(bids, n_subjects=args.n_subjects, seed=args.seed, preset="demo",
                        n_sites=args.n_sites, n_jobs=args.nprocs, **overrides)
        times["simulate_seconds"] = round(time.perf_counter() - start, 1)
    config = load_config("demo")
    deriv.mkdir(parents=True, exist_ok=True)
    write_dataset_description(deriv, bids)
    names = [n for n, spec in STAGES.items() if spec.available()]
    start = time.perf_counter()
    summary = run_participants(discover_inputs(bids, modalities=names), [STAGES[n] for n in names],
                               config, deriv, nprocs=args.nprocs)
    times["participant_seconds"] = round(time.perf_counter() - start, 1)
    record = {"n_subjects": args.n_subjects, "seed": args.seed, "n_sites": args.n_sites,
              **{k: (dict(v) if k == "patient_subtypes" else v) for k, v in patients.items()},
              "done": len(summary.done), "failed": len(summary.failed),
              "excluded": len(summary.excluded), **times}
    (args.out / "make_cohort.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record))
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
