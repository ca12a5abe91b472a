"""The group level end to end, called by both the command line and the demo.

``group --train``: :func:`brainage.group.train.train_group`;
``group --model BUNDLE``: :func:`brainage.group.apply.apply_bundle`. Both
write ``OUTPUT_DIR/group/``, then :func:`run_reports` writes ``OUTPUT_DIR/reports/``
from those files (``group --report-only`` runs only that); :func:`group_summary`
turns what was written into the lines printed on the console.
"""

from __future__ import annotations

from pathlib import Path

from .exceptions import UsageError

__all__ = ["group_summary", "run_group", "run_reports"]


def run_reports(output_dir):
    """Write the cohort report and the participant pages from the group outputs in ``output_dir``.

    Returns
    -------
    brainage.reporting.assemble.ReportOutputs

    Raises
    ------
    UsageError
        ``OUTPUT_DIR/group`` holds no finished group run.
    """
    from .reporting.assemble import build_reports

    return build_reports(output_dir)


def run_group(bids_dir, output_dir, config, *, train: bool = True, model=None, device: str = "auto",
              report: bool = True):
    """Train (cross-validate and bundle) or apply a bundle, on the cohort's derivatives.

    Parameters
    ----------
    bids_dir, output_dir : path-like
        Raw dataset and derivatives root (the participant level's output).
    config : brainage.config.PipelineConfig
        Pipeline configuration (its ``group`` section; ignored when applying,
        which uses the bundle's own).
    train : bool
        Train; otherwise ``model`` must name a bundle.
    model : path-like, optional
        A bundle written by a training run (``OUT/group/model``).
    device : str
        Device of the neural models.
    report : bool
        Write the HTML reports after the group tables (:func:`run_reports`).

    Returns
    -------
    brainage.group.train.GroupOutputs
        With ``reports`` set to what :func:`run_reports` wrote (None when ``report`` is false).

    Raises
    ------
    UsageError
        No OUTPUT_DIR (exit code 2).
    ModelBundleError
        A corrupt, foreign or incompatible bundle (exit code 3).
    GroupLevelError
        A cohort the group level cannot use, or one that does not match the bundle (exit code 4).
    """
    if not Path(output_dir).is_dir():
        raise UsageError(f"OUTPUT_DIR {output_dir} does not exist; run the participant level first")
    from .training.distributed import init_from_env

    rank, world = init_from_env()  # launched by torchrun (`group --train --gpus N`): join the group
    if world > 1 and model is not None:
        raise UsageError(
            f"group --model runs in one process; this one is rank {rank} of {world} data-parallel "
            "processes. Apply the bundle without --gpus or torchrun"
        )
    if model is not None:
        from .group.apply import apply_bundle

        outputs = apply_bundle(bids_dir, output_dir, model, device=device)
    elif rank > 0:
        return _train_other_rank(bids_dir, output_dir, config, device)
    else:
        from .group.train import train_group

        outputs = train_group(bids_dir, output_dir, config, device=device)
    if report:
        outputs.reports = run_reports(output_dir)
    return outputs


def _train_other_rank(bids_dir, output_dir, config, device):
    """Data-parallel training, rank > 0: the same fits as rank 0, the outputs in a scratch folder.

    Every rank runs the whole group level, so the collectives of the neural fits
    (gradients, PID windows, validation losses) line up; only rank 0 writes
    ``OUTPUT_DIR/group`` and the reports. The other ranks' copies, identical or
    nearly so, are deleted.
    """
    import logging
    import tempfile

    from .group.train import train_group

    logging.getLogger("brainage").setLevel(logging.WARNING)  # rank 0 tells the story
    with tempfile.TemporaryDirectory(prefix="brainage-rank-") as scratch:
        outputs = train_group(bids_dir, output_dir, config, device=device,
                              group_out=Path(scratch) / "group")
    outputs.files = {}
    return outputs


def _gap_lines(outputs) -> list[str]:
    """One line per group compared with the controls (all sites), from ``groups.tsv``."""
    import math

    import pandas as pd

    path = outputs.files.get("groups")
    if path is None or not Path(path).is_file():
        return []
    try:
        groups = pd.read_csv(path, sep="\t")
    except (OSError, ValueError, pd.errors.ParserError):
        return []
    lines = []
    for _, r in groups[groups.get("scope", pd.Series(dtype=str)) == "all"].iterrows():
        gap, lo, hi = (float(r.get(k, "nan")) for k in ("mean_gap", "ci_low", "ci_high"))
        if math.isfinite(gap):
            n = int(r["n"]) if pd.notna(r.get("n")) else "n/a"
            lines.append(f"  {r['group']} vs controls (n = {n}): corrected gap {gap:+.1f} y, "
                         f"95 % CI {lo:+.1f} to {hi:+.1f} (adjusted for the covariates; groups.tsv)")
    return lines


def group_summary(outputs) -> list[str]:
    """Console lines: where each output is, and the primary model's uncorrected accuracy."""
    h = outputs.headline
    state = ", up to date: same inputs, configuration and code" if outputs.up_to_date else ""
    lines = [f"group level ({outputs.seconds:.0f} s{state}): {outputs.directory}"]
    if h:
        lines.append(
            f"  controls out of sample (n = {h['n']}, ages {h['age_min']:.0f}-{h['age_max']:.0f}): "
            f"MAE {h['mae']:.2f} y, r {h['r']:.2f}, gap-age slope {h['gap_age_slope']:.2f} (uncorrected)"
        )
    lines.extend(_gap_lines(outputs))
    files = dict(outputs.files)
    model = files.pop("model", None)
    if files:
        names = ", ".join(Path(p).name for p in files.values())
        lines.append(f"  {len(files)} file(s) in {outputs.directory}: {names}")
    if model is not None:
        lines.append(f"  model bundle: {model}")
    if getattr(outputs, "reports", None) is not None:
        lines.extend(outputs.reports.summary())
    return lines
