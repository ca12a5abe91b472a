"""``group --model BUNDLE``: apply a trained group-level model to a new cohort, without fitting.

The bundle carries everything fitted at training: the estimator, the feature
transforms (one ComBat model per harmonized modality, the principal components
of reduced inputs), the age-bias correction and the exact input
specification (modalities, kinds, atlases, resolutions, feature names). The
new cohort's derivatives must provide exactly those inputs
(:func:`brainage.cohort.data.load_cohort` with ``spec=``), or the run stops
with exit code 4 (:class:`~brainage.exceptions.GroupLevelError`) and says what
differs. Besides the predictions, gaps and group statistics, an application
writes the atlas PID of the new cohort's own controls (``regions_pid.tsv``,
when its inputs pair a regional and a connectivity input on one atlas).

Sites the bundle's ComBat has not seen are refused: harmonizing them would
need ComBat parameters for a site without any of its participants in the
training data. Retrain on a cohort that includes controls of the new site,
or use a bundle trained without ComBat. A site unseen by a per-site bias
correction is corrected with the correction fitted on all training controls
(the predictions table says so).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..exceptions import GroupLevelError, ModelBundleError
from .cv import ModelRun
from .outputs import group_dir, write_json
from .summary import predictions_table
from .train import (
    BUNDLE_KIND,
    GroupOutputs,
    atlas_pid_cohort,
    headline_metrics,
    write_common,
    write_regions_pid,
)
from .transforms import FeatureTransforms

logger = logging.getLogger(__name__)

__all__ = ["apply_bundle", "read_group_bundle"]


def read_group_bundle(path) -> tuple:
    """Load a group-level bundle: (estimator, extra JSON, feature transforms).

    Raises
    ------
    ModelBundleError
        When the folder is not a bundle written by ``group --train``.
    """
    from ..estimators.bundle import load_bundle, read_bundle_extra

    path = Path(path)
    extra, arrays = read_bundle_extra(path)
    if extra.get("kind") != BUNDLE_KIND or "transforms" not in extra:
        raise ModelBundleError(
            path, "not a group-level model bundle (no input specification, transforms or bias correction)",
            "pass the model/ folder that `brainage BIDS OUT group --train` wrote under OUT/group/",
        )
    try:
        transforms = FeatureTransforms.from_bundle(extra["transforms"], arrays)
    except (GroupLevelError, KeyError, TypeError, ValueError) as exc:
        raise ModelBundleError(path, f"its feature transforms cannot be read ({exc})",
                               "retrain with `group --train`, or restore the bundle from a copy") from None
    return load_bundle(path), extra, transforms


def apply_bundle(bids_dir, output_dir, bundle, *, device: str = "auto") -> GroupOutputs:
    """Predict a new cohort with a trained bundle and write the group tables.

    Parameters
    ----------
    bids_dir, output_dir : path-like
        The new cohort's BIDS dataset and derivatives.
    bundle : path-like
        ``OUT/group/model`` of a training run.
    device : str
        Device of neural models.

    Returns
    -------
    GroupOutputs

    Raises
    ------
    ModelBundleError
        A corrupt or foreign bundle.
    GroupLevelError
        Inputs that differ from the bundle's, or sites its ComBat has not seen.
    """
    from ..cohort.data import load_cohort
    from ..config import GroupConfig
    from ..estimators.bundle import bundle_digest
    from ..estimators.registry import predict_by_modality
    from ..stats.bias import AgeBiasCorrection

    start = time.perf_counter()
    est, extra, transforms = read_group_bundle(bundle)
    cfg = GroupConfig(**extra["group_config"])
    cohort = load_cohort(bids_dir, output_dir, cfg, spec=extra["input_spec"])
    parts = cohort.participants
    mods = list(extra["modalities"])
    for m, h in transforms.combat.items():
        unseen = sorted(set(parts[h.batch].astype(str)) - set(map(str, h.batches_)))
        if unseen:
            raise GroupLevelError(
                f"the bundle's ComBat ({m}) was fitted on sites {', '.join(map(str, h.batches_))}; this "
                f"cohort has unseen site(s) {', '.join(unseen)}. Retrain with controls of those sites "
                "(group --train), or apply a bundle trained with group.combat.enabled: false"
            )

    keys = parts.index.to_numpy(dtype=object)
    t0 = time.perf_counter()
    X = transforms.inputs(cohort, keys, mods)
    pred = est.predict(X)
    by_mod = predict_by_modality(est, X)
    seconds = time.perf_counter() - t0
    corr = AgeBiasCorrection.from_dict(extra["bias_correction"])
    table = corr.transform_table(parts["age"].to_numpy(float), pred, site=parts["site"].to_numpy())
    frame = pd.DataFrame({"fold": "bundle", "n_models": 1, "predicted_age": pred,
                          "predicted_age_corrected": table["predicted_age_corrected"].to_numpy()},
                         index=parts.index)
    for m, p in by_mod.items():
        frame[f"predicted_age_{m}"] = p
    name = extra["model"]
    runs = {name: ModelRun(name=name, predictions=frame,
                           predict_seconds_per_participant=seconds / max(len(keys), 1))}
    table_all = predictions_table(parts, runs)
    out = group_dir(output_dir)
    (out / "provenance.json").unlink(missing_ok=True)  # these are no longer a training's outputs
    files = write_common(out, cohort, table_all, runs, name, {
        "applied_bundle": {"path": str(Path(bundle).resolve()), "model": name,
                           "digest": bundle_digest(bundle),
                           "trained_on": extra.get("trained_on"),
                           "corrections": table["correction"].value_counts().to_dict()},
    })
    # The atlas PID describes this cohort's own controls (nothing of the bundle is used), as a
    # training run describes its cohort.
    files.update(write_regions_pid(out, atlas_pid_cohort(cohort, cfg, output_dir),
                                   enabled=cfg.regions_pid, seed=cfg.cv.seed))
    files["applied"] = write_json({"bundle": str(Path(bundle).resolve()),
                                   "bundle_digest": bundle_digest(bundle), "model": name,
                                   "n_predicted": len(keys),
                                   "mean_predicted_age": float(np.mean(pred)),
                                   "files": {k: str(v) for k, v in files.items()}}, out / "applied.json")
    return GroupOutputs(directory=out, files=files, headline=headline_metrics(table_all, name),
                        seconds=time.perf_counter() - start)
