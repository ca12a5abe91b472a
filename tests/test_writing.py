"""Atomic writes: a failure never leaves a half-written file under the final name."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from brainage.writing import atomic_path, atomic_write_json, atomic_write_text, save_nifti


def test_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.tsv"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            assert tmp.name.endswith(".tsv") and tmp.parent == tmp_path
            raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tsv"]


def test_json_and_new_folders(tmp_path):
    path = atomic_write_json(tmp_path / "a" / "b.json", {"x": 1})
    assert path.read_text() == '{\n  "x": 1\n}\n'


def test_nifti_gz_is_deterministic_and_readable(tmp_path, img_3d):
    a = save_nifti(img_3d, tmp_path / "a.nii.gz")
    b = save_nifti(img_3d, tmp_path / "b.nii.gz")
    assert a.read_bytes() == b.read_bytes()
    assert gzip.decompress(a.read_bytes())[:4]  # really gzip
    np.testing.assert_allclose(nib.load(a).get_fdata(), img_3d.get_fdata())
    plain = save_nifti(img_3d, tmp_path / "c.nii")
    np.testing.assert_allclose(nib.load(plain).get_fdata(), img_3d.get_fdata())


def test_outputs_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from brainage.writing import _umask

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "x.tsv", "a\n")
        os.umask(0o027)
        group = atomic_write_text(tmp_path / "y.tsv", "a\n")
        assert _umask() == 0o027 and _umask() == 0o027  # read, not changed
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(group.stat().st_mode) == 0o640


def test_nifti_units_declared(tmp_path, img_4d):
    assert img_4d.header.get_xyzt_units() == ("unknown", "unknown")
    path = save_nifti(img_4d, tmp_path / "bold.nii.gz")
    saved = nib.load(path)
    assert saved.header.get_xyzt_units() == ("mm", "sec")
    assert img_4d.header.get_xyzt_units() == ("unknown", "unknown")  # the caller's image unchanged
    np.testing.assert_array_equal(saved.get_fdata(), img_4d.get_fdata())
    np.testing.assert_allclose(saved.affine, img_4d.affine)
    assert saved.header.get_sform(coded=True)[1] == img_4d.header.get_sform(coded=True)[1]


def test_umask_is_read_without_setting_it(monkeypatch):
    """Setting the umask to read it would race with files other threads create."""
    import os

    from brainage.writing import _umask

    old = os.umask(0o022)
    os.umask(old)

    def refuse(*_):
        raise AssertionError("os.umask called: the mask was changed to be read")

    monkeypatch.setattr(os, "umask", refuse)
    assert _umask() == old
