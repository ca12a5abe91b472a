"""Parcel time series (nilearn maskers) and connectivity matrices (nilearn.connectome).

Volumetric atlases of the registry are read with :class:`nilearn.maskers.NiftiLabelsMasker`;
coordinate sets (Power 2011, Seitzman 2018, …) with
:class:`nilearn.maskers.NiftiSpheresMasker`. Connectivity estimators fitted on a group
(tangent space) belong to the group level and are not computed here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["connectivity", "fisher_z", "parcel_signals"]


def parcel_signals(img, atlas, mask_img) -> pd.DataFrame:
    """Mean raw signal of every atlas region, shape (T, n_regions).

    Parameters
    ----------
    img : nibabel.Nifti1Image
        4D BOLD in MNI space.
    atlas : brainage.atlases.Atlas
        Volume atlas or coordinate set.
    mask_img : nibabel.Nifti1Image
        Brain mask ∩ BOLD coverage on the BOLD grid.

    Returns
    -------
    pandas.DataFrame
        One column per atlas region (named by the atlas' ``name`` column); regions
        with no voxel in the mask are all-NaN.
    """
    from nilearn.maskers import NiftiLabelsMasker, NiftiSpheresMasker

    names = atlas.labels["name"].astype(str).tolist()
    n_t = img.shape[3]
    if atlas.kind == "coords":
        radius = float(atlas.radius_mm or 5.0)
        masker = NiftiSpheresMasker(atlas.coords.tolist(), radius=radius, allow_overlap=True,
                                    standardize=None,
                                    mask_img=mask_img)
        values = masker.fit_transform(img)
        return pd.DataFrame(values, columns=names)
    labels = atlas.resample_to(img)
    lab = np.asarray(labels.dataobj) * (np.asarray(mask_img.dataobj) > 0)
    import nibabel as nib

    labels = nib.Nifti1Image(lab.astype(np.int32), img.affine)
    masker = NiftiLabelsMasker(labels, strategy="mean", standardize=None)
    values = masker.fit_transform(img)
    present = [v for k, v in masker.region_ids_.items() if k != "background"]
    out = pd.DataFrame(np.full((n_t, len(names)), np.nan), columns=names)
    index_of = {int(v): i for i, v in enumerate(atlas.labels["index"].astype(int))}
    for j, value in enumerate(present):
        i = index_of.get(int(value))
        if i is not None:
            out.iloc[:, i] = values[:, j]
    return out


def fisher_z(r: np.ndarray) -> np.ndarray:
    """Fisher z-transform, diagonal set to 0 (it would be infinite)."""
    r = np.array(r, dtype=float)
    z = np.arctanh(np.clip(r, -0.999999, 0.999999))
    np.fill_diagonal(z, 0.0)
    return z


def connectivity(cleaned: pd.DataFrame, kind: str = "correlation") -> pd.DataFrame:
    """Compute the connectivity matrix of cleaned parcel series (rows: kept volumes).

    Parameters
    ----------
    cleaned : pandas.DataFrame
        Cleaned series; all-NaN columns (regions outside the field of view) give
        NaN rows and columns.
    kind : {"correlation", "partial correlation"}
        :class:`nilearn.connectome.ConnectivityMeasure` kind: ``correlation`` is the
        sample (Pearson) correlation (empirical covariance); ``partial correlation``
        uses the Ledoit-Wolf shrunk covariance.

    Returns
    -------
    pandas.DataFrame
        Square, indexed and labelled by region name.
    """
    from nilearn.connectome import ConnectivityMeasure
    from sklearn.covariance import EmpiricalCovariance, LedoitWolf

    names = list(cleaned.columns)
    valid = ~cleaned.isna().any(axis=0).to_numpy()
    out = np.full((len(names), len(names)), np.nan)
    if valid.sum() >= 2:
        # Pearson correlation is the sample correlation. nilearn's default estimator is
        # Ledoit-Wolf, which shrinks every correlation towards 0 by a data-dependent amount
        # (with ~100 volumes and ~100 regions: r 0.93 came out 0.83) and biased the age
        # effect on connectivity (docs/func.md). Partial correlation needs an invertible
        # covariance when regions are about as many as volumes, so it keeps Ledoit-Wolf.
        estimator = (EmpiricalCovariance(store_precision=False) if kind == "correlation"
                     else LedoitWolf(store_precision=False))
        measure = ConnectivityMeasure(cov_estimator=estimator, kind=kind,
                                      standardize="zscore_sample")
        mat = measure.fit_transform([cleaned.loc[:, valid].to_numpy()])[0]
        out[np.ix_(valid, valid)] = mat
    frame = pd.DataFrame(out, index=names, columns=names)
    frame.index.name = "name"
    return frame
