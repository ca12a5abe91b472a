import nibabel as nib
import numpy as np
import pytest
import torch

from brainage.estimators.regressor import PIDRegressor
from brainage.exceptions import InputFileError, UsageError
from brainage.training.datasets import MultiModalData, VolumeDataset
from tests.conftest import MNI_AFFINE_2MM, SHAPE_3D


@pytest.fixture
def volumes(tmp_path):
    rng = np.random.default_rng(0)
    n = 24
    y = rng.normal(size=n)
    paths = []
    for i in range(n):
        chans = []
        for c in ("GM", "WM"):
            data = rng.normal(size=SHAPE_3D).astype(np.float32) + y[i] * (2 if c == "GM" else 1)
            p = tmp_path / f"sub-{i:02d}_label-{c}_probseg.nii.gz"
            nib.save(nib.Nifti1Image(data, MNI_AFFINE_2MM), p)
            chans.append(str(p))
        paths.append(chans)
    return paths, y


def test_volume_dataset_stacks_channels_in_order(volumes):
    paths, _ = volumes
    ds = VolumeDataset(paths, cache=True)
    vol = ds[3]
    assert vol.shape == (2, *SHAPE_3D)
    gm = np.asarray(nib.load(paths[3][0]).dataobj)
    np.testing.assert_allclose(vol[0], gm)
    assert ds[3] is vol  # cached


def test_volume_dataset_names_unreadable_file(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(InputFileError, match="broken.nii.gz: cannot be read as a volume"):
        VolumeDataset([str(bad)])[0]


def test_volume_dataset_refuses_mixed_grids(tmp_path):
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE_3D, np.float32), MNI_AFFINE_2MM), a)
    nib.save(nib.Nifti1Image(np.zeros((7, 8, 10), np.float32), MNI_AFFINE_2MM), b)
    with pytest.raises(InputFileError, match="channels have different grids"):
        VolumeDataset([[str(a), str(b)]])[0]


def test_multimodal_data_mixes_arrays_and_datasets(volumes):
    paths, y = volumes
    data = MultiModalData({"anat": VolumeDataset(paths), "func": np.ones((len(y), 5))})
    assert data.sample_shapes == {"anat": (2, *SHAPE_3D), "func": (5,)}
    batch = data.batch(np.array([0, 2]))
    assert batch["anat"].shape == (2, 2, *SHAPE_3D) and batch["func"].shape == (2, 5)
    with pytest.raises(UsageError, match="different numbers of participants"):
        MultiModalData({"anat": VolumeDataset(paths), "func": np.ones((3, 5))})


def test_regressor_with_volume_and_vector_modalities(volumes, tmp_path):
    torch.set_num_threads(1)
    paths, y = volumes
    rng = np.random.default_rng(1)
    X = {"anat": VolumeDataset(paths, cache=True),
         "func": (y[:, None] + rng.normal(size=(len(y), 4))).astype(np.float32)}
    reg = PIDRegressor(latent_dim=2, hidden=(8,), max_epochs=2, batch_size=8,
                       encoders={"anat": {"channels": [4], "final_channels": 4}},
                       settings={"validation_fraction": 0.25}).fit(X, y)
    assert reg.encoder_specs_["anat"]["kind"] == "sfcn"
    assert reg.encoder_specs_["anat"]["in_channels"] == 2
    assert reg.encoder_specs_["func"]["kind"] == "mlp"
    pred = reg.predict(X)
    assert pred.shape == (len(y),) and np.all(np.isfinite(pred))
    reg.save(tmp_path / "bundle")
    np.testing.assert_array_equal(PIDRegressor.load(tmp_path / "bundle").predict(X), pred)
