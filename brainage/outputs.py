"""Names of the structural stage's outputs, and finding them for downstream stages.

Below both stage packages (:mod:`brainage.anat` writes these files;
:mod:`brainage.func`, :mod:`brainage.cohort` and the group level read them), so
that no stage imports another.

The structural stage writes, per participant (``res`` is the MNI grid, see
:func:`res_label`)::

    sub-XX/anat/sub-XX_desc-preproc_T1w.nii.gz                 native, N4-corrected, RAS
    sub-XX/anat/sub-XX_desc-brain_mask.nii.gz                  native brain mask
    sub-XX/anat/sub-XX_label-{GM,WM,CSF}_probseg.nii.gz        native tissue probabilities
    sub-XX/anat/sub-XX_space-MNI152NLin2009aSym_res-2_desc-preproc_T1w.nii.gz
    sub-XX/anat/sub-XX_space-MNI152NLin2009aSym_res-2_desc-brain_mask.nii.gz
    sub-XX/anat/sub-XX_space-MNI152NLin2009aSym_res-2_label-{GM,WM,CSF}_probseg.nii.gz
    sub-XX/anat/sub-XX_space-MNI152NLin2009aSym_res-2_label-GM_desc-modulated_probseg.nii.gz
    sub-XX/anat/sub-XX_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.h5
    sub-XX/anat/sub-XX_from-MNI152NLin2009aSym_to-T1w_mode-image_xfm.h5
    sub-XX/anat/sub-XX_atlas-<AtlasId>_desc-gm_morph.tsv
    sub-XX/anat/sub-XX_desc-tissue_morph.tsv
    sub-XX/anat/sub-XX_desc-qc_anat.json
    sub-XX/figures/sub-XX_desc-mosaic_T1w.svg

The transforms are ANTs composite transforms (HDF5, as written by
``antsRegistration --write-composite-transform``); :func:`ants.apply_transforms`
reads them directly, e.g. a BOLD reference already in T1w space goes to MNI with
``ants.apply_transforms(fixed=template, moving=img, transformlist=[str(out.xfm_t1w_to_mni)])``.

Examples
--------
>>> res_label(1.5)
'1p5'
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from .bids import TEMPLATE_SPACE, derivative_path
from .exceptions import AnatOutputsMissingError

__all__ = ["AnatOutputs", "anat_outputs", "atlas_entities", "output_entities", "res_label"]


def res_label(resolution: float) -> str:
    """Return the ``res-`` entity value of an MNI grid: ``2.0 -> "2"``, ``1.5 -> "1p5"``.

    Parameters
    ----------
    resolution : float
        Voxel size in mm.

    Returns
    -------
    str
    """
    value = float(resolution)
    if value.is_integer():
        return str(int(value))
    return f"{value:g}".replace(".", "p")


def output_entities(resolution: float = 2.0) -> dict[str, dict]:
    """BIDS entities of every structural output, keyed by :class:`AnatOutputs` field.

    Parameters
    ----------
    resolution : float
        The MNI grid of the tissue maps (``anat.output_resolution``).

    Returns
    -------
    dict
        ``{field: entities}``; pass the entities to ``derivative_path(root, subject=…, **e)``.
    """
    res = res_label(resolution)
    mni = {"datatype": "anat", "space": TEMPLATE_SPACE, "res": res}
    nii = {"extension": ".nii.gz"}
    ents = {
        "t1w": {"datatype": "anat", "desc": "preproc", "suffix": "T1w", **nii},
        "brain_mask": {"datatype": "anat", "desc": "brain", "suffix": "mask", **nii},
        "gm": {"datatype": "anat", "label": "GM", "suffix": "probseg", **nii},
        "wm": {"datatype": "anat", "label": "WM", "suffix": "probseg", **nii},
        "csf": {"datatype": "anat", "label": "CSF", "suffix": "probseg", **nii},
        "t1w_mni": {**mni, "desc": "preproc", "suffix": "T1w", **nii},
        "brain_mask_mni": {**mni, "desc": "brain", "suffix": "mask", **nii},
        "gm_mni": {**mni, "label": "GM", "suffix": "probseg", **nii},
        "wm_mni": {**mni, "label": "WM", "suffix": "probseg", **nii},
        "csf_mni": {**mni, "label": "CSF", "suffix": "probseg", **nii},
        "gm_modulated_mni": {**mni, "label": "GM", "desc": "modulated", "suffix": "probseg", **nii},
        "xfm_t1w_to_mni": {
            "datatype": "anat", "from_": "T1w", "to": TEMPLATE_SPACE, "mode": "image",
            "suffix": "xfm", "extension": ".h5",
        },
        "xfm_mni_to_t1w": {
            "datatype": "anat", "from_": TEMPLATE_SPACE, "to": "T1w", "mode": "image",
            "suffix": "xfm", "extension": ".h5",
        },
        "tissue_morph": {"datatype": "anat", "desc": "tissue", "suffix": "morph",
                         "extension": ".tsv"},
        "qc": {"datatype": "anat", "desc": "qc", "suffix": "anat", "extension": ".json"},
        "mosaic": {"datatype": "figures", "desc": "mosaic", "suffix": "T1w", "extension": ".svg"},
    }
    return ents


def atlas_entities(atlas_id: str) -> dict:
    """BIDS entities of the regional GM volume table of one atlas."""
    return {"datatype": "anat", "atlas": atlas_id, "desc": "gm", "suffix": "morph",
            "extension": ".tsv"}


@dataclass(frozen=True)
class AnatOutputs:
    """Paths of one participant's structural outputs (see the module docstring)."""

    subject: str
    resolution: float
    t1w: Path
    brain_mask: Path
    gm: Path
    wm: Path
    csf: Path
    t1w_mni: Path
    brain_mask_mni: Path
    gm_mni: Path
    wm_mni: Path
    csf_mni: Path
    gm_modulated_mni: Path
    xfm_t1w_to_mni: Path
    xfm_mni_to_t1w: Path
    tissue_morph: Path
    qc: Path
    mosaic: Path

    def paths(self) -> dict[str, Path]:
        """All file paths by field name."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("subject", "resolution")
        }

    def atlas_table(self, atlas_id: str) -> Path:
        """Path of the regional GM volume table ``sub-XX_atlas-<id>_desc-gm_morph.tsv``."""
        root = self.t1w.parents[2]
        return derivative_path(root, subject=self.subject, **atlas_entities(atlas_id))


def anat_outputs(
    output_dir, subject: str, *, resolution: float = 2.0, check: bool = True
) -> AnatOutputs:
    """Find a participant's structural outputs in ``OUTPUT_DIR``.

    Parameters
    ----------
    output_dir : path-like
        The derivatives root (``OUTPUT_DIR``).
    subject : str
        Participant label, with or without ``sub-``.
    resolution : float
        MNI grid of the tissue maps (``config.anat.output_resolution``).
    check : bool
        Raise if the outputs needed downstream are missing.

    Returns
    -------
    AnatOutputs

    Raises
    ------
    AnatOutputsMissingError
        The structural stage has not run (or failed) for this participant; the message says
        which file is missing and how to produce it.

    Examples
    --------
    >>> out = anat_outputs("/out", "01", check=False)
    >>> out.xfm_t1w_to_mni.name
    'sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.h5'
    """
    subject = str(subject).removeprefix("sub-")
    root = Path(output_dir)
    paths = {
        name: derivative_path(root, subject=subject, **ents)
        for name, ents in output_entities(resolution).items()
    }
    out = AnatOutputs(subject=subject, resolution=float(resolution), **paths)
    if check:
        needed = ("t1w", "brain_mask", "gm", "wm", "csf", "xfm_t1w_to_mni", "xfm_mni_to_t1w",
                  "gm_mni", "brain_mask_mni")
        missing = [getattr(out, n) for n in needed if not getattr(out, n).is_file()]
        if missing:
            raise AnatOutputsMissingError(
                f"structural outputs of sub-{subject} are missing in {root} (first: "
                f"{missing[0].relative_to(root)}); run `brainage BIDS_DIR {root} participant "
                f"--participant-label {subject} --modalities anat` first (or check "
                f"sub-{subject}/log/ for why it failed)"
            )
    return out
