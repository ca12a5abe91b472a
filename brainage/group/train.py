"""``group --train``: cohort → cross-validation → tables → the primary model's bundle.

:func:`train_group` is the one function the command line and the demo call.
It reads the derivatives (:func:`brainage.cohort.data.load_cohort`),
cross-validates every configured model (:mod:`brainage.group.cv`), writes the
tables of ``OUTPUT_DIR/group/`` and retrains the primary model on all controls
into ``OUTPUT_DIR/group/model/`` together with its feature transforms (ComBat, PCA), its age-bias
correction (fitted on the controls' out-of-fold predictions) and the exact
input specification, so that ``group --model`` can apply it to a new cohort.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..console import progress
from .cv import cross_validate, fit_correction, fit_line, model_modalities, validation_split
from .deviations import deviations_table
from .outputs import REGION_PARTICIPANT_COLUMNS, REGIONS_COLUMNS, group_dir, write_json, write_table
from .summary import NOT_ACCURACY, age_summary, groups_table, metrics_report, pid_report, predictions_table

logger = logging.getLogger(__name__)

__all__ = [
    "GroupOutputs",
    "atlas_pid_cohort",
    "control_labels_present",
    "headline_metrics",
    "train_group",
    "write_regions",
    "write_regions_pid",
]

BUNDLE_KIND = "brainage-group-model"


@dataclass
class GroupOutputs:
    """Where the group level wrote what, and its headline numbers."""

    directory: Path
    files: dict = field(default_factory=dict)
    headline: dict = field(default_factory=dict)
    seconds: float = 0.0
    up_to_date: bool = False
    reports: object = None


def cohort_fingerprint(cohort, cfg) -> str:
    """Hash of everything the training results depend on.

    The participants table, every modality's features (or, for maps, each file's path, size
    and modification time: hashing thousands of volumes would cost more than it saves), the
    ``group`` configuration, the brainage version and the source of the code that trains
    (:func:`brainage.provenance.code_digest`).
    """
    import hashlib
    import json

    import pandas as pd

    from ..provenance import code_digest, fingerprint

    def frame_hash(frame) -> str:
        return hashlib.sha256(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes()
                              + "|".join(map(str, frame.columns)).encode()).hexdigest()

    inputs = [{"sha256": "participants:" + frame_hash(cohort.participants.astype(str))}]
    for name, inp in sorted(cohort.inputs.items()):
        if inp.features is not None:
            inputs.append({"sha256": f"{name}:" + frame_hash(inp.features)})
        else:
            stats = [[p, Path(p).stat().st_size, Path(p).stat().st_mtime_ns]
                     for p in inp.paths.to_numpy(dtype=object).ravel()]
            digest = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
            inputs.append({"sha256": f"{name}:maps:" + digest})
    return fingerprint("group", cfg.model_dump(mode="json"), inputs, {},
                       code=code_digest("brainage.group.train"))


def _reuse(out: Path, fp: str) -> GroupOutputs | None:
    from ..provenance import read_record

    record = read_record(out / "provenance.json")
    if not record or record.get("fingerprint") != fp:
        return None
    files = {k: Path(v) for k, v in record.get("files", {}).items()}
    if not files or not all(p.exists() for p in files.values()):
        return None
    return GroupOutputs(directory=out, files=files, headline=record.get("headline", {}),
                        up_to_date=True)


def control_labels_present(participants) -> list[str]:
    """Return the group labels of the controls in this cohort (the comparisons' reference)."""
    return sorted(participants.loc[participants["is_control"], "group"].astype(str).unique())


def write_common(out: Path, cohort, table, runs, primary: str, extra_metrics: dict, *,
                 selection: dict | None = None) -> dict:
    """Write predictions, exclusions, metrics and groups; return the paths.

    ``selection`` (:func:`brainage.interpret.selection.modality_selection_report`) goes to
    ``metrics.json`` under ``models[primary]["modality_selection"]``.
    """
    files = {
        "predictions": write_table(table.drop(columns=["is_control"]), out / "predictions.tsv"),
        "exclusions": write_table(cohort.exclusions.reset_index(drop=True), out / "exclusions.tsv"),
    }
    prim = table[table["model"] == primary]
    groups = groups_table(prim, reference=control_labels_present(cohort.participants))
    files["groups"] = write_table(groups, out / "groups.tsv")
    metrics = {
        "cohort": age_summary(cohort.participants),
        "n_excluded": int(cohort.exclusions["participant_id"].nunique()) if len(cohort.exclusions) else 0,
        "primary_model": primary,
        "note": NOT_ACCURACY,
        **extra_metrics,
        "models": metrics_report(table, runs),
    }
    if selection is not None and primary in metrics["models"]:
        metrics["models"][primary]["modality_selection"] = selection
    files["metrics"] = write_json(metrics, out / "metrics.json")
    deviations = deviations_table(cohort)
    if deviations is not None:
        files["deviations"] = write_table(deviations, out / "deviations.tsv")
    else:
        (out / "deviations.tsv").unlink(missing_ok=True)
        (out / "deviations.json").unlink(missing_ok=True)
    return files


def train_group(bids_dir, output_dir, config, *, device: str = "auto", group_out=None) -> GroupOutputs:
    """Cross-validate the configured models on a cohort and bundle the primary one.

    Parameters
    ----------
    bids_dir : path-like
        The raw BIDS dataset (``participants.tsv``).
    output_dir : path-like
        The derivatives root written by the participant level.
    config : brainage.config.PipelineConfig
        The pipeline configuration; its ``group`` section drives everything.
    device : str
        Device of the neural models.
    group_out : path-like, optional
        Where the group outputs go (default ``OUTPUT_DIR/group``). Under data-parallel
        training the ranks other than 0 write to a scratch folder of their own
        (:func:`brainage.levels.run_group`); every rank follows rank 0's decision to
        reuse an up-to-date run.

    Returns
    -------
    GroupOutputs

    Raises
    ------
    GroupLevelError
        When the cohort cannot be used (too few controls, a tiny site under
        ComBat, no participant left after exclusions), with what to change.
    """
    from ..cohort.data import load_cohort
    from ..estimators.bundle import bundle_digest, save_bundle
    from ..provenance import software_versions

    start = time.perf_counter()
    cfg = config.group
    out = group_dir(output_dir) if group_out is None else Path(group_out)
    out.mkdir(parents=True, exist_ok=True)
    cohort = load_cohort(bids_dir, output_dir, cfg)
    pid_cohort = atlas_pid_cohort(cohort, cfg, output_dir)
    fp = cohort_fingerprint(pid_cohort, cfg)
    reused = _reuse(out, fp)
    from ..training.distributed import broadcast_flag, rank_and_world

    if rank_and_world()[1] > 1 and broadcast_flag(reused is not None) != (reused is not None):
        # data-parallel training: rank 0 alone sees the earlier run; the others follow it
        reused = GroupOutputs(directory=out, up_to_date=True) if reused is None else None
    if reused is not None:
        logger.info("group level up to date (same inputs, configuration and code): %s", out)
        reused.seconds = time.perf_counter() - start
        return reused
    (out / "provenance.json").unlink(missing_ok=True)
    logger.info("group level: %d participants (%d controls), %d exclusion rows",
                len(cohort.participants), int(cohort.participants["is_control"].sum()),
                len(cohort.exclusions))
    result = cross_validate(cohort, cfg, device=device)
    table = predictions_table(cohort.participants, result.runs)
    primary = cfg.primary_model
    from ..interpret.selection import modality_selection_report

    selection = modality_selection_report(
        result.runs[primary], cohort.participants, output_dir,
        {m: cfg.inputs[m].stage for m in model_modalities(primary, cohort)})
    files = write_common(out, cohort, table, result.runs, primary, {"cv": result.settings},
                         selection=selection)
    files["pid"] = write_json(pid_report(result.runs[primary], cohort.participants), out / "pid.json")
    contributions = result.runs[primary].contributions
    if contributions is not None:
        files["contributions"] = write_table(contributions_table(cohort.participants, result.runs[primary]),
                                             out / "contributions.tsv")
    if result.runs[primary].region_attributions is not None:
        files.update(write_regions(out, cohort.participants, result.runs[primary].region_attributions,
                                   seed=cfg.cv.seed))
    files.update(write_regions_pid(out, pid_cohort, enabled=cfg.regions_pid, seed=cfg.cv.seed))

    # The primary model retrained on all controls, with the correction fitted on their
    # out-of-fold predictions (from models that never saw them).
    parts = cohort.participants
    controls = parts.index[parts["is_control"].to_numpy(dtype=bool)]
    mods = model_modalities(primary, cohort)
    run = result.runs[primary]
    usable = [k for k in controls if k in run.predictions.index]
    from ..estimators.registry import make_estimator
    from .transforms import FeatureTransforms, volume_cache

    tf = FeatureTransforms.fit(cohort, usable, cfg, mods, seed=cfg.cv.seed)
    est = make_estimator(primary, modalities=mods, params=dict(cfg.model_params.get(primary, {})),
                         random_state=cfg.cv.seed, device=device)
    y = parts.loc[usable, "age"].to_numpy(float)
    t0 = time.perf_counter()
    with progress(f"training: {primary} on all controls", 1, log=logger) as task:
        cache = volume_cache(cohort, mods, cfg.cache_maps_gb, mode=cfg.volume_cache)
        est.fit(tf.inputs(cohort, usable, mods, cache), y,
                validation_idx=validation_split(y, cfg.cv.seed))
        final_seconds = time.perf_counter() - t0
        task.finished(f"{primary} on all {len(usable)} controls{fit_line(est)}, "
                      f"fitted in {final_seconds:.1f} s")
    corr = fit_correction(cfg, y, run.predictions.loc[usable, "predicted_age"].to_numpy(float),
                          parts.loc[usable, "site"].to_numpy())
    headline = headline_metrics(table, primary)
    tf_meta, tf_arrays = tf.to_bundle()
    extra = {
        "kind": BUNDLE_KIND,
        "model": primary,
        "modalities": mods,
        "input_spec": cohort.spec,
        "transforms": tf_meta,
        "combat_settings": cfg.combat.model_dump(mode="json"),
        "bias_correction": corr.to_dict(),
        "group_config": cfg.model_dump(mode="json"),
        "trained_on": {**age_summary(parts.loc[usable]), "fit_seconds": final_seconds},
        "cross_validation": {"settings": result.settings, "uncorrected": headline},
        "versions": software_versions(),
    }
    files["model"] = save_bundle(est, out / "model", extra_json=extra, extra_arrays=tf_arrays or None)
    seconds = time.perf_counter() - start
    write_json({"fingerprint": fp, "files": {k: str(v) for k, v in files.items()}, "headline": headline,
                "bundle_digest": bundle_digest(files["model"]),
                "seconds": seconds, "versions": software_versions()}, out / "provenance.json")
    return GroupOutputs(directory=out, files=files, headline=headline, seconds=seconds)


def write_regions(out: Path, participants, attributions, *, seed: int = 0) -> dict:
    """Write ``regions.tsv``, ``regions_participants.tsv`` and the attribution maps; return the paths.

    One map ``regions_<modality>_attribution.nii.gz`` per modality whose atlas is a volume
    atlas of the registry (the label image painted with each region's attribution); a map
    that cannot be made is logged and skipped.
    """
    from ..interpret.regions import attribution_image, participant_regions, region_summary

    summary = region_summary(attributions, participants, seed=seed)
    files = {
        "regions": write_table(summary, out / "regions.tsv", columns=REGIONS_COLUMNS),
        "regions_participants": write_table(participant_regions(attributions, participants),
                                            out / "regions_participants.tsv",
                                            columns=REGION_PARTICIPANT_COLUMNS),
    }
    for modality in dict.fromkeys(summary["modality"]):
        _save_map(files, out, f"regions_{modality}_attribution",
                  lambda m=modality: attribution_image(summary, m))
    return files


def _save_map(files: dict, out: Path, name: str, make_image) -> None:
    """Write ``out/<name>.nii.gz`` from ``make_image()`` and add it to ``files``; log and skip on failure."""
    from ..exceptions import AtlasError
    from ..writing import save_nifti

    try:
        image = make_image()
    except AtlasError as exc:
        logger.warning("no map %s: %s", name, exc)
        return
    if image is not None:
        files[name] = save_nifti(image, out / f"{name}.nii.gz")


#: The atoms painted into ``regions_pid_<atom>.nii.gz``.
REGIONS_PID_ATOMS = ("U_struct", "U_func", "R", "S")


def atlas_pid_cohort(cohort, cfg, derivatives_dir):
    """Return the cohort the atlas PID reads: the model inputs plus what it needs beside them.

    When no connectivity input shares an atlas with a regional one (the functional models
    read maps), the connectivity on the regional atlas comes from the participant level's
    matrices; when no functional maps are among the inputs (they read connectivity), the
    fALFF and ReHo maps do, for the parcels' means (unless a functional ``kind: parcels``
    input has them). Neither enters a model or the bundle.
    Read before :func:`cohort_fingerprint`, which then covers them: a changed matrix or map
    redoes the group level. Returns ``cohort`` itself when nothing is added or
    ``group.regions_pid`` is off.
    """
    from ..cohort.data import CohortData, read_connectivity_input, read_functional_maps
    from ..interpret.regions_pid import paired_inputs

    if not cfg.regions_pid or derivatives_dir is None:
        return cohort
    extra = {}
    if paired_inputs(cohort)[0] is None:
        atlases = [i.spec.get("atlas") for i in cohort.inputs.values() if i.kind == "regional"]
        for atlas in dict.fromkeys(a for a in atlases if a):
            conn = read_connectivity_input(derivatives_dir, cohort, str(atlas), cfg.qc)
            if conn is not None and conn.name not in cohort.inputs:
                extra[conn.name] = conn
                break
        if not extra:
            return cohort  # no pair: no atlas PID, nothing more to read
    regional = {i.spec.get("atlas") for i in cohort.inputs.values() if i.kind == "regional"}
    if not any(i.spec.get("stage") == "func" and (i.kind == "maps" or (
            i.kind == "parcels" and i.spec.get("atlas") in regional)) for i in cohort.inputs.values()):
        maps = read_functional_maps(derivatives_dir, cohort, cfg.qc)
        if maps is not None and maps.name not in cohort.inputs:
            extra[maps.name] = maps
    if not extra:
        return cohort
    return CohortData(cohort.participants, {**cohort.inputs, **extra}, cohort.exclusions,
                      cohort.control_labels)


def _local_map_means(cohort, pair):
    """Region means of the cohort's functional maps (fALFF, ReHo …) on the pair's atlas, or None.

    A functional ``kind: parcels`` input on that atlas has them already; otherwise they are
    computed from the first functional ``kind: maps`` input.
    """
    from ..cohort.parcels import parcel_means

    for inp in cohort.inputs.values():
        if inp.kind == "parcels" and inp.spec.get("stage") == "func" and inp.spec.get("atlas") == pair.atlas:
            return inp.features
    maps = [i for i in cohort.inputs.values()
            if i.kind == "maps" and i.paths is not None and i.spec.get("stage") == "func"]
    if not maps:
        return None
    try:
        return parcel_means(maps[0].paths, pair.atlas)
    except (OSError, ValueError) as exc:  # an unreadable map: the PID keeps connectivity only
        logger.warning("regions_pid: region means of the functional maps failed (%s); the "
                       "functional side is the connectivity alone", exc)
        return None


def write_regions_pid(out: Path, cohort, *, enabled: bool = True, seed: int = 0) -> dict:
    """Write ``regions_pid.tsv`` (+ sidecar) and ``regions_pid_<atom>.nii.gz``; return the paths.

    The atlas PID of :func:`brainage.interpret.regions_pid.regions_pid` (the controls' age from
    each region's GM volume and connectivity profile). Skipped, with the reason logged and
    the files of an earlier run removed, when ``enabled`` is false (``group.regions_pid``), when
    no regional and connectivity input share an atlas, or when the PID cannot be computed (too
    few controls). A map that cannot be made is logged and skipped. The region means of the
    cohort's functional maps join each region's connectivity components. Pass the cohort of
    :func:`atlas_pid_cohort` for the inputs read beside the models'.
    """
    from ..exceptions import GroupLevelError
    from ..interpret.regions_pid import atom_image, paired_inputs, regions_pid
    from .outputs import REGIONS_PID_COLUMNS

    stale = [out / "regions_pid.tsv", out / "regions_pid.json",
             *(out / f"regions_pid_{atom}.nii.gz" for atom in REGIONS_PID_ATOMS)]
    pair, why = paired_inputs(cohort) if enabled else (None, "group.regions_pid is false")
    table = None
    if pair is not None:
        try:
            table = regions_pid(cohort, inputs=pair, seed=seed, local=_local_map_means(cohort, pair))
        except GroupLevelError as exc:
            why = str(exc).removeprefix("regions_pid: ")
    if table is None:
        logger.info("no regions_pid.tsv (atlas PID of structure and function): %s", why)
        for path in stale:
            path.unlink(missing_ok=True)
        return {}
    files = {"regions_pid": write_table(table, out / "regions_pid.tsv", columns=REGIONS_PID_COLUMNS)}
    for atom in REGIONS_PID_ATOMS:
        _save_map(files, out, f"regions_pid_{atom}", lambda a=atom: atom_image(table, a))
    return files


def contributions_table(participants, run):
    """One row per participant: identifiers, the prediction and its out-of-fold decomposition."""
    ids = participants[["participant_id", "session", "age", "group"]]
    frame = ids.join(run.predictions[["fold", "n_models", "predicted_age"]], how="inner")
    frame = frame.join(run.contributions, how="left")
    frame.insert(4, "model", run.name)
    return frame.reset_index(drop=True)


def headline_metrics(table, model: str) -> dict:
    """Return the uncorrected out-of-sample accuracy of one model's controls (the console line)."""
    from ..stats.metrics import brain_age_metrics

    t = table[(table["model"] == model) & table["is_control"]]
    m = brain_age_metrics(t["age"], t["predicted_age"])
    return {k: m[k] for k in ("n", "mae", "r", "gap_age_slope", "age_min", "age_max")}
