"""What a cohort of this size can and cannot show (section 1 of the cohort report).

The paragraph is computed from the run's own numbers: the number of controls the
models were trained on, the smallest group difference the comparison could detect
(a two-sample power calculation on the controls' corrected gaps), and, for a cohort
written by ``brainage simulate``, the simulator's true patient gap beside the
estimate. It is there so that a small cohort's report is not read as evidence about
brain age in general.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from .formatting import fmt

__all__ = ["detectable_difference", "scope_text", "simulation_truth"]

#: Folds of a cross-validation when metrics.json does not say.
_DEFAULT_FOLDS = 5


def detectable_difference(sd: float, n1: int, n2: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest mean difference a two-sided two-sample test detects with the given power.

    Normal approximation: ``(z_{1-α/2} + z_{power}) · sd · sqrt(1/n1 + 1/n2)``
    (Cohen 1988, ch. 2); about ``2.8 · SE`` at α = 0.05 and 80 % power.

    Parameters
    ----------
    sd : float
        Standard deviation of the outcome in each group (here the controls' corrected gap).
    n1, n2 : int
        Group sizes.
    alpha, power : float
        Two-sided type-I error and the power wanted.

    Returns
    -------
    float
        The detectable difference (NaN when a group is empty or ``sd`` is not finite).

    Examples
    --------
    >>> round(detectable_difference(1.0, 16, 16), 2)
    0.99
    """
    from scipy.stats import norm

    if n1 < 1 or n2 < 1 or not math.isfinite(sd):
        return float("nan")
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    return float(z * sd * math.sqrt(1 / n1 + 1 / n2))


def simulation_truth(output_dir) -> dict | None:
    """Return the simulator's ``truth.json`` when the derivatives' source dataset is a simulated cohort.

    The source dataset is the ``SourceDatasets`` URL of ``OUTPUT_DIR/dataset_description.json``
    (a ``file://`` URL, as the participant level writes it); it is simulated when its own
    ``dataset_description.json`` says ``GeneratedBy: brainage simulate``.

    Returns
    -------
    dict or None
        The truth record, or None for a real (or unreadable) source dataset.
    """
    try:
        desc = json.loads((Path(output_dir) / "dataset_description.json").read_text(encoding="utf-8"))
        url = urlparse(str(desc["SourceDatasets"][0]["URL"]))
        if url.scheme != "file":
            return None
        raw = Path(unquote(url.path))
        raw_desc = json.loads((raw / "dataset_description.json").read_text(encoding="utf-8"))
        if not any(str(g.get("Name")) == "brainage simulate" for g in raw_desc.get("GeneratedBy", [])):
            return None
        return json.loads((raw / "sourcedata" / "brainage-truth" / "truth.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def _group_counts(data) -> tuple[int, dict]:
    pred = data.primary_predictions()
    if pred is None or not len(pred):
        return 0, {}
    labels = {c.lower() for c in data.control_labels}
    first = pred.drop_duplicates("participant_id")
    is_control = first["group"].astype(str).str.lower().isin(labels)
    others = first.loc[~is_control, "group"].astype(str).value_counts().to_dict()
    return int(is_control.sum()), others


def scope_text(data) -> list[str]:
    """Paragraphs saying what this cohort's numbers can and cannot show.

    Parameters
    ----------
    data : brainage.reporting.data.ReportData

    Returns
    -------
    list of str
        Empty when the run has no predictions.
    """
    n_controls, others = _group_counts(data)
    if not n_controls:
        return []
    out = []
    if data.mode == "train":
        folds = int(((data.metrics.get("cv") or {}).get("n_splits")) or _DEFAULT_FOLDS)
        per_fold = round(n_controls * (folds - 1) / folds)
        out.append(
            f"What this cohort can show. Each model was trained on about {per_fold} controls per fold "
            f"({n_controls} in all). Published brain-age models train on hundreds to tens of thousands "
            "of people and reach mean absolute errors of 2.5–5 years (UK Biobank); the accuracy here "
            "describes these models on this cohort, not what the method reaches on large data."
        )
    pred = data.primary_predictions()
    labels = {c.lower() for c in data.control_labels}
    controls = pred[pred["group"].astype(str).str.lower().isin(labels)]
    sd = float(np.nanstd(controls["gap_corrected"], ddof=1)) if len(controls) > 1 else float("nan")
    for group, n in sorted(others.items()):
        mdd = detectable_difference(sd, n_controls, int(n))
        if math.isfinite(mdd):
            out.append(
                f"With {n_controls} controls and {n} {group} participants, and a corrected-gap SD of "
                f"{fmt(sd)} years among controls, the group comparison detects a difference of about "
                f"{fmt(mdd)} years with 80 % power (two-sided α = 0.05); published effects of "
                "psychiatric conditions are 1–4 years, so a smaller true effect is likely to be missed "
                "here, and an interval that includes zero is not evidence of no effect."
            )
    out.append(
        "With this few participants the PID atoms, the fusion weights and the ranking of atlas regions "
        "carry wide intervals: read their intervals before their point values, and do not compare "
        "regions whose intervals overlap. A participant's percentile needs at least ten same-sex "
        "controls of similar age and is left out otherwise."
    )
    truth = simulation_truth(data.output_dir)
    if truth is not None:
        gap = truth.get("true_patient_gap_years")
        text = (
            "This cohort is simulated (brainage simulate): ages, diagnoses and images come from a "
            "generative model with a known truth (sourcedata/brainage-truth of the dataset). "
        )
        if gap is not None:
            text += (
                f"Patients were simulated {fmt(gap)} years older in brain than in age; compare this with "
                "the adjusted gap of section 3. "
            )
        oracle = truth.get("oracle_mae_sample_controls_years")
        if oracle is not None:
            text += (
                f"The best any predictor could do on these controls is a mean absolute error of "
                f"{fmt(oracle)} years (the simulator's oracle)."
            )
        out.append(text.strip())
    return out
