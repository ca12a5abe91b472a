"""The group level end to end, called by both the command line and the demo.

``group --train``: :func:`brainage.group.train.train_group`;
``group --model BUNDLE``: :func:`brainage.group.apply.apply_bundle`. Both
write ``OUTPUT_DIR/group/`` and return what they wrote; :func:`group_summary`
turns that into the lines printed on the console.
"""

from __future__ import annotations

from pathlib import Path

from .exceptions import ModelBundleError, UsageError

__all__ = ["group_summary", "run_group"]


def run_group(bids_dir, output_dir, config, *, train: bool = True, model=None, device: str = "auto"):
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

    Returns
    -------
    brainage.group.train.GroupOutputs

    Raises
    ------
    UsageError
        Unusable cohort, mismatched or corrupt bundle (exit code 2).
    """
    if not Path(output_dir).is_dir():
        raise UsageError(f"OUTPUT_DIR {output_dir} does not exist; run the participant level first")
    if model is not None:
        from .group.apply import apply_bundle

        try:
            return apply_bundle(bids_dir, output_dir, model, device=device)
        except ModelBundleError as exc:
            raise UsageError(str(exc)) from None
    from .group.train import train_group

    return train_group(bids_dir, output_dir, config, device=device)


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
    for name, path in outputs.files.items():
        lines.append(f"  {name}: {path}")
    return lines
