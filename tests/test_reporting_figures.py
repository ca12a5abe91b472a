"""Report figures: every function writes a small, parseable SVG with its text as text, atomically.

The inputs are tiny tables shaped like the group level's outputs (``predictions.tsv``,
``groups.tsv``, ``metrics.json``, ``pid.json``, ``contributions.tsv``, ``regions.tsv``,
``deviations.tsv``); unusable input raises ``ReportFigureError`` naming the figure.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import matplotlib
import numpy as np
import pandas as pd
import pytest

from brainage.exceptions import ReportFigureError
from brainage.reporting import brain_figures as B
from brainage.reporting import figures as F

matplotlib.use("Agg")

N = 12
PATIENT = "schizophrenia"
#: A coarse "MNI" grid (18 × 21 × 12 mm voxels) whose 10³ voxels span x −90…72, y −126…63,
#: z −42…66 mm: every axial cut of the brain maps (z −30…60) falls inside it.
ATLAS_AFFINE = np.array([[18.0, 0, 0, -90], [0, 21.0, 0, -126], [0, 0, 12.0, -42], [0, 0, 0, 1]])


# --------------------------------------------------------------------------- inputs
def _predictions() -> pd.DataFrame:
    """One model's rows of predictions.tsv: 7 out-of-fold controls, 5 patients (fold -1)."""
    rng = np.random.default_rng(0)
    age = np.linspace(22.0, 78.0, N)
    group = np.array(["control"] * 7 + [PATIENT] * 5)
    predicted = age + rng.normal(0, 4, N) + 4.0 * (group == PATIENT)
    corrected = predicted - 0.2 * (age - 50)
    return pd.DataFrame({
        "participant_id": [f"sub-{i + 1:02d}" for i in range(N)],
        "session": "n/a",
        "age": age,
        "sex": ["F", "M"] * (N // 2),
        "site": ["siteA", "siteB"] * (N // 2),
        "group": group,
        "fold": [0, 1, 2, 0, 1, 2, 0, -1, -1, -1, -1, -1],
        "n_models": [1] * 7 + [3] * 5,
        "model": "pidreg",
        "predicted_age": predicted,
        "gap": predicted - age,
        "predicted_age_corrected": corrected,
        "gap_corrected": corrected - age,
    })


def _groups() -> pd.DataFrame:
    """groups.tsv: per site, pooled and all, one site without an estimate (with its note)."""
    return pd.DataFrame({
        "scope": ["all", "site siteA", "site siteB", "pooled"],
        "group": PATIENT,
        "n": pd.array([5, 3, 2, 5], dtype="Int64"),
        "mean_gap": [4.2, 3.9, np.nan, 4.0],
        "se": [1.0, 1.4, np.nan, 1.1],
        "ci_low": [2.2, 1.1, np.nan, 1.8],
        "ci_high": [6.2, 6.7, np.nan, 6.2],
        "note": ["", "", "fewer than 3 patients at this site", ""],
    })


def _metrics() -> dict:
    def unc(mae, r):
        return {"controls": {"uncorrected": {"mae": mae, "mae_ci_low": mae - 1, "mae_ci_high": mae + 1,
                                             "r": r, "n": 7}}}

    return {"primary_model": "pidreg",
            "models": {"pidreg": unc(3.9, 0.91), "ridge": unc(4.6, 0.88),
                       "gpr": {"cost": {"fit_seconds": 1.0}}}}  # no controls: skipped


def _pid() -> dict:
    held_out = {"pair": "anat|func", "n": 40, "U1": 0.42, "U2": 0.05, "R": 0.61, "S": 0.08,
                "U1_ci_low": 0.30, "U1_ci_high": 0.55, "R_ci_low": 0.5, "R_ci_high": 0.7}
    per_fold = [{"fold": k, "pair": "anat|func", "U1": 0.4 + 0.01 * k, "U2": 0.06, "R": 0.6, "S": 0.1}
                for k in range(3)]
    return {"held_out": held_out, "per_fold": per_fold}


def _contributions() -> pd.DataFrame:
    pred = _predictions()
    rng = np.random.default_rng(1)
    frame = pred[["participant_id", "session", "age", "sex", "site", "group", "model", "predicted_age"]].copy()
    frame["baseline_age"] = 50.0
    frame["shap_anat"] = rng.normal(0, 6, N)
    frame["shap_func"] = rng.normal(0, 2, N)
    frame["shap_anat|func"] = frame["predicted_age"] - 50.0 - frame["shap_anat"] - frame["shap_func"]
    return frame


def _regions() -> pd.DataFrame:
    """regions.tsv rows of level 'region' (two atlas regions, one tissue total without an index)."""
    return pd.DataFrame({
        "modality": ["anat", "anat", "anat", "func"],
        "atlas": "HarvardOxford",
        "level": "region",
        "region": ["Left_Frontal_Pole", "Right_Insular_Cortex", "TIV", "Left_Frontal_Pole"],
        "index": pd.array([1, 4, pd.NA, 1], dtype="Int64"),
        "hemisphere": ["left", "right", "bilateral", "left"],
        "lobe": ["frontal", "insula", "n/a", "frontal"],
        "network": "n/a",
        "attribution": [0.8, 0.3, 0.1, 0.5],
        "ci_low": [0.6, 0.2, np.nan, 0.3],
        "ci_high": [1.0, 0.4, np.nan, 0.7],
    })


def _deviations() -> pd.DataFrame:
    """One participant's rows of deviations.tsv."""
    return pd.DataFrame({
        "participant_id": "sub-09",
        "session": "n/a",
        "group": PATIENT,
        "modality": "anat",
        "feature": ["HarvardOxford_1", "HarvardOxford_4", "tiv_ml"],
        "region": ["Left_Frontal_Pole", "Right_Insular_Cortex", "TIV"],
        "z": [-3.1, 0.4, 1.2],
        "flagged": ["true", "false", "false"],  # as read back from the TSV
    })


def _atlas():
    """A 10³ label image with three regions (1, 2, 3) on :data:`ATLAS_AFFINE`."""
    import nibabel as nib

    labels = np.zeros((10, 10, 10), dtype=np.int16)
    labels[1:4, 1:9, 1:9] = 1
    labels[4:7, 1:9, 1:9] = 2
    labels[7:9, 1:9, 1:9] = 3
    return nib.Nifti1Image(labels, ATLAS_AFFINE)


def _region_values() -> pd.DataFrame:
    return pd.DataFrame({"index": [1, 2, 3], "value": [0.8, -0.4, 0.2]})


@pytest.fixture(scope="module")
def data():
    pred = _predictions()
    return {
        "predictions": pred,
        "participants": pred[["participant_id", "session", "age", "sex", "site", "group"]],
        "groups": _groups(),
        "metrics": _metrics(),
        "pid": _pid(),
        "contributions": _contributions(),
        "regions": _regions(),
        "deviations": _deviations(),
        "atlas": _atlas(),
        "region_values": _region_values(),
        "literature": pd.DataFrame({
            "label": [f"this cohort: {PATIENT}", "schizophrenia: Constantinides et al. 2023",
                      "schizophrenia: Point only 2020"],
            "gap": [4.2, 3.55, 2.0], "ci_low": [2.2, 2.91, np.nan], "ci_high": [6.2, 4.19, np.nan],
            "source": ["cohort", "published", "published"], "modality": ["anat", "sMRI", "sMRI"],
        }),
    }


def _svg_text(path) -> str:
    """Parse ``path`` as XML, check the root is <svg>, return the text of its <text> elements."""
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = [" ".join(el.itertext()) for el in root.iter("{http://www.w3.org/2000/svg}text")]
    assert texts, "no <text> element: is svg.fonttype still 'none'?"
    return "\n".join(texts)


# --------------------------------------------------------------------------- every figure draws
#: figure id → (call(data, path), texts the SVG must contain)
FIGURES = {
    "age_distribution": (lambda d, p: F.age_distribution(d["participants"], p),
                         ["Age (years)", "Participants", "sex F (n = 6)", f"{PATIENT} (n = 5)"]),
    "predicted_vs_age": (lambda d, p: F.predicted_vs_age(d["predictions"], p),
                         ["Chronological age (years)", "Predicted age (years)", "Bias-corrected",
                          "out-of-fold controls (n = 7)", f"{PATIENT} (n = 5)"]),
    "gap_vs_age": (lambda d, p: F.gap_vs_age(d["predictions"], p),
                   ["Brain-age gap (years)", "least-squares fit, controls: slope", "control (n = 7)"]),
    "gap_by_group": (lambda d, p: F.gap_by_group(d["predictions"], p),
                     ["Corrected brain-age gap (years)", PATIENT, "n = 5"]),
    "site_forest": (lambda d, p: F.site_forest(d["groups"], p),
                    [f"{PATIENT}: pooled across sites (n = 5)", f"{PATIENT}: siteA (n = 3)",
                     "no estimate: fewer than 3 patients at this site", "+4.20 [+2.20, +6.20]",
                     "Corrected brain-age gap vs controls (years)"]),
    "model_accuracy": (lambda d, p: F.model_accuracy(d["metrics"], p),
                       ["pidreg (primary)", "ridge", "3.90 y (r = 0.91, n = 7)",
                        "MAE of controls, uncorrected (years)"]),
    "literature_comparison": (lambda d, p: F.literature_comparison(d["literature"], p),
                              [f"this cohort: {PATIENT} (anat)", "Constantinides et al.",
                               "+3.55 [+2.91, +4.19]", "+2.00", "published", "Brain-age gap (years)"]),
    "pid_atoms": (lambda d, p: F.pid_atoms(d["pid"]["held_out"], p, per_fold=d["pid"]["per_fold"]),
                  ["Unique anat", "Unique func", "Redundant", "Synergy", "bits", "held-out, n = 40",
                   "per fold (training)"]),
    "contributions_by_group": (lambda d, p: F.contributions_by_group(d["contributions"], p),
                               ["anat × func synergy", "contribution to predicted age (years)",
                                f"{PATIENT} (n = 5)"]),
    "region_brain_map": (lambda d, p: F.region_brain_map(d["region_values"], d["atlas"], p,
                                                         title="anat attribution (years)"),
                         ["anat attribution (years)", "z=-30", "z=60"]),
    "region_bars": (lambda d, p: F.region_bars(d["regions"], p),
                    ["Left Frontal Pole (frontal)", "Right Insular Cortex (insula)", "TIV", "anat", "func",
                     "Attribution (years)"]),
    "participant_position": (lambda d, p: F.participant_position(
        d["predictions"][d["predictions"]["group"] == "control"], d["predictions"].iloc[9], p),
        ["sub-10:", "controls (n = 7)", "central 90 % of controls"]),
    "participant_contributions": (lambda d, p: F.participant_contributions(d["contributions"].iloc[9], p),
                                  ["sub-10", "baseline (mean prediction)", "anat × func synergy",
                                   "predicted age", "chronological age"]),
    "participant_deviations": (lambda d, p: F.participant_deviations(d["deviations"], p),
                               ["Left Frontal Pole", "Right Insular Cortex", "flagged",
                                "z-score vs controls of similar age and sex"]),
}


@pytest.mark.parametrize("figure", list(FIGURES), ids=list(FIGURES))
def test_figure_writes_an_svg_with_its_text(figure, data, tmp_path):
    import matplotlib.pyplot as plt

    call, expected = FIGURES[figure]
    path = tmp_path / f"{figure}.svg"
    out = call(data, path)
    assert out == path and path.is_file()
    text = _svg_text(path)
    for snippet in expected:
        assert snippet in text, f"{snippet!r} not in the SVG text of {figure}"
    raw = path.read_text()
    assert "DejaVuSans-" not in raw  # glyphs as paths would define them: text must stay text
    assert "<dc:date>" not in raw  # no timestamp: the same input writes the same file
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    assert plt.get_fignums() == []  # Figure objects, never pyplot state


def test_every_public_figure_is_tested():
    public = set(F.__all__) - {"group_palette", "region_image"}  # a palette and an image, not figures
    assert public == set(FIGURES)


def test_same_input_writes_the_same_bytes(data, tmp_path):
    # the strip plots' jitter is seeded; no date in the metadata, a fixed hash salt for ids
    for figure in ("gap_by_group", "contributions_by_group", "predicted_vs_age"):
        call, _ = FIGURES[figure]
        first = call(data, tmp_path / f"{figure}-1.svg").read_bytes()
        assert call(data, tmp_path / f"{figure}-2.svg").read_bytes() == first, figure


def test_every_value_is_drawn_over_the_boxes(data, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    drawn = []
    original = Axes.scatter

    def scatter(self, x, y, *args, **kwargs):
        drawn.append((np.asarray(x, float), np.asarray(y, float)))
        return original(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "scatter", scatter)
    F.gap_by_group(data["predictions"], tmp_path / "gap.svg")
    pred = data["predictions"]
    assert len(drawn) == 2  # one strip per group, controls first
    for position, (group, (x, y)) in enumerate(zip(["control", PATIENT], drawn)):
        np.testing.assert_allclose(np.sort(y), np.sort(pred.loc[pred["group"] == group, "gap_corrected"]))
        assert (np.abs(x - position) <= 0.18).all() and np.ptp(x) > 0


# --------------------------------------------------------------------------- unusable input
def _drop(frame, column):
    return frame.drop(columns=column)


def _nan(frame, *columns):
    return frame.assign(**{c: np.nan for c in columns})


def _controls(d):
    return d["predictions"][d["predictions"]["group"] == "control"]


BAD = {
    "age_distribution-missing": (lambda d, p: F.age_distribution(_drop(d["participants"], "sex"), p),
                                 r"age_distribution: input 'participants' is missing column\(s\) 'sex'"),
    "age_distribution-empty": (lambda d, p: F.age_distribution(d["participants"].iloc[:0], p),
                               "age_distribution: input 'participants' has no rows"),
    "age_distribution-nan": (lambda d, p: F.age_distribution(_nan(d["participants"], "age"), p),
                             r"age_distribution: .*finite values in 'age' \(all NaN\)"),
    "age_distribution-not-a-table": (lambda d, p: F.age_distribution(d["participants"].to_dict(), p),
                                     "age_distribution: input 'participants' must be a pandas DataFrame"),
    "predicted_vs_age-missing": (lambda d, p: F.predicted_vs_age(_drop(d["predictions"], "fold"), p),
                                 r"predicted_vs_age: .*missing column\(s\) 'fold'"),
    "predicted_vs_age-nan": (lambda d, p: F.predicted_vs_age(_nan(d["predictions"], "predicted_age"), p),
                             "predicted_vs_age: .*all NaN"),
    "predicted_vs_age-two-models": (
        lambda d, p: F.predicted_vs_age(pd.concat([d["predictions"], d["predictions"].assign(model="ridge")]), p),
        r"predicted_vs_age: .*several models \(pidreg, ridge\)"),
    "gap_vs_age-missing": (lambda d, p: F.gap_vs_age(_drop(d["predictions"], "gap_corrected"), p),
                           r"gap_vs_age: .*missing column\(s\) 'gap_corrected'"),
    "gap_vs_age-empty": (lambda d, p: F.gap_vs_age(d["predictions"].iloc[:0], p), "gap_vs_age: .*no rows"),
    "gap_by_group-missing": (lambda d, p: F.gap_by_group(_drop(d["predictions"], "group"), p),
                             r"gap_by_group: .*missing column\(s\) 'group'"),
    "gap_by_group-nan": (lambda d, p: F.gap_by_group(_nan(d["predictions"], "gap_corrected"), p),
                         "gap_by_group: .*all NaN"),
    "site_forest-missing": (lambda d, p: F.site_forest(_drop(d["groups"], "ci_low"), p),
                            r"site_forest: input 'groups' is missing column\(s\) 'ci_low'"),
    "site_forest-empty": (lambda d, p: F.site_forest(d["groups"].iloc[:0], p), "site_forest: .*no rows"),
    "model_accuracy-no-models": (lambda d, p: F.model_accuracy({"primary_model": "pidreg"}, p),
                                 "model_accuracy: input 'metrics' has no 'models'"),
    "model_accuracy-no-mae": (lambda d, p: F.model_accuracy(
        {"models": {"pidreg": {"controls": {"uncorrected": {"mae": None, "n": 7}}}}}, p),
        r"model_accuracy: .*\['mae'\]"),
    "literature_comparison-missing": (lambda d, p: F.literature_comparison(_drop(d["literature"], "source"), p),
                                      r"literature_comparison: .*missing column\(s\) 'source'"),
    "literature_comparison-nan": (lambda d, p: F.literature_comparison(_nan(d["literature"], "gap"), p),
                                  "literature_comparison: .*all NaN"),
    "pid_atoms-missing": (lambda d, p: F.pid_atoms({"U1": 0.1, "U2": 0.1, "R": 0.1}, p),
                          r"pid_atoms: input 'held_out' is missing atom\(s\) S"),
    "pid_atoms-nan": (lambda d, p: F.pid_atoms({"U1": None, "U2": np.nan, "R": None, "S": None}, p),
                      "pid_atoms: .*no finite atom"),
    "pid_atoms-none": (lambda d, p: F.pid_atoms(None, p), "pid_atoms: input 'held_out' must be a dict"),
    "contributions_by_group-no-terms": (
        lambda d, p: F.contributions_by_group(d["contributions"].drop(columns=["shap_anat", "shap_func",
                                                                               "shap_anat|func"]), p),
        "contributions_by_group: .*no column starting with 'shap_'"),
    "contributions_by_group-nan": (
        lambda d, p: F.contributions_by_group(_nan(d["contributions"], "shap_anat", "shap_func", "shap_anat|func"), p),
        "contributions_by_group: .*only NaN"),
    "region_brain_map-missing": (lambda d, p: F.region_brain_map(_drop(d["region_values"], "value"), d["atlas"], p),
                                 r"region_brain_map: input 'values' is missing column\(s\) 'value'"),
    "region_brain_map-nan": (lambda d, p: F.region_brain_map(_nan(d["region_values"], "value"), d["atlas"], p),
                             "region_brain_map: .*all NaN"),
    "region_brain_map-other-atlas": (
        lambda d, p: F.region_brain_map(pd.DataFrame({"index": [101, 102], "value": [1.0, 2.0]}), d["atlas"], p),
        r"region_brain_map: none of the atlas label\(s\) .*\[101, 102\]"),
    "region_brain_map-duplicate": (
        lambda d, p: F.region_brain_map(pd.DataFrame({"index": [1, 1], "value": [1.0, 2.0]}), d["atlas"], p),
        r"region_brain_map: .*label\(s\) \[1\] more than once"),
    "region_bars-missing": (lambda d, p: F.region_bars(_drop(d["regions"], "modality"), p),
                            r"region_bars: .*missing column\(s\) 'modality'"),
    "region_bars-nan": (lambda d, p: F.region_bars(_nan(d["regions"], "attribution"), p),
                        "region_bars: .*all NaN"),
    "participant_position-missing": (
        lambda d, p: F.participant_position(_drop(_controls(d), "gap_corrected"), d["predictions"].iloc[9], p),
        r"participant_position: input 'controls' is missing column\(s\) 'gap_corrected'"),
    "participant_position-one-control": (
        lambda d, p: F.participant_position(_controls(d).iloc[:1], d["predictions"].iloc[9], p),
        "participant_position: input 'controls' has 1 finite row; need 2 or more"),
    "participant_position-participant-nan": (
        lambda d, p: F.participant_position(_controls(d), d["predictions"].iloc[9].drop("age"), p),
        "participant_position: input 'participant' is missing 'age'"),
    "participant_contributions-missing": (
        lambda d, p: F.participant_contributions(d["contributions"].iloc[9].drop("baseline_age"), p),
        "participant_contributions: input 'row' is missing 'baseline_age'"),
    "participant_contributions-nan": (
        lambda d, p: F.participant_contributions(
            d["contributions"].iloc[9].copy().where(~d["contributions"].columns.str.startswith("shap_")), p),
        "participant_contributions: input 'row' has only NaN 'shap_' values"),
    "participant_deviations-missing": (lambda d, p: F.participant_deviations(_drop(d["deviations"], "z"), p),
                                       r"participant_deviations: .*missing column\(s\) 'z'"),
    "participant_deviations-nan": (lambda d, p: F.participant_deviations(_nan(d["deviations"], "z"), p),
                                   "participant_deviations: .*all NaN"),
    "participant_deviations-two-participants": (
        lambda d, p: F.participant_deviations(pd.concat([d["deviations"],
                                                         d["deviations"].assign(participant_id="sub-10")]), p),
        "participant_deviations: .*several participant_id values"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_unusable_input_raises_naming_the_figure(case, data, tmp_path):
    call, match = BAD[case]
    path = tmp_path / "figure.svg"
    with pytest.raises(ReportFigureError, match=match):
        call(data, path)
    assert list(tmp_path.iterdir()) == []


def test_every_figure_has_an_unusable_input_case():
    assert {case.split("-")[0] for case in BAD} == set(FIGURES)


def test_region_image_paints_each_label(data):
    values = pd.DataFrame({"index": [1, 3, 7], "value": [0.5, np.nan, 2.0]})  # 3: NaN, 7: not in the atlas
    img = B.region_image(values, data["atlas"])
    labels = np.asarray(data["atlas"].dataobj)
    painted = np.asarray(img.dataobj)
    assert painted.dtype == np.float32 and painted.shape == labels.shape
    np.testing.assert_array_equal(img.affine, ATLAS_AFFINE)
    assert (painted[labels == 1] == 0.5).all()
    assert (painted[labels != 1] == 0).all()
    with pytest.raises(ReportFigureError, match=r"region_image: input 'atlas_img' must be 3D"):
        B.region_image(values, type(data["atlas"])(np.zeros((4, 4), np.int16), np.eye(4)))


def test_site_forest_without_any_estimate_lists_the_reasons(tmp_path):
    # groups.tsv of a cohort without patients: one note row, no estimate
    groups = pd.DataFrame({"scope": ["all"], "group": [np.nan], "mean_gap": [np.nan], "ci_low": [np.nan],
                           "ci_high": [np.nan], "note": ["no participants outside the control group"]})
    text = _svg_text(F.site_forest(groups, tmp_path / "forest.svg"))
    assert "no estimate: no participants outside the control group" in text
    assert "n/a: all participants" in text


# --------------------------------------------------------------------------- atomic writes
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_a_failed_save_leaves_no_partial_file(existing, data, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    path = tmp_path / "age.svg"
    if existing:
        path.write_text("<svg>previous figure</svg>")

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "w") as fh:
            fh.write("<?xml version='1.0'?><svg")  # half a file, then the disk is full
        raise OSError("No space left on device")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="No space left"):
        F.age_distribution(data["participants"], path)
    if existing:
        assert path.read_text() == "<svg>previous figure</svg>"
        assert [p.name for p in tmp_path.iterdir()] == ["age.svg"]
    else:
        assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- module
def test_brain_figures_are_importable_from_figures():
    from brainage.reporting.figures import participant_deviations, region_brain_map

    assert region_brain_map is B.region_brain_map
    assert participant_deviations is B.participant_deviations
    for name in F.__all__:
        assert callable(getattr(F, name)), name
        assert name in dir(F)
    assert set(B.__all__) <= set(F.__all__)
    namespace: dict = {}
    exec("from brainage.reporting.figures import *", namespace)
    assert namespace["region_bars"] is B.region_bars and namespace["site_forest"] is F.site_forest
    with pytest.raises(AttributeError, match="has no attribute 'region_map'"):
        _ = F.region_map


def test_group_palette_is_stable_and_greys_the_controls():
    a = F.group_palette(["control", "MCI", "AD", "control"])
    b = F.group_palette(["AD", "MCI", "control"])
    assert a == b == {"control": F.CONTROL_COLOR, "AD": "#0173b2", "MCI": "#de8f05"}
    assert list(a) == ["control", "AD", "MCI"]
    hc = F.group_palette(["HC", "patient"], control_labels=("HC",))
    assert hc["HC"] == F.CONTROL_COLOR and hc["patient"] != F.CONTROL_COLOR


def test_docstring_examples():
    import doctest

    for module in (F, B):
        result = doctest.testmod(module)
        assert result.attempted >= 1 and result.failed == 0, module.__name__


def test_long_literature_labels_wrap_and_keep_the_axes(tmp_path):
    import warnings

    rows = pd.DataFrame({
        "label": ["this cohort: patient (MCI converting to Alzheimer's disease)",
                  "MCI converting to Alzheimer's disease: Gaser et al. 2013"],
        "gap": [6.1, 6.0], "ci_low": [1.7, np.nan], "ci_high": [10.6, np.nan],
        "source": ["cohort", "published"],
        "modality": ["structural MRI + resting-state fMRI", "GM (BrainAGE)"]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        F.literature_comparison(rows, tmp_path / "lit.svg")
    assert not [w for w in caught if "constrained_layout" in str(w.message)]
    text = _svg_text(tmp_path / "lit.svg")
    assert "Gaser et al. 2013" in text and "(MCI converting" in text
