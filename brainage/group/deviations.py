"""Regional deviations from the cohort's controls: normative z-scores by age and sex.

For every regional feature (GM volume of an atlas region, tissue totals), a linear
normative model ``feature ~ 1 + age + age² + sex`` is fitted by ordinary least
squares on the controls. A participant's deviation is the z-score of their value
against that model:

- patients (and every non-control): ``z = (y − ŷ) / (s √(1 + h))``, the standardized
  prediction error with ``h = x (XᵀX)⁻¹ xᵀ`` (the prediction interval of OLS);
- controls: the externally studentized residual, ``(y − ŷ₍₋ᵢ₎)``-based, i.e. each control
  is scored against the model fitted without them (leave-one-out, closed form), so a
  control is never their own reference.

``|z| > 1.96`` is flagged (outside the central 95 % band of controls of that age and
sex). The band assumes Gaussian residuals of constant variance: a descriptive
normative comparison of this cohort's controls, not a clinical norm.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

__all__ = ["Z_FLAG", "deviations_table", "normative_deviations", "write_deviations"]

logger = logging.getLogger(__name__)

#: |z| above which a value is flagged (two-sided 95 % band).
Z_FLAG = 1.96
#: Values of ``sex`` that mean "not known".
_UNKNOWN_SEX = {"", "n/a", "na", "nan", "none", "<na>", "unknown"}


def _known_sex(sex: pd.Series) -> np.ndarray:
    text = sex.astype(object).where(sex.notna(), "").astype(str).str.strip()
    return np.where(text.str.lower().isin(_UNKNOWN_SEX), "", text).astype(object)


def _design(age: np.ndarray, sex: np.ndarray, levels) -> np.ndarray:
    """``1, (age − 50)/10, ((age − 50)/10)², one indicator per sex level but the first``."""
    centred = (age - 50.0) / 10.0
    cols = [np.ones_like(centred), centred, centred**2]
    for level in list(levels)[1:]:
        cols.append((sex == level).astype(float))
    return np.column_stack(cols)


def normative_deviations(participants: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """Z-scores of every participant's regional features against the controls.

    Parameters
    ----------
    participants : pandas.DataFrame
        ``CohortData.participants`` (``participant_id``, ``session``, ``age``, ``sex``, ``group``,
        ``is_control``), indexed like ``features``.
    features : pandas.DataFrame
        One column per feature (e.g. GM volume per region), rows aligned with ``participants``.
        A row with a missing value (a participant without this modality) is left out.

    Returns
    -------
    pandas.DataFrame
        Long format: ``participant_id, session, group, feature, value, expected, z, flagged``
        (``expected``: the normative model's value for this participant's age and sex, fitted on
        the controls; for controls, fitted without them). The sex term uses the sexes of the
        controls: a participant whose sex is unknown, or is none of the controls' sexes, has no
        normative value (``expected`` and ``z`` NaN, not flagged); when no control's sex is known
        the model is ``1 + age + age²`` for everyone.

    Raises
    ------
    ValueError
        Fewer usable controls (with every feature and a known sex) than twice the model's
        parameters plus two, or a design the controls cannot identify.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> parts = pd.DataFrame({"participant_id": [f"sub-{i}" for i in range(30)], "session": "n/a",
    ...                       "age": rng.uniform(20, 80, 30), "sex": ["F", "M"] * 15,
    ...                       "group": ["control"] * 29 + ["patient"], "is_control": [True] * 29 + [False]})
    >>> volume = pd.DataFrame({"gm": 8 - 0.04 * parts["age"] + rng.normal(0, 0.1, 30)})
    >>> volume.loc[29, "gm"] -= 1.0  # the patient: 10 SDs below the controls of their age
    >>> dev = normative_deviations(parts, volume)
    >>> bool(dev["flagged"].iloc[-1]), int(dev["flagged"].iloc[:-1].sum()) <= 3
    (True, True)
    """
    parts = participants.loc[features.index]
    Y_all = features.to_numpy(float)
    has_values = np.isfinite(Y_all).all(axis=1)
    parts, Y = parts[has_values], Y_all[has_values]
    age = parts["age"].to_numpy(float)
    sex = _known_sex(parts["sex"])
    ctrl_all = parts["is_control"].to_numpy(bool)
    levels = sorted(set(sex[ctrl_all]) - {""})
    if levels:
        scorable = np.isin(sex, levels) & np.isfinite(age)
    else:  # no control's sex is known: the model has no sex term
        scorable = np.isfinite(age)
    X = _design(age, sex, levels)
    ctrl = ctrl_all & scorable
    n, p = int(ctrl.sum()), X.shape[1]
    if n < 2 * p + 2:
        raise ValueError(
            f"normative deviations need at least {2 * p + 2} controls with every feature and a known "
            f"sex (model feature ~ 1 + age + age^2{' + sex' if len(levels) > 1 else ''}, {p} "
            f"parameters); the cohort has {n}"
        )
    Xc, Yc = X[ctrl], Y[ctrl]
    rank = np.linalg.matrix_rank(Xc)
    if rank < p:
        raise ValueError(
            f"normative deviations: the {n} controls cannot identify the model feature ~ 1 + age + "
            f"age^2 + sex (design rank {rank} < {p} parameters; e.g. every control of one sex has "
            "the same age)"
        )
    xtx_inv = np.linalg.inv(Xc.T @ Xc)
    beta = xtx_inv @ Xc.T @ Yc
    resid_c = Yc - Xc @ beta
    sse = (resid_c**2).sum(axis=0)
    s2 = sse / (n - p)
    expected = X @ beta
    h = np.einsum("ij,jk,ik->i", X, xtx_inv, X)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (Y - expected) / np.sqrt(np.outer(1.0 + h, s2))
        # Controls: externally studentized residuals, e / (s_(i) sqrt(1 - h)), the leave-one-out score.
        hc = h[ctrl][:, None]
        s2_loo = (sse[None, :] - resid_c**2 / (1.0 - hc)) / (n - p - 1)
        z_c = resid_c / np.sqrt(np.clip(s2_loo, 1e-300, None) * (1.0 - hc))
        loo_expected = Yc - resid_c / (1.0 - hc)
    degenerate = (1.0 - hc[:, 0]) < 1e-10  # a control the others cannot predict (leverage 1)
    z_c[degenerate] = np.nan
    loo_expected[degenerate] = np.nan
    z[ctrl], expected[ctrl] = z_c, loo_expected
    # A measure the model fits exactly (constant, or a function of age and sex) has no band.
    scale = np.nanmax(np.abs(Yc), axis=0)
    exact = np.sqrt(s2) <= 1e-9 * np.where(scale > 0, scale, 1.0)
    z[:, exact] = np.nan
    z[~scorable], expected[~scorable] = np.nan, np.nan
    if (~scorable).any():
        logger.info("normative deviations: %d participant(s) without a normative value (sex unknown "
                    "or of no control)", int((~scorable).sum()))
    k = features.shape[1]
    out = pd.DataFrame({
        "participant_id": np.repeat(parts["participant_id"].to_numpy(), k),
        "session": np.repeat(parts["session"].to_numpy(), k),
        "group": np.repeat(parts["group"].to_numpy(), k),
        "feature": np.tile(np.asarray(features.columns, dtype=object), len(parts)),
        "value": Y.ravel(),
        "expected": expected.ravel(),
        "z": z.ravel(),
    })
    out["flagged"] = np.abs(out["z"].to_numpy()) > Z_FLAG  # NaN compares False
    return out


def _region_names(atlas_id) -> dict[str, tuple[str, str]]:
    """Feature name ``<atlas>_<index>`` → (region name, lobe) from the registry's region table."""
    from ..atlases import region_table
    from ..exceptions import AtlasError, UnknownAtlasError

    if not atlas_id:
        return {}
    try:
        labels = region_table(str(atlas_id))
    except (AtlasError, UnknownAtlasError) as exc:  # names are a convenience; the feature names remain
        logger.info("deviations: no region names for atlas %r (%s)", atlas_id, exc)
        return {}
    return {f"{atlas_id}_{int(i)}": (str(n), str(lobe))
            for i, n, lobe in zip(labels["index"], labels["name"], labels["lobe"])}


def deviations_table(cohort):
    """Regional deviations of every participant of ``cohort``, from its regional inputs.

    Every ``kind: regional`` input (raw volumes, before any selection, PCA or ComBat) is
    scored with :func:`normative_deviations`. Atlas features are named by the atlas' region
    table (``region``, ``lobe``); tissue totals by the names ``regions.tsv`` gives them
    (``Total_GM``, ``TIV`` …, :data:`brainage.interpret.regions.TISSUE_REGIONS`). ``units``
    is ``fraction of TIV`` for the volumes of a ``normalize: tiv`` input (every one but
    ``tiv_ml`` itself), else ``mL``.

    Parameters
    ----------
    cohort : brainage.cohort.data.CohortData
        The group level's cohort.

    Returns
    -------
    pandas.DataFrame or None
        The rows of ``group/deviations.tsv`` (``participant_id, session, group, modality,
        feature, region, lobe, value, expected, z, flagged, units``), or None when the cohort
        has no regional input or too few controls (logged, never an error: deviations are
        descriptive).
    """
    from ..interpret.regions import TISSUE_REGIONS

    frames = []
    for name, inp in cohort.inputs.items():
        if inp.kind != "regional" or inp.features is None:
            continue
        try:
            dev = normative_deviations(cohort.participants, inp.features)
        except ValueError as exc:
            logger.warning("no regional deviations for %s: %s", name, exc)
            continue
        names = _region_names(inp.spec.get("atlas"))
        feature = dev["feature"].astype(str)
        dev.insert(3, "modality", name)
        dev.insert(5, "region", [names[f][0] if f in names else TISSUE_REGIONS.get(f, f) for f in feature])
        dev.insert(6, "lobe", [(names[f][1] if f in names else "") or "n/a" for f in feature])
        # normalize: tiv divides every volume by TIV except tiv_ml itself (brainage.cohort.readers)
        tiv_fraction = inp.spec.get("normalize") == "tiv"
        dev["units"] = np.where(tiv_fraction & (feature != "tiv_ml"), "fraction of TIV", "mL")
        frames.append(dev)
    return pd.concat(frames, ignore_index=True) if frames else None


def write_deviations(bids_dir, output_dir, config):
    """Write ``OUTPUT_DIR/group/deviations.tsv`` for the regional inputs of ``config.group``.

    The group level writes the same table as part of a training or applying run
    (:func:`brainage.group.train.write_common`); this is the standalone form.

    Parameters
    ----------
    bids_dir : path-like
        The raw BIDS dataset (its ``participants.tsv``).
    output_dir : path-like
        ``OUTPUT_DIR`` of the participant level; the table goes to ``OUTPUT_DIR/group/``.
    config : brainage.config.PipelineConfig or brainage.config.GroupConfig
        The run's configuration (or its ``group`` section); only its regional inputs are read.

    Returns
    -------
    pathlib.Path or None
        The table, or None when there is no regional input or too few controls.
    """
    from ..cohort.data import load_cohort
    from .outputs import group_dir, write_table

    cfg = config.group if hasattr(config, "group") else config
    regional = {k: v for k, v in cfg.inputs.items() if v.kind == "regional"}
    if not regional:
        return None
    cohort = load_cohort(bids_dir, output_dir, cfg.model_copy(update={"inputs": regional}))
    table = deviations_table(cohort)
    if table is None:
        return None
    return write_table(table, group_dir(output_dir) / "deviations.tsv")
