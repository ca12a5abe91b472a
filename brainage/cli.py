"""The ``brainage`` command (BIDS-App shape).

::

    brainage BIDS_DIR OUTPUT_DIR participant [--participant-label 01 02] [--modalities anat func] …
    brainage BIDS_DIR OUTPUT_DIR group [--model BUNDLE | --train] …
    brainage simulate OUT_DIR [--n-subjects N] [--seed S] …
    brainage demo [OUT_DIR]

This module only parses and validates; the work lives in library functions,
imported inside the command that needs them so that ``brainage --help`` is
instant. Exit codes: 0 all done; 1 some participants failed (the rest are
complete and listed); 2 usage error (one line on stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .exceptions import UsageError

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

logger = logging.getLogger("brainage")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _app_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=DESCRIPTION,
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
    parser.add_argument("-w", "--work-dir", type=Path, help="scratch folder (default OUTPUT_DIR/.work)")
    parser.add_argument("--nprocs", type=int, help="local worker processes (default from config)")
    parser.add_argument(
        "--scheduler-address", metavar="ADDR", help="run on a Dask cluster (tcp://host:8786)"
    )
    parser.add_argument(
        "--derivatives", type=Path, metavar="FMRIPREP_DIR", help="use fMRIPrep outputs from here"
    )
    parser.add_argument(
        "--skip-bids-validation", action="store_true", help="do not ignore non-BIDS files"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", type=Path, metavar="BUNDLE", help="group: apply a trained model")
    group.add_argument("--train", action="store_true", help="group: train (and cross-validate) a model")
    group.add_argument("--report-only", action="store_true",
                       help="group: rebuild OUTPUT_DIR/reports from the existing group outputs (no fitting)")
    parser.add_argument("--no-report", action="store_true",
                        help="group: write the group tables and the bundle, not the HTML reports")
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
    parser.add_argument("--n-subjects", type=int, default=40, help="cohort size (default 40)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--nprocs", type=int, default=2, help="local worker processes (default 2)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    return parser


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO
    root = logging.getLogger("brainage")
    root.setLevel(level)
    if root.handlers:
        return
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.propagate = False
    if verbose == 0:
        logging.getLogger("brainage.stage").setLevel(logging.WARNING)


# --------------------------------------------------------------------------- levels
def run_participant_level(args) -> int:
    """Validate the inputs, then run the participant-level stages."""
    import time

    from .bids import discover_inputs, validate_output_dir, write_dataset_description
    from .config import dump_config, load_config
    from .parallel import run_participants
    from .stages import resolve_stages

    bids_dir = args.bids_dir.resolve()
    discover_check(bids_dir)
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
    )
    _report(summary, output_dir)
    return summary.exit_code


def discover_check(bids_dir: Path) -> None:
    """Refuse a BIDS_DIR that is missing or has no dataset_description.json (cheap, before pybids)."""
    from .bids import _check_bids_root

    _check_bids_root(bids_dir)


def _report(summary, output_dir: Path) -> None:
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
    from .bids import validate_output_dir
    from .config import load_config

    bids_dir = args.bids_dir.resolve()
    discover_check(bids_dir)
    output_dir = validate_output_dir(bids_dir, args.output_dir)
    config = load_config(args.config_file)
    from .levels import group_summary, run_group, run_reports

    if args.report_only:
        print("\n".join(run_reports(output_dir).summary()))
        return 0
    if not (args.train or args.model):
        raise UsageError(
            "group: say what to do: --train (cross-validate the configured models and bundle the "
            "primary one), --model BUNDLE (apply a trained bundle to this cohort) or --report-only "
            "(rebuild the reports of the last group run)"
        )
    outputs = run_group(bids_dir, output_dir, config, train=bool(args.train), model=args.model,
                        report=not args.no_report)
    print("\n".join(group_summary(outputs)))
    return 0


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

    return _run(args.out_dir, n_subjects=args.n_subjects, seed=args.seed, nprocs=args.nprocs)


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
        handler = run_participant_level if args.analysis_level == "participant" else run_group_level
    _setup_logging(args.verbose)
    try:
        return int(handler(args) or 0)
    except UsageError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; completed participants are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
