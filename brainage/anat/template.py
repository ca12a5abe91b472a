"""The MNI template: nilearn's ICBM152 2009a nonlinear symmetric T1 and its tissue maps.

:func:`template` loads the brain-extracted T1 (1 mm as shipped), its brain mask and
its GM and WM probability maps, on any isotropic grid; the CSF map is the brain mask
minus GM and WM. Nothing is downloaded.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["template"]


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
    from nilearn import datasets

    res = float(resolution)
    loaders = {
        "t1": datasets.load_mni152_template,
        "gm": datasets.load_mni152_gm_template,
        "wm": datasets.load_mni152_wm_template,
        "mask": datasets.load_mni152_brain_mask,
    }
    out = {}
    if res.is_integer():
        for name, load in loaders.items():
            img = load(resolution=int(res))
            out[name] = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    else:
        from nilearn.image import resample_img

        ref = datasets.load_mni152_template(resolution=1)
        shape = tuple(int(np.ceil(s / res)) for s in ref.shape)
        affine = ref.affine.copy()
        affine[:3, :3] = np.diag([res] * 3)
        for name, load in loaders.items():
            img = resample_img(
                load(resolution=1), target_affine=affine, target_shape=shape,
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
