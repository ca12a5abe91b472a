"""The ``brainage`` command (BIDS-App shape).

::

    brainage BIDS_DIR OUTPUT_DIR participant [--participant-label 01 02] [--modalities anat func] …
    brainage BIDS_DIR OUTPUT_DIR group [--model BUNDLE | --train] …
    brainage simulate OUT_DIR [--n-subjects N] [--seed S] …
    brainage demo [OUT_DIR]

This module only parses and validates; the work lives in library functions,
imported inside the command that needs them so that ``brainage --help`` is
instant. Every brainage error that reaches :func:`main` ends the command with
one line on stderr and its exit code (:data:`brainage.exceptions.EXIT_CODES`:
0 all done; 1 some participants failed, the rest are complete and listed;
2 usage, configuration or BIDS input error; 3 unusable model bundle; 4 cohort
unusable at the group level; 5 input or processing error outside a participant
task; 70 internal error; 130 interrupted), see docs/cli.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .console import flush_warnings
from .exceptions import EXIT_CODES, EXIT_INTERNAL, EXIT_INTERRUPTED, BrainageError, UsageError, exit_code

PROG = "brainage"
SUBCOMMANDS = ("simulate", "demo")

DESCRIPTION = f"""\
brainage {__version__}: multimodal brain-age prediction from MRI.

  {PROG} BIDS_DIR OUTPUT_DIR participant   preprocess each participant (anat, func)
  {PROG} BIDS_DIR OUTPUT_DIR group         group-level features, training / prediction, report
  {PROG} simulate OUT_DIR                  write a simulated BIDS cohort with ground truth
  {PROG} demo [OUT_DIR]                    simulate → participant → group → report

Run `{PROG} simulate --help` or `{PROG} demo --help` for their options.
"""

EPILOG = "exit codes:\n" + "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES.items())

logger = logging.getLogger("brainage")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _app_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("bids_dir", type=Path, metavar="BIDS_DIR", help="BIDS dataset root")
    parser.add_argument(
        "output_dir",
        type=Path,
        metavar="OUTPUT_DIR",
        help="derivatives folder (e.g. BIDS_DIR/derivatives/brainage)",
    )
    parser.add_argument("analysis_level", choices=["participant", "group"], help="processing level")
    parser.add_argument(
        "--participant-label",
        "--participant_label",
        nargs="+",
        metavar="LABEL",
        help="participants to process, with or without 'sub-' (default: all)",
    )
    parser.add_argument(
        "--modalities",
        nargs="+",
        choices=["anat", "func"],
        default=None,
        help="participant-level stages to run (default: those enabled in the config)",
    )
    parser.add_argument(
        "--config-file",
        metavar="YAML",
        help="pipeline spec: a YAML file or a shipped name (default, demo); "
        "an effective config written by an earlier run reproduces it",
    )
    parser.add_argument(
        "-w", "--work-dir", type=Path, metavar="WORK_DIR",
        help="scratch folder (default: brainage-work-<hash of OUTPUT_DIR> in the temporary folder, "
        "$TMPDIR or /tmp, of the host running each task; outside OUTPUT_DIR so that the "
        "derivatives stay BIDS-clean). Each task's subfolder is removed when it ends",
    )
    parser.add_argument(
        "--keep-work", action="store_true",
        help="keep the scratch folder of a failed task for debugging (its path is logged)",
    )
    parser.add_argument("--nprocs", type=int, help="local worker processes (default from config)")
    parser.add_argument(
        "--scheduler-address", metavar="ADDR", help="run on a Dask cluster (tcp://host:8786)"
    )
    parser.add_argument(
        "--derivatives", type=Path, metavar="FMRIPREP_DIR", help="use fMRIPrep outputs from here"
    )
    parser.add_argument(
        "--skip-bids-validation", action="store_true",
        help="participant: do not run the BIDS validator (bids-validator, when installed) on "
        "BIDS_DIR first, and index files whose names are not valid BIDS",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", type=Path, metavar="BUNDLE", help="group: apply a trained model")
    group.add_argument("--train", action="store_true", help="group: train (and cross-validate) a model")
    group.add_argument("--report-only", action="store_true",
                       help="group: rebuild OUTPUT_DIR/reports from the existing group outputs (no fitting)")
    parser.add_argument("--no-report", action="store_true",
                        help="group: write the group tables and the bundle, not the HTML reports")
    parser.add_argument("--gpus", type=int, default=None, metavar="N",
                        help="group --train: train the neural models data-parallel on N GPUs of this "
                        "machine (N processes launched with torchrun; default: the config's "
                        "group.gpus, 1)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    return parser


def _simulate_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=f"{PROG} simulate", description="Write a simulated BIDS cohort with ground truth.")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="where to write the dataset")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    try:
        from .simulate import cli as simulate_cli
    except ImportError:
        simulate_cli = None
    if simulate_cli is not None:
        simulate_cli.add_arguments(parser)
    return parser


def _demo_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"{PROG} demo",
        description="Simulate a small cohort and run every stage that exists on it.",
    )
    parser.add_argument(
        "out_dir", type=Path, nargs="?", default=Path("brainage-demo"), metavar="OUT_DIR",
        help="where to put the dataset, derivatives and report (default ./brainage-demo)",
    )
    parser.add_argument("--n-subjects", type=int, default=None,
                        help="cohort size (default: the demo preset's, 40)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--nprocs", type=int, default=2, help="local worker processes (default 2)")
    parser.add_argument(
        "--config-file", default="demo", metavar="YAML",
        help="pipeline spec (default: demo, PIDReg with a 3D CNN on the functional maps; "
             "demo-tabular reads tables only)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    return parser


def _setup_logging(verbose: int) -> None:
    from .console import setup_logging

    setup_logging(verbose)


# --------------------------------------------------------------------------- levels
def run_participant_level(args) -> int:
    """Validate the inputs, then run the participant-level stages."""
    import time

    if args.gpus not in (None, 1):
        raise UsageError("--gpus is for group --train; the participant level runs its stages with "
                         "--nprocs local processes or on a Dask cluster (--scheduler-address)")

    from .bids import (
        check_bids_root,
        discover_inputs,
        validate_bids,
        validate_output_dir,
        write_dataset_description,
    )
    from .config import dump_config, load_config
    from .parallel import run_participants
    from .stages import resolve_stages

    bids_dir = args.bids_dir.resolve()
    check_bids_root(bids_dir)
    output_dir = validate_output_dir(bids_dir, args.output_dir)
    config = load_config(args.config_file)
    modalities = args.modalities or [m for m in ("anat", "func") if getattr(config, m).enabled]
    if not modalities:
        raise UsageError("no stage to run: anat and func are both disabled in the config")
    if args.nprocs is not None and args.nprocs < 1:
        raise UsageError(f"--nprocs must be at least 1; got {args.nprocs}")
    if args.derivatives is not None and not args.derivatives.is_dir():
        raise UsageError(f"--derivatives {args.derivatives} is not a folder; pass the fMRIPrep output folder")
    stages = resolve_stages(modalities)
    if not args.skip_bids_validation:
        validate_bids(bids_dir)
    # fMRIPrep's MNI-space BOLD and confounds replace everything the T1w is used for
    # in the functional stage, so a func-only run from derivatives needs no T1w.
    t1w_required = "anat" in modalities or args.derivatives is None
    participants = discover_inputs(
        bids_dir,
        participant_labels=args.participant_label,
        modalities=modalities,
        validate=not args.skip_bids_validation,
        t1w_required=t1w_required,
    )
    if "func" in modalities:
        check_band_pass(participants, config.func.low_pass)
    missing = [p.subject for p in participants if not p.t1w]
    if missing and t1w_required:
        what = "their structural stage" if args.derivatives is not None else "those participants"
        logger.warning("no T1w for sub-%s: %s will fail", ", sub-".join(missing), what)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_dataset_description(output_dir, bids_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    config_out = dump_config(config, output_dir / "logs" / f"{stamp}_participant_config.yaml")
    logger.info("effective configuration: %s", config_out)
    logger.info(
        "running %s for %d participant(s) → %s", "+".join(modalities), len(participants), output_dir
    )
    summary = run_participants(
        participants,
        stages,
        config,
        output_dir,
        work_dir=args.work_dir,
        nprocs=args.nprocs,
        scheduler_address=args.scheduler_address,
        derivatives_dir=args.derivatives,
        keep_work=args.keep_work,
    )
    _report(summary, output_dir)
    return summary.exit_code


def check_band_pass(participants, low_pass: float) -> None:
    """Refuse a ``func.low_pass`` at or above the Nyquist frequency of a BOLD run, before any work.

    Raises
    ------
    UsageError
        Naming the run, its repetition time, the Nyquist frequency and the key.
    """
    from .bids import bold_repetition_time

    for inputs in participants:
        for run in inputs.bold:
            tr, source = bold_repetition_time(run)
            if tr is None:
                continue
            nyquist = 0.5 / tr
            if low_pass >= nyquist:
                raise UsageError(
                    f"func.low_pass: {low_pass:g} Hz is not below the Nyquist frequency {nyquist:.4g} Hz "
                    f"of {run.path} (TR {tr:g} s, from {source}); set func.low_pass below "
                    f"{nyquist:.4g} in the config file (0.08-0.1 Hz is usual)"
                )


def _report(summary, output_dir: Path) -> None:
    flush_warnings()
    done = len(summary.done) + len(summary.excluded)
    lines = [
        f"{done} task(s) completed, {len(summary.skipped)} up to date, "
        f"{len(summary.failed)} failed; outputs in {output_dir}"
    ]
    for result in summary.excluded:
        lines.append(f"  excluded sub-{result.subject} {result.stage}: {result.summary.get('reason')}")
    if summary.failed:
        lines.append("Failed (details in OUTPUT_DIR/sub-<label>/log/):")
        lines.extend(f"  sub-{r.subject} {r.stage}: {r.error}" for r in summary.failed)
    print("\n".join(lines))


def run_group_level(args) -> int:
    """Group level: ``--train`` cross-validates and bundles, ``--model BUNDLE`` applies one."""
    from .bids import check_bids_root, validate_output_dir
    from .config import load_config

    bids_dir = args.bids_dir.resolve()
    check_bids_root(bids_dir)
    output_dir = validate_output_dir(bids_dir, args.output_dir)
    config = load_config(args.config_file)
    from .levels import group_summary, run_group, run_reports

    if args.report_only:
        reports = run_reports(output_dir)
        flush_warnings()
        print("\n".join(reports.summary()))
        return 0
    if not (args.train or args.model):
        raise UsageError(
            "group: say what to do: --train (cross-validate the configured models and bundle the "
            "primary one), --model BUNDLE (apply a trained bundle to this cohort) or --report-only "
            "(rebuild the reports of the last group run)"
        )
    gpus, source = (args.gpus, "--gpus") if args.gpus is not None else (
        config.group.gpus if args.train else 1, "group.gpus")
    if gpus != 1 and "RANK" not in os.environ:
        return launch_data_parallel(args, gpus, source)
    from .training.distributed import rank_and_world

    outputs = run_group(bids_dir, output_dir, config, train=bool(args.train), model=args.model,
                        report=not args.no_report)
    flush_warnings()
    if rank_and_world()[0] == 0:
        print("\n".join(group_summary(outputs)))
    return 0


def torchrun_command(argv: list[str], n_processes: int) -> list[str]:
    """Return the command that runs ``brainage ARGV`` as ``n_processes`` data-parallel ranks (torchrun)."""
    rest, skip = [], False
    for arg in argv:  # the ranks run the same command without --gpus
        if skip:
            skip = False
        elif arg == "--gpus":
            skip = True
        elif not arg.startswith("--gpus="):
            rest.append(arg)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={n_processes}", "-m", "brainage", *rest]


def launch_data_parallel(args, gpus: int, source: str = "--gpus") -> int:
    """Run the group level as ``gpus`` torchrun ranks, one per GPU; ``source`` names who asked."""
    import subprocess

    if gpus < 1:
        raise UsageError(f"{source} {gpus}: give the number of GPUs to train on (1 or more)")
    if not args.train:
        raise UsageError("--gpus is for group --train: applying a bundle or building reports runs "
                         "on one device")
    import torch

    found = torch.cuda.device_count()
    if found < gpus:
        raise UsageError(
            f"{source} {gpus} asks for {gpus} CUDA devices; this machine has {found}. Give "
            f"{source} {max(found, 1)}, or run on a machine with more GPUs"
        )
    command = torchrun_command(list(args.argv), gpus)
    logger.info("data-parallel training on %d GPUs: %s", gpus, " ".join(command))
    return subprocess.run(command, check=False).returncode


def run_simulate(args) -> int:
    """`brainage simulate`: delegate to the simulator."""
    from .exceptions import NotAvailableError

    try:
        from .simulate import cli as simulate_cli
    except ImportError:
        raise NotAvailableError(
            f"`brainage simulate` is not available in brainage {__version__} yet"
        ) from None
    return simulate_cli.run(args)


def run_demo(args) -> int:
    """`brainage demo`: simulate → participant → group → report, with what exists."""
    from .demo import run_demo as _run

    return _run(args.out_dir, n_subjects=args.n_subjects, seed=args.seed, nprocs=args.nprocs,
                config_file=args.config_file)


# --------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``brainage`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        command, rest = argv[0], argv[1:]
        parser = _simulate_parser() if command == "simulate" else _demo_parser()
        args = parser.parse_args(rest)
        handler = run_simulate if command == "simulate" else run_demo
    else:
        parser = _app_parser()
        args = parser.parse_args(argv)
        args.argv = argv
        handler = run_participant_level if args.analysis_level == "participant" else run_group_level
    _setup_logging(args.verbose)
    try:
        return int(handler(args) or 0)
    except BrainageError as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        if args.verbose:
            logger.debug("traceback", exc_info=exc)
        return exit_code(exc)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; completed participants are kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: one line, the traceback with -v
        if args.verbose:
            logger.error("internal error", exc_info=exc)
        what = " ".join(f"{type(exc).__name__}: {exc}".split())
        print(
            f"{parser.prog}: internal error: {what}. "
            + ("The traceback is above; please report it"
               if args.verbose else "Rerun with -v for the traceback, and please report it"),
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
