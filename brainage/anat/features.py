"""Group-level structural feature table (one row per participant)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

__all__ = ["collect_structural_features", "write_structural_features"]

logger = logging.getLogger(__name__)

_ATLAS_RE = re.compile(r"^sub-(?P<sub>[A-Za-z0-9]+)_atlas-(?P<atlas>[A-Za-z0-9]+)_desc-gm_morph\.tsv$")


def collect_structural_features(output_dir):
    """Gather every participant's structural features from ``OUTPUT_DIR``.

    Parameters
    ----------
    output_dir : path-like
        The derivatives root written by the structural stage.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``participant_id`` (``sub-XX``), sorted; columns ``gm_ml, wm_ml,
        csf_ml, tiv_ml, ventricles_ml`` then ``<AtlasId>_<index>`` (regional GM volume in
        mL) for every atlas table found. Participants without a tissue table (the stage
        failed or was not run) are absent.

    Raises
    ------
    FileNotFoundError
        If no participant has structural outputs.
    """
    import pandas as pd

    root = Path(output_dir)
    rows = {}
    for tissue in sorted(root.glob("sub-*/anat/sub-*_desc-tissue_morph.tsv")):
        subject = tissue.name.split("_")[0]
        row = pd.read_csv(tissue, sep="\t").iloc[0].to_dict()
        for table in sorted(tissue.parent.glob(f"{subject}_atlas-*_desc-gm_morph.tsv")):
            match = _ATLAS_RE.match(table.name)
            if match is None:
                continue
            regions = pd.read_csv(table, sep="\t")
            atlas = match["atlas"]
            row.update({f"{atlas}_{int(i)}": float(v)
                        for i, v in zip(regions["index"], regions["gm_volume_ml"])})
        rows[subject] = row
    if not rows:
        raise FileNotFoundError(
            f"no structural outputs (sub-*/anat/sub-*_desc-tissue_morph.tsv) in {root}; run "
            f"`brainage BIDS_DIR {root} participant --modalities anat` first"
        )
    frame = pd.DataFrame.from_dict(rows, orient="index").sort_index()
    frame.index.name = "participant_id"
    return frame


def write_structural_features(output_dir):
    """Collect the features and write ``group/desc-anat_features.parquet`` atomically.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    from ..bids import derivative_path
    from ..writing import atomic_path

    frame = collect_structural_features(output_dir)
    path = derivative_path(output_dir, datatype="group", desc="anat", suffix="features",
                           extension=".parquet")
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp)
    return path
