import gzip

import nibabel as nib
import numpy as np
import pytest

from brainage.exceptions import InputFileError
from brainage.imageio import load_checked

SHAPE = (50, 56, 46)  # 2 mm voxels: 100 x 112 x 92 mm


def _head(rng):
    data = rng.normal(100, 10, SHAPE).astype(np.float32)
    data[:5] = 0  # an asymmetric feature to check orientation
    return data


def _save(path, data, affine=None, dtype=None):
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(data, affine)
    if dtype is not None:
        img.set_data_dtype(dtype)
    nib.save(img, path)
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(42)


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_loads_and_reorients_lps_to_ras(tmp_path, rng, ext):
    data = _head(rng)
    lps = np.diag([-2.0, -2.0, 2.0, 1.0])
    path = _save(tmp_path / f"sub-01_T1w{ext}", data, lps)
    img = load_checked(path, role="T1w")
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert img.get_data_dtype() == np.float32
    # the zero slab at i < 5 (rightmost in LPS) is now at the end of the first axis
    out = np.asarray(img.dataobj)
    assert np.all(out[-5:] == 0)
    assert np.allclose(out[::-1, ::-1, :], data)
    # world coordinates of a voxel are preserved
    ijk = np.array([3, 4, 5])
    world = nib.affines.apply_affine(lps, ijk)
    new_ijk = nib.affines.apply_affine(np.linalg.inv(img.affine), world)
    assert np.allclose(out[tuple(np.rint(new_ijk).astype(int))], data[tuple(ijk)])


def test_int16_scaling_and_anisotropic_and_oblique(tmp_path, rng):
    data = _head(rng)
    rot = nib.eulerangles.euler2mat(0.2, 0.1, 0)
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.8, 3.0, 2.4])
    raw = np.round((data - 5.0) / 0.01).astype(np.int16)
    path = tmp_path / "t1.nii"
    nib.save(nib.Nifti1Image(raw, affine), path)
    header = nib.load(path).header.copy()
    header["scl_slope"], header["scl_inter"], header["vox_offset"] = 0.01, 5.0, 352
    with open(path, "r+b") as fh:  # patch the scaling into the written header
        fh.write(header.binaryblock)
    assert nib.load(path).get_data_dtype() == np.int16
    out = load_checked(path, role="T1w")
    assert np.allclose(np.asarray(out.dataobj).mean(), data.mean(), atol=0.05)
    assert np.allclose(sorted(out.header.get_zooms()), sorted([1.8, 3.0, 2.4]), atol=1e-4)
    assert np.allclose(np.abs(np.linalg.det(out.affine[:3, :3])), 1.8 * 3.0 * 2.4)


def test_bold_4d_accepted_with_ndim_4(tmp_path, rng):
    data = rng.normal(size=(32, 32, 30, 6)).astype(np.float32)
    las = np.diag([-3.0, 3.0, 3.0, 1.0])
    las[:3, 3] = [40.0, -50.0, -30.0]
    bold = nib.Nifti1Image(data, las)
    bold.header.set_zooms((3.0, 3.0, 3.0, 2.5))  # TR 2.5 s
    nib.save(bold, tmp_path / "bold.nii.gz")
    img = load_checked(tmp_path / "bold.nii.gz", ndim=4, role="bold")
    assert img.shape == (32, 32, 30, 6)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert img.get_data_dtype() == np.float32
    # the first (left-pointing) axis is flipped, volumes stay in time order, values unchanged
    np.testing.assert_array_equal(np.asarray(img.dataobj), data[::-1])
    np.testing.assert_allclose(img.header.get_zooms(), (3.0, 3.0, 3.0, 2.5))
    # the same world point: voxel (0, j, k) of the LAS file is voxel (31, j, k) now
    np.testing.assert_allclose(nib.affines.apply_affine(img.affine, [31, 4, 5]),
                               nib.affines.apply_affine(las, [0, 4, 5]))


def test_single_volume_4d_counts_as_3d(tmp_path, rng):
    data = _head(rng)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-50.0, -60.0, -40.0]
    path = _save(tmp_path / "t1.nii.gz", data[..., None], affine)
    img = load_checked(path)
    assert img.shape == SHAPE
    np.testing.assert_array_equal(np.asarray(img.dataobj), data)
    np.testing.assert_array_equal(img.affine, affine)


def _bad(tmp_path, rng, kind):
    path = tmp_path / "sub-01_T1w.nii.gz"
    data = _head(rng)
    if kind == "4d":
        _save(path, np.stack([data] * 3, -1))
    elif kind == "nan":
        data[10, 10, 10] = np.nan
        data[11, 10, 10] = np.inf
        _save(path, data)
    elif kind == "truncated":
        _save(path, data)
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "singular":
        path = _save(tmp_path / "sub-01_T1w.nii", data)
        header = nib.load(path).header.copy()
        header["qform_code"], header["sform_code"], header["vox_offset"] = 0, 1, 352
        header["srow_z"] = [0.0, 0.0, 0.0, 0.0]  # the third axis maps nowhere
        with open(path, "r+b") as fh:
            fh.write(header.binaryblock)
    elif kind == "zeros":
        _save(path, np.zeros(SHAPE, np.int16))
    elif kind == "small":
        _save(path, data[:20, :20, :20])
    elif kind == "garbage":
        path.write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    return path


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("4d", r"is 4D with shape \(50, 56, 46, 3\); expected 3D.*index_img"),
        ("nan", r"2 voxel\(s\) are NaN or infinite"),
        ("truncated", r"truncated or corrupt.*Copy or re-export"),
        ("empty", r"empty \(0 bytes\).*re-export"),
        ("singular", r"affine .* is not invertible.*dcm2niix"),
        ("zeros", r"constant .*all zero"),
        ("small", r"field of view \(40.0, 40.0, 40.0\) mm is too small for a brain"),
        ("garbage", r"not a readable NIfTI image"),
    ],
)
def test_bad_inputs_name_file_problem_and_fix(tmp_path, rng, kind, match):
    path = _bad(tmp_path, rng, kind)
    with pytest.raises(InputFileError, match=match) as info:
        load_checked(path, role="T1w")
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    assert info.value.fix


def test_missing_file(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        load_checked(tmp_path / "nope.nii.gz")
