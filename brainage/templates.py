"""The MNI template: nilearn's ICBM152 2009a nonlinear symmetric T1, brain mask and tissue maps.

The one place that loads the template images nilearn ships (nothing is downloaded),
for every stage and the simulator:

:func:`mni152`
    One image as nilearn loads it (``t1``, ``gm``, ``wm`` or ``mask``; 1 mm as
    shipped, or nilearn's own resampling to another whole-millimetre grid).
:func:`template`
    T1, brain mask and GM, WM and CSF maps on an isotropic grid (the structural
    stage registers to it and writes its MNI-space outputs on it).
:func:`mni_grid`
    T1 and brain mask on a grid snapped to the template's bounding box (the
    functional stage's output grid).

All three are cached per process.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["mni152", "mni_grid", "template"]

#: nilearn's loader of each template image.
_LOADERS = {
    "t1": "load_mni152_template",
    "gm": "load_mni152_gm_template",
    "wm": "load_mni152_wm_template",
    "mask": "load_mni152_brain_mask",
}


@functools.lru_cache(maxsize=16)
def mni152(name: str, resolution: int = 1):
    """Load one MNI152 2009a image that nilearn ships, as nilearn loads it (cached).

    Parameters
    ----------
    name : {"t1", "gm", "wm", "mask"}
        The brain-extracted T1 (scaled to 0–1), the GM or WM probability map, or
        the brain mask.
    resolution : int
        Voxel size in mm: 1 is the shipped 197 x 233 x 189 grid; other values are
        nilearn's resampling.

    Returns
    -------
    nibabel.Nifti1Image
        Shared by every caller: do not modify its data in place.
    """
    from nilearn import datasets

    return getattr(datasets, _LOADERS[name])(resolution=resolution)


@functools.lru_cache(maxsize=8)
def template(resolution: float) -> dict:
    """Load the nilearn MNI152 2009a template on a grid of ``resolution`` mm.

    Parameters
    ----------
    resolution : float
        Voxel size in mm (1 gives the shipped 197 x 233 x 189 grid).

    Returns
    -------
    dict
        ``t1``, ``mask``, ``gm``, ``wm``, ``csf`` as nibabel images (float32) on the
        same grid; ``csf`` is the brain mask minus GM and WM (clipped at 0).
    """
    import nibabel as nib

    res = float(resolution)
    out = {}
    if res.is_integer():
        for name in ("t1", "gm", "wm", "mask"):
            img = mni152(name, int(res))
            out[name] = nib.Nifti1Image(np.array(img.dataobj, dtype=np.float32), img.affine)
    else:
        from nilearn.image import resample_img

        ref = mni152("t1")
        shape = tuple(int(np.ceil(s / res)) for s in ref.shape)
        affine = ref.affine.copy()
        affine[:3, :3] = np.diag([res] * 3)
        for name in ("t1", "gm", "wm", "mask"):
            img = resample_img(
                mni152(name), target_affine=affine, target_shape=shape,
                interpolation="continuous", force_resample=True, copy_header=True,
            )
            out[name] = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), affine)
        out["mask"] = nib.Nifti1Image((out["mask"].get_fdata() > 0.5).astype(np.float32), affine)
    t1 = out["t1"]
    g = out["gm"].get_fdata(dtype=np.float32)
    w = out["wm"].get_fdata(dtype=np.float32)
    m = out["mask"].get_fdata(dtype=np.float32)
    total = g + w
    scale = np.where(total > 1, 1 / np.maximum(total, 1e-6), 1.0)
    g, w = g * scale, w * scale
    csf = np.clip(m - g - w, 0, 1) * (m > 0)
    out["gm"] = nib.Nifti1Image(g, t1.affine)
    out["wm"] = nib.Nifti1Image(w, t1.affine)
    out["csf"] = nib.Nifti1Image(csf.astype(np.float32), t1.affine)
    return out


@functools.lru_cache(maxsize=8)
def mni_grid(resolution: float):
    """Load the MNI152NLin2009aSym template that nilearn ships onto a ``resolution`` mm grid.

    The grid starts at the template's corner and covers its bounding box.

    Returns
    -------
    template : nibabel.Nifti1Image
        Brain-extracted T1 template resampled to the grid.
    mask : nibabel.Nifti1Image
        Its brain mask on the same grid.

    Both are shared by every caller (cached): do not modify their data in place.
    """
    from nilearn.image import resample_img

    t1 = mni152("t1")
    target = np.diag([resolution] * 3 + [1.0])
    # the template's bounding box, snapped to the new grid
    corner = t1.affine[:3, 3]
    target[:3, 3] = corner
    extent = np.array(t1.shape[:3]) * np.abs(np.diag(t1.affine)[:3])
    shape = tuple(int(np.ceil(e / resolution)) for e in extent)
    template = resample_img(t1, target_affine=target, target_shape=shape,
                            interpolation="continuous", force_resample=True, copy_header=True)
    mask = resample_img(mni152("mask"), target_affine=target,
                        target_shape=shape, interpolation="nearest", force_resample=True,
                        copy_header=True)
    return template, mask
