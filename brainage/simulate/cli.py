"""Command-line options of ``brainage simulate`` (parsing only; the work is in :mod:`.cohort`)."""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "next_command", "run"]

_PRESETS = ("default", "demo", "test")
#: The shipped pipeline (``pipelines/<name>.yaml``) whose settings fit each preset's data.
PIPELINE_OF_PRESET = {"default": "default", "demo": "demo", "test": "test"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options to the ``simulate`` sub-command parser.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The parser that already has the positional ``out_dir``.
    """
    parser.add_argument("--preset", choices=_PRESETS, default="default",
                        help="resolution and run length: default (1 mm T1, 3 mm BOLD, 120 "
                             "volumes), demo (2.5 mm, 4 mm, 100 volumes) or test (tiny)")
    parser.add_argument("--n-subjects", type=int, default=None, metavar="N",
                        help="number of participants (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="random seed; the same seed gives byte-identical files (default 0)")
    parser.add_argument("--t1-voxel-size", type=float, default=None, metavar="MM",
                        help="T1w voxel size in mm")
    parser.add_argument("--bold-voxel-size", type=float, default=None, metavar="MM",
                        help="BOLD voxel size in mm")
    parser.add_argument("--n-volumes", type=int, default=None, metavar="T",
                        help="number of BOLD volumes")
    parser.add_argument("--n-sites", type=int, default=None, help="number of sites")
    parser.add_argument("--patient-fraction", type=float, default=None,
                        help="fraction of patients (0-1)")
    parser.add_argument("--patient-gap", type=float, default=None, metavar="YEARS",
                        help="true brain-age gap of patients in years")
    parser.add_argument("--patient-gap-struct", type=float, default=None, metavar="YEARS",
                        help="excess of patients' structural latent age in years (default: "
                             "--patient-gap)")
    parser.add_argument("--patient-gap-func", type=float, default=None, metavar="YEARS",
                        help="excess of patients' functional latent age in years (default: "
                             "--patient-gap)")
    parser.add_argument("--patient-subtypes", default=None, metavar="MIX",
                        help="fractions of patients whose excess is in both latent ages, only "
                             "the structural or only the functional one, e.g. "
                             "shared=0.4,structural=0.3,functional=0.3 (default: all shared)")
    parser.add_argument("--struct-loading", type=float, default=None,
                        help="loading of Gaussianized age on the structural latent")
    parser.add_argument("--func-loading", type=float, default=None,
                        help="loading of Gaussianized age on the functional latent")
    parser.add_argument("--noise-correlation", type=float, default=None,
                        help="correlation of the modality-specific noises (sets the synergy)")
    parser.add_argument("--atlas", default=None,
                        help="atlas id for regional effects and parcel truth (default HarvardOxford)")
    parser.add_argument("--nprocs", type=int, default=1,
                        help="participants simulated in parallel (default 1)")


def next_command(root, preset: str) -> str:
    """Return the ``brainage`` command that processes a simulated dataset, with its matching pipeline.

    Parameters
    ----------
    root : path-like
        The simulated dataset.
    preset : str
        The simulator preset it was written with.

    Returns
    -------
    str

    Examples
    --------
    >>> next_command("/data/sim", "test")
    'brainage /data/sim /data/sim/derivatives/brainage participant --config-file test'
    """
    import shlex
    from pathlib import Path

    root = Path(root)
    out = root / "derivatives" / "brainage"
    return (f"brainage {shlex.quote(str(root))} {shlex.quote(str(out))} participant "
            f"--config-file {PIPELINE_OF_PRESET[preset]}")


def run(args: argparse.Namespace) -> int:
    """Run ``brainage simulate`` with parsed arguments; return the exit code."""
    import json
    import logging

    from .cohort import TRUTH_DIR, simulate_cohort

    overrides = {
        key: getattr(args, key, None)
        for key in ("t1_voxel_size", "bold_voxel_size", "n_volumes", "n_sites",
                    "patient_fraction", "patient_gap", "patient_gap_struct", "patient_gap_func",
                    "patient_subtypes", "struct_loading", "func_loading", "noise_correlation",
                    "atlas")
    }
    root = simulate_cohort(args.out_dir, n_subjects=args.n_subjects, seed=args.seed,
                           preset=args.preset, n_jobs=max(1, args.nprocs), **overrides)
    truth = json.loads((root / TRUTH_DIR / "truth.json").read_text())
    pid = ", ".join(f"{k}={truth['pid_bits'][k]:.3f}" for k in ("U1", "U2", "R", "S"))
    logging.getLogger(__name__).info("PID atoms (bits): %s", pid)
    print(f"simulated dataset: {root}")
    print(f"ground truth: {root / TRUTH_DIR}")
    print(f"true PID atoms (bits, structural=1, functional=2): {pid}")
    print(f"oracle MAE: {truth['oracle_mae_years']:.2f} years")
    print(f"next: {next_command(root, args.preset)}")
    return 0
