"""Unit tests of the functional pipeline's building blocks (tiny synthetic data)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage.exceptions import InputFileError
from brainage.func import confounds as cf
from brainage.func.features import connectivity, fisher_z
from brainage.func.load import load_bold, read_sidecar
from brainage.func.maps import alff_falff, reho, seed_map
from brainage.func.motion import (
    affine_to_params,
    dvars,
    estimate_motion,
    framewise_displacement,
    params_to_affine,
)


def _bold(path, data, tr=2.0, sidecar=None, affine=None):
    affine = np.diag([4.0, 4.0, 4.0, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(data.astype(np.float32), affine)
    img.header.set_xyzt_units("mm", "sec")
    zooms = list(img.header.get_zooms())
    if len(zooms) == 4:
        zooms[3] = tr
        img.header.set_zooms(zooms)
    nib.save(img, path)
    side = None
    if sidecar is not None:
        side = path.with_name(path.name.replace(".nii.gz", ".json"))
        side.write_text(sidecar if isinstance(sidecar, str) else json.dumps(sidecar))
    return path, side


@pytest.fixture
def bold_data(rng):
    return rng.uniform(100, 200, size=(16, 17, 18, 30))


# --------------------------------------------------------------------------- load
def test_load_reads_tr_from_sidecar_and_drops_dummy_scans(tmp_path, bold_data):
    path, side = _bold(tmp_path / "sub-01_task-rest_bold.nii.gz", bold_data, tr=9.0,
                       sidecar={"RepetitionTime": 1.5})
    loaded = load_bold(path, side, dummy_scans=4, min_volumes=20)
    assert loaded.tr == 1.5
    assert loaded.img.shape[3] == 26
    assert loaded.n_total == 30
    np.testing.assert_allclose(np.asarray(loaded.img.dataobj)[..., 0], bold_data[..., 4],
                               rtol=1e-5)
    assert loaded.warnings == []


def test_load_falls_back_to_header_tr_with_warning(tmp_path, bold_data, caplog):
    path, _ = _bold(tmp_path / "sub-01_task-rest_bold.nii.gz", bold_data, tr=2.5)
    loaded = load_bold(path, None, min_volumes=20)
    assert loaded.tr == 2.5
    assert "no RepetitionTime in the sidecar" in loaded.warnings[0]
    assert "NIfTI header" in caplog.text


def test_3d_image_as_bold_is_refused(tmp_path, bold_data):
    path, side = _bold(tmp_path / "sub-01_task-rest_bold.nii.gz", bold_data[..., 0],
                       sidecar={"RepetitionTime": 2.0})
    with pytest.raises(InputFileError, match=r"sub-01_task-rest_bold.nii.gz.*3D.*expected 4D"):
        load_bold(path, side)


def test_no_tr_anywhere_is_refused(tmp_path, bold_data):
    path, side = _bold(tmp_path / "sub-01_task-rest_bold.nii.gz", bold_data, tr=0.0,
                       sidecar={"EchoTime": 0.03})
    with pytest.raises(InputFileError, match="no repetition time.*Add RepetitionTime"):
        load_bold(path, side, min_volumes=20)


def test_too_few_volumes_is_refused(tmp_path, bold_data):
    path, side = _bold(tmp_path / "sub-01_task-rest_bold.nii.gz", bold_data,
                       sidecar={"RepetitionTime": 2.0})
    with pytest.raises(InputFileError, match=r"only 30 volumes \(27 after dropping 3.*at least 28"):
        load_bold(path, side, dummy_scans=3, min_volumes=28)


def test_nan_voxels_are_refused(tmp_path, bold_data):
    bold_data[3, 4, 5, 6] = np.nan
    path, side = _bold(tmp_path / "sub-01_task-rest_bold.nii.gz", bold_data,
                       sidecar={"RepetitionTime": 2.0})
    with pytest.raises(InputFileError, match="sub-01_task-rest_bold.nii.gz.*(NaN|finite)"):
        load_bold(path, side, min_volumes=20)


def test_invalid_json_sidecar_is_refused(tmp_path, bold_data):
    path, side = _bold(tmp_path / "sub-01_task-rest_bold.nii.gz", bold_data,
                       sidecar='{"RepetitionTime": 2.0,,}')
    with pytest.raises(InputFileError, match="sub-01_task-rest_bold.json: the sidecar is not "
                                             "valid JSON"):
        read_sidecar(side)
    with pytest.raises(InputFileError, match="not valid JSON"):
        load_bold(path, side, min_volumes=20)


def test_sidecar_tr_in_milliseconds_is_refused(tmp_path, bold_data):
    path, side = _bold(tmp_path / "sub-01_task-rest_bold.nii.gz", bold_data,
                       sidecar={"RepetitionTime": 2000})
    with pytest.raises(InputFileError, match="milliseconds must be divided by 1000"):
        load_bold(path, side, min_volumes=20)


def test_bold_fov_outside_the_brain_is_refused(tmp_path):
    from brainage.func.registration import check_overlap

    brain = np.zeros((20, 22, 24), np.uint8)
    brain[5:15, 5:17, 5:19] = 1
    brain_img = nib.Nifti1Image(brain, np.diag([4.0, 4.0, 4.0, 1.0]))
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    bold = nib.Nifti1Image(np.ones((20, 22, 24, 3), np.float32), affine)
    assert check_overlap(bold, brain_img, "bold.nii.gz") == 1.0
    far = affine.copy()
    far[:3, 3] = [400.0, 0.0, 0.0]
    bold_far = nib.Nifti1Image(np.ones((20, 22, 24, 3), np.float32), far)
    with pytest.raises(InputFileError, match="bold.nii.gz: the BOLD field of view covers only 0%"):
        check_overlap(bold_far, brain_img, "bold.nii.gz")


# --------------------------------------------------------------------------- motion
def test_params_affine_round_trip():
    p = np.array([1.0, -2.0, 0.5, 0.02, -0.01, 0.03])
    np.testing.assert_allclose(affine_to_params(params_to_affine(p)), p, atol=1e-12)


def test_framewise_displacement_power():
    p = np.zeros((4, 6))
    p[1, 0] = 0.2
    p[2, 0] = 0.2
    p[2, 5] = 0.01  # 0.01 rad on a 50 mm sphere = 0.5 mm
    p[3, 1] = -0.3
    np.testing.assert_allclose(framewise_displacement(p), [0.0, 0.2, 0.5, 1.0], atol=1e-12)


def test_dvars_is_rms_of_the_volume_difference():
    data = np.zeros((3, 4))
    data[1] = 2.0
    data[2] = [2.0, 2.0, 4.0, 4.0]
    np.testing.assert_allclose(dvars(data), [0.0, 2.0, np.sqrt(2.0)])


@pytest.fixture(scope="module")
def moving_head():
    """An MNI template at 6 mm seen in 8 volumes with a known rigid motion."""
    from nilearn.datasets import load_mni152_template
    from nilearn.image import resample_img

    rng = np.random.default_rng(7)
    t1 = load_mni152_template(resolution=2)
    truth = np.cumsum(rng.normal(0, [0.8, 0.8, 0.8, 0.012, 0.012, 0.012], (8, 6)), 0)
    truth -= truth[0]
    grid = np.diag([6.0, 6.0, 6.0, 1.0])
    grid[:3, 3] = [-96.0, -132.0, -78.0]
    vols = []
    for p in truth:
        moved = resample_img(t1, target_affine=np.linalg.inv(params_to_affine(p)) @ grid,
                             target_shape=(33, 39, 32), interpolation="continuous",
                             force_resample=True, copy_header=True).get_fdata()
        vols.append(moved + rng.normal(0, 0.01 * moved.max(), moved.shape))
    img = nib.Nifti1Image(np.stack(vols, -1).astype(np.float32), grid)
    return img, truth


@pytest.mark.slow
def test_motion_estimates_match_the_known_motion(moving_head, tmp_path):
    img, truth = moving_head
    result = estimate_motion(img, reference_index=0, iterations=20, work_dir=tmp_path)
    assert result.reference_index == 0
    # displacement error of points on a 50 mm sphere around the brain's centre
    # (ANTs samples voxels at random, so single parameters trade off a little)
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(200, 3))
    pts = 50 * pts / np.linalg.norm(pts, axis=1, keepdims=True) + [0.0, -18.0, 18.0]
    pts = np.c_[pts, np.ones(200)]
    errors = [
        np.sqrt(np.mean(np.sum(((params_to_affine(e) - params_to_affine(t)) @ pts.T)[:3] ** 2,
                               axis=0)))
        for e, t in zip(result.params, truth)
    ]
    moved = [np.sqrt(np.mean(np.sum(((params_to_affine(t) - np.eye(4)) @ pts.T)[:3] ** 2, 0)))
             for t in truth]
    assert max(moved) > 2.5  # the head moves by millimetres
    assert max(errors) < 0.8  # mm, on 6 mm voxels (about a tenth of a voxel)
    assert np.mean(errors) < 0.5
    fd_true, fd_est = framewise_displacement(truth), framewise_displacement(result.params)
    assert np.corrcoef(fd_true[1:], fd_est[1:])[0, 1] > 0.8



@pytest.mark.slow
def test_motion_is_reproducible_and_parallel_chains_agree(moving_head, tmp_path):
    """A fixed ANTs seed gives the same estimates on a rerun; 2 worker chains match 1."""
    img, _ = moving_head
    first = estimate_motion(img, reference_index=0, work_dir=tmp_path / "a")
    again = estimate_motion(img, reference_index=0, work_dir=tmp_path / "b")
    np.testing.assert_array_equal(first.params, again.params)
    # without start-from-previous each volume is registered alone: splitting the
    # volumes over 2 processes gives the same estimates
    two = estimate_motion(img, reference_index=0, n_jobs=2, work_dir=tmp_path / "c")
    np.testing.assert_allclose(two.params, first.params, atol=1e-6)
    assert all(p is not None for p in two.transforms)


# --------------------------------------------------------------------------- confounds
def test_expand_24_values():
    base = pd.DataFrame({"trans_x": [1.0, 3.0, 2.0]})
    out = cf.expand_24(base)
    np.testing.assert_allclose(out["trans_x_derivative1"], [0.0, 2.0, -1.0])
    np.testing.assert_allclose(out["trans_x_power2"], [1.0, 9.0, 4.0])
    np.testing.assert_allclose(out["trans_x_derivative1_power2"], [0.0, 4.0, 1.0])


def test_regressors_motion_models_and_tissue():
    params = pd.DataFrame(np.ones((5, 6)), columns=cf.MOTION_COLUMNS)
    table = cf.expand_24(params).assign(white_matter=1.0, csf=2.0, global_signal=3.0,
                                        framewise_displacement=0.0)
    assert cf.regressors(table, global_signal=False).shape[1] == 26
    six = cf.regressors(table, global_signal=True, motion_model=6)
    assert list(six.columns) == [*cf.MOTION_COLUMNS, "white_matter", "csf", "global_signal"]
    assert cf.regressors(table, global_signal=False, motion_model=12).shape[1] == 14


def test_band_dof():
    # 100 volumes, TR 2 s (Nyquist 0.25 Hz), band 0.01-0.06 Hz: 100 * 0.05 / 0.25 = 20
    assert cf.band_dof(100, 2.0, 0.01, 0.06) == pytest.approx(20.0)


def test_tissue_signal_uses_only_confident_voxels(rng):
    data = rng.normal(size=(10, 10, 10, 5))
    prob = np.zeros((10, 10, 10))
    prob[2:8, 2:8, 2:8] = 1.0
    data[2:8, 2:8, 2:8] = np.arange(5.0)
    np.testing.assert_allclose(cf.tissue_signal(data, prob), np.arange(5.0))


def test_tissue_signal_when_erosion_empties_the_mask(rng):
    """A one-voxel-thin CSF sheet: no signal without fallback, the uneroded mean with it."""
    data = rng.normal(size=(10, 10, 10, 5))
    prob = np.zeros((10, 10, 10))
    prob[2:8, 2:8, 5] = 1.0
    sheet = data[2:8, 2:8, 5].reshape(-1, 5).mean(axis=0)
    assert cf.tissue_signal(data, prob, fallback=False) is None
    assert not cf.tissue_mask_eroded(prob)
    # the default falls back to the uneroded mask (and the stage records it in QC)
    np.testing.assert_allclose(cf.tissue_signal(data, prob), sheet)
    np.testing.assert_allclose(cf.tissue_signal(data, prob, erode=0), sheet)


def test_motion_outliers_threshold():
    assert cf.motion_outliers(np.array([0.0, 0.6, 0.5, 0.1]), 0.5).tolist() == [
        False, True, False, False]


# --------------------------------------------------------------------------- maps
def test_reho_identical_neighbours_is_one_and_noise_is_low(rng):
    same = np.broadcast_to(rng.standard_normal(40), (3, 3, 3, 40)).copy()
    assert reho(same, np.ones((3, 3, 3), bool))[1, 1, 1] == pytest.approx(1.0)
    noise = rng.standard_normal((5, 6, 7, 60))
    w = reho(noise, np.ones((5, 6, 7), bool))
    assert w[2, 3, 3] < 0.1


def test_reho_matches_kendalls_w_by_hand(rng):
    from scipy.stats import rankdata

    y = rng.standard_normal((5, 6, 7, 50))
    w = reho(y, np.ones((5, 6, 7), bool))
    block = y[1:4, 2:5, 2:5].reshape(27, 50)
    s = rankdata(block, axis=1).sum(0)
    n, k = 50, 27
    expected = (np.sum(s**2) - n * (k * (n + 1) / 2) ** 2) / (k**2 * (n**3 - n) / 12)
    assert w[2, 3, 3] == pytest.approx(expected, rel=1e-5)


def test_reho_leaves_out_neighbours_outside_the_mask(rng):
    y = rng.standard_normal((3, 3, 3, 30))
    y[1, 1, 1] = y[0, 1, 1]
    mask = np.zeros((3, 3, 3), bool)
    mask[0, 1, 1] = mask[1, 1, 1] = True
    assert reho(y, mask)[1, 1, 1] == pytest.approx(1.0)



def test_vectorised_reho_equals_the_per_voxel_definition(rng):
    """Every voxel of an irregular mask (edges, holes) against Kendall's W computed alone."""
    from scipy.stats import rankdata

    y = rng.standard_normal((6, 5, 7, 30)) + rng.standard_normal(30)  # shared part: W > 0
    mask = rng.uniform(size=(6, 5, 7)) > 0.3
    w = reho(y, mask)
    for x, yy, z in np.argwhere(mask):
        near = [(a, b, c) for a in range(x - 1, x + 2) for b in range(yy - 1, yy + 2)
                for c in range(z - 1, z + 2)
                if 0 <= a < 6 and 0 <= b < 5 and 0 <= c < 7 and mask[a, b, c]]
        ranks = rankdata(np.array([y[p] for p in near]), axis=1)
        k, n = ranks.shape
        s = ranks.sum(axis=0)
        expected = 12 * np.sum((s - s.mean()) ** 2) / (k**2 * (n**3 - n))
        assert w[x, yy, z] == pytest.approx(min(expected, 1.0), abs=1e-5)
    assert not w[~mask].any()

def test_alff_and_falff_of_a_sinusoid():
    tr, n = 2.0, 200
    t = np.arange(n) * tr
    inside = 3.0 * np.sin(2 * np.pi * 0.05 * t)
    outside = 3.0 * np.sin(2 * np.pi * 0.2 * t)
    alff, falff = alff_falff(np.stack([inside, outside], 1), tr, (0.01, 0.08))
    assert alff[0] > 10 * alff[1]
    assert falff[0] > 0.9
    assert falff[1] < 0.1


def test_seed_map_is_fisher_z_of_correlation(rng):
    seed = rng.standard_normal(100)
    series = np.stack([seed, -seed, rng.standard_normal(100)], 1)
    z = seed_map(series, seed)
    assert z[0] > 5 and z[1] < -5
    assert abs(z[2]) < 0.3



def test_carpet_mask_is_thinned_evenly_inside_the_mask(rng):
    from brainage.func.qc import _carpet_mask

    mask = rng.uniform(size=(7, 8, 9)) > 0.4
    img = nib.Nifti1Image(mask.astype(np.uint8), np.eye(4))
    assert _carpet_mask(img, 10_000) is img
    thin = np.asarray(_carpet_mask(img, 50).dataobj) > 0
    assert thin.sum() == 50 and not (thin & ~mask).any()
    # evenly spread over the mask's voxels (first and last kept)
    where = np.flatnonzero(mask.ravel())
    assert thin.ravel()[where[0]] and thin.ravel()[where[-1]]

# --------------------------------------------------------------------------- connectivity
def test_connectivity_keeps_missing_regions_as_nan(rng):
    x = rng.standard_normal((50, 3))
    x[:, 1] = x[:, 0] + 0.1 * rng.standard_normal(50)
    frame = pd.DataFrame(x, columns=["a", "b", "c"]).assign(d=np.nan)
    mat = connectivity(frame)
    assert mat.loc["a", "b"] > 0.9
    assert mat.loc["a", "a"] == pytest.approx(1.0)
    assert mat["d"].isna().all()
    z = fisher_z(mat.to_numpy())
    assert z[0, 0] == 0.0
    assert z[0, 1] == pytest.approx(np.arctanh(mat.loc["a", "b"]))


def test_pearson_connectivity_is_the_sample_correlation_without_shrinkage(rng):
    """As many regions as volumes: Ledoit-Wolf would shrink r ~0.93 well below it."""
    shared = rng.standard_normal((60, 1))
    x = np.sqrt(0.9) * shared + np.sqrt(0.1) * rng.standard_normal((60, 50))
    frame = pd.DataFrame(x, columns=[f"r{i}" for i in range(50)])
    mat = connectivity(frame, "correlation").to_numpy()
    np.testing.assert_allclose(mat, np.corrcoef(x.T), atol=1e-10)
    partial = connectivity(frame, "partial correlation").to_numpy()
    assert np.isfinite(partial).all()  # regularised: defined although n_regions ~ n_volumes


# --------------------------------------------------------------------------- denoising
def test_interpolate_censored_fills_gaps_linearly(rng):
    from brainage.func.denoise import interpolate_censored

    x = rng.normal(size=(10, 3))
    kept = np.array([0, 1, 2, 5, 6, 9])
    full = interpolate_censored(x[kept], kept, 10)
    np.testing.assert_allclose(full[kept], x[kept])
    np.testing.assert_allclose(full[3], x[2] * 2 / 3 + x[5] / 3)
    np.testing.assert_allclose(full[8], x[6] / 3 + x[9] * 2 / 3)


def test_clean_voxels_agrees_with_nilearn_clean(rng):
    from brainage.func.denoise import clean_signals, clean_voxels

    n_vol = 120
    t = np.arange(n_vol) * 2.0
    confounds = rng.normal(size=(n_vol, 4))
    signal = np.sin(2 * np.pi * 0.04 * t)[:, None] + rng.normal(0, 0.5, (n_vol, 20))
    data = 100 + signal + confounds @ rng.normal(size=(4, 20)) + 0.01 * t[:, None]
    kept = np.setdiff1d(np.arange(n_vol), [10, 11, 60, 90])
    ref = clean_signals(data, confounds, kept, tr=2.0, high_pass=0.01, low_pass=0.08,
                        standardize=False)
    fast = clean_voxels(data, confounds, kept, tr=2.0, high_pass=0.01, low_pass=0.08)
    assert fast.shape == (len(kept), 20)
    r = [np.corrcoef(ref[:, j], fast[:, j])[0, 1] for j in range(20)]
    assert min(r) > 0.95
    # the band-limited sinusoid survives, the confounds do not
    assert np.corrcoef(fast.mean(axis=1), np.sin(2 * np.pi * 0.04 * t[kept]))[0, 1] > 0.9
    assert abs(np.corrcoef(fast[:, 0], confounds[kept, 0])[0, 1]) < 0.2
    # the unfiltered series (for ALFF) equal nilearn's clean without the band-pass, and
    # float32 input gives the same result in float32
    band32, raw32 = clean_voxels(data.astype(np.float32), confounds, kept, tr=2.0,
                                 high_pass=0.01, low_pass=0.08, unfiltered=True)
    assert band32.dtype == raw32.dtype == np.float32
    nil = clean_signals(data, confounds, kept, tr=2.0, high_pass=None, low_pass=None,
                        standardize=False)
    np.testing.assert_allclose(raw32, nil, atol=2e-3)
    np.testing.assert_allclose(band32, fast, atol=2e-3)


# --------------------------------------------------------------------------- resampling
def _ants_affine_file(ras, path):
    import ants

    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = flip @ ras @ flip
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                    matrix=lps[:3, :3], translation=lps[:3, 3])
    ants.write_transform(tx, str(path))
    return str(path)


def test_one_step_resampling_equals_ants_apply_transforms(tmp_path):
    """The composed field + per-volume motion reproduces ANTs' own three-transform resampling."""
    import ants
    from scipy import ndimage

    from brainage.antsutils import to_ants
    from brainage.func.motion import ants_to_ras
    from brainage.func.registration import resample_to_mni
    from brainage.templates import mni_grid

    template, _ = mni_grid(6.0)
    rng = np.random.default_rng(5)
    affine = np.diag([5.0, 5.0, 5.0, 1.0])
    affine[:3, 3] = [-95.0, -125.0, -75.0]
    data = ndimage.gaussian_filter(rng.uniform(0, 100, (40, 48, 36, 3)), (2, 2, 2, 0))
    bold = nib.Nifti1Image(data.astype(np.float32), affine)
    t1_to_mni = _ants_affine_file(params_to_affine([2.0, -3.0, 1.0, 0.05, 0.0, -0.03]),
                                  tmp_path / "t1.mat")
    epi_to_t1 = _ants_affine_file(params_to_affine([-1.0, 4.0, 2.0, 0.0, 0.04, 0.02]),
                                  tmp_path / "epi.mat")
    motion = np.stack([params_to_affine(p) for p in
                       ([0, 0, 0, 0, 0, 0], [1.0, 0, -0.5, 0.01, 0, 0], [0, 2.0, 0, 0, 0.02, 0])])
    files = [_ants_affine_file(m, tmp_path / f"m{k}.mat") for k, m in enumerate(motion)]
    np.testing.assert_allclose(ants_to_ras(ants.read_transform(files[1])), motion[1],
                               atol=1e-5)
    out, coverage = resample_to_mni(bold, motion, epi_to_t1, t1_to_mni, template, tmp_path)
    assert out.shape == (*template.shape, 3)
    fixed = to_ants(template)
    for k in range(3):
        ref = ants.apply_transforms(fixed, to_ants(bold.slicer[..., k]),
                                    [t1_to_mni, epi_to_t1, files[k]]).numpy()
        inner = coverage & (ref > 0)
        assert inner.sum() > 1000
        np.testing.assert_allclose(out[..., k][inner], ref[inner], rtol=1e-3, atol=1e-2)
    assert not coverage.all()  # the 5 mm field of view does not cover the whole grid
    # restricted to a mask: the same values inside, zeros and no coverage outside
    sub = np.zeros(template.shape, bool)
    sub[3:20, 4:25, 5:18] = True
    part, part_cov = resample_to_mni(bold, motion, epi_to_t1, t1_to_mni, template, tmp_path,
                                     mask=sub)
    np.testing.assert_array_equal(part_cov, coverage & sub)
    np.testing.assert_allclose(part[sub], out[sub], rtol=1e-6)
    assert not part[~sub].any()


def test_epi_to_t1_registration_is_reproducible(tmp_path):
    import ants
    import nibabel as nib
    from scipy import ndimage

    from brainage.func.registration import register_epi_to_t1

    rng = np.random.default_rng(1)
    vol = ndimage.gaussian_filter(rng.random((40, 44, 40)), 3).astype(np.float32)
    t1 = nib.Nifti1Image(vol, np.diag([2.0, 2.0, 2.0, 1.0]))
    mask = nib.Nifti1Image(np.ones(vol.shape, np.uint8), t1.affine)
    epi = ndimage.shift(vol, (1.0, -0.5, 0.5), order=1)[::2, ::2, ::2]
    epi_img = nib.Nifti1Image(epi.astype(np.float32), np.diag([4.0, 4.0, 4.0, 1.0]))

    def params(name):
        reg = register_epi_to_t1(epi_img, t1, mask, tmp_path / name)
        return np.array(ants.read_transform(reg["transform"]).parameters)

    # the metric is sampled at random positions: the fixed seed makes reruns identical
    np.testing.assert_array_equal(params("a"), params("b"))
