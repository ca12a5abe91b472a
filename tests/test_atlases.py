import nibabel as nib
import numpy as np
import pytest

from brainage.atlases import Atlas, list_atlases, load_atlas
from brainage.exceptions import AtlasError, UnknownAtlasError, UsageError


def test_registry_lists_required_atlases():
    ids = list_atlases()
    assert {"HarvardOxford", "AAL", "Power2011", "Seitzman2018"} <= set(ids)
    assert all(i.isalnum() for i in ids)


@pytest.mark.parametrize("atlas_id", ["HarvardOxford", "AAL", "Power2011", "Seitzman2018",
                                      "Dosenbach2010"])
def test_every_atlas_loads_with_complete_region_table(atlas_id):
    atlas = load_atlas(atlas_id)
    assert isinstance(atlas, Atlas)
    assert atlas.id == atlas_id
    assert list(atlas.labels.columns[:5]) == ["index", "name", "hemisphere", "lobe", "network"]
    assert set(atlas.labels["hemisphere"]) <= {"left", "right", "midline"}
    assert atlas.labels["index"].is_unique
    assert atlas.citation
    if atlas.kind == "volume":
        data = np.asarray(atlas.image.dataobj)
        assert data.ndim == 3
        assert np.issubdtype(data.dtype, np.integer)
        present = set(np.unique(data)) - {0}
        # every labelled voxel has a region row, and almost every region has voxels
        assert present <= set(atlas.labels["index"])
        assert len(present) >= 0.95 * len(atlas.labels)
    else:
        assert atlas.image is None
        assert atlas.coords.shape == (len(atlas.labels), 3)
        assert np.all(np.abs(atlas.coords) < 120)


def test_harvard_oxford_has_subcortical_ventricles_and_hippocampus_lateralised():
    ho = load_atlas("HarvardOxford")
    labels = ho.labels.set_index("name")
    for name in ("Left_Lateral_Ventricle", "Right_Lateral_Ventricle", "Left_Hippocampus",
                 "Right_Hippocampus"):
        assert name in labels.index
    assert labels.loc["Left_Hippocampus", "hemisphere"] == "left"
    assert labels.loc["Right_Hippocampus", "lobe"] == "limbic"
    assert labels.loc["Left_Lateral_Ventricle", "lobe"] == "ventricle"
    assert (ho.labels["lobe"] == "frontal").sum() == 24
    # the left hippocampus lies left of the midline (x < 0 mm) in MNI space
    data = np.asarray(ho.image.dataobj)
    ijk = np.argwhere(data == labels.loc["Left_Hippocampus", "index"])
    xyz = nib.affines.apply_affine(ho.image.affine, ijk)
    assert 2000 < len(ijk) < 10000  # ~4-5 mL at 1 mm
    assert np.all(xyz[:, 0] < 0)
    assert -45 < xyz[:, 1].mean() < -5


def test_aal_hemispheres_match_coordinates():
    aal = load_atlas("AAL")
    data = np.asarray(aal.image.dataobj)
    for _, row in aal.labels.sample(10, random_state=0).iterrows():
        ijk = np.argwhere(data == row["index"])
        x = nib.affines.apply_affine(aal.image.affine, ijk)[:, 0].mean()
        if row["hemisphere"] == "left":
            assert x < 0
        elif row["hemisphere"] == "right":
            assert x > 0


def test_seitzman_has_networks_and_power_is_coordinates():
    s = load_atlas("Seitzman2018")
    assert "DefaultMode" in set(s.labels["network"])
    p = load_atlas("Power2011")
    assert p.kind == "coords"
    assert p.radius_mm == 5
    left = p.labels["hemisphere"] == "left"
    assert np.all(p.coords[left.to_numpy(), 0] < 0)


def test_resample_to_grid_keeps_labels():
    aal = load_atlas("AAL")
    target = nib.Nifti1Image(np.zeros((30, 36, 30), np.float32), np.diag([5.0, 5, 5, 1]))
    target.affine[:3, 3] = [-75, -110, -60]
    target = nib.Nifti1Image(np.zeros((30, 36, 30), np.float32), target.affine)
    out = aal.resample_to(target)
    assert out.shape == (30, 36, 30)
    assert np.allclose(out.affine, target.affine)
    assert set(np.unique(out.get_fdata()).astype(int)) - {0} <= set(aal.labels["index"])
    with pytest.raises(AtlasError, match="coordinate set"):
        load_atlas("Power2011").resample_to(target)
    with pytest.raises(AtlasError, match="not a coordinate set"):
        _ = aal.coords


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("harvardoxford", "did you mean 'HarvardOxford'"),
        ("AAL3", "did you mean 'AAL'"),
        ("Nope", "known atlases: AAL"),
        ("Harvard-Oxford", "letters and digits only"),
    ],
)
def test_unknown_atlas_is_a_usage_error_with_suggestion(bad, match):
    with pytest.raises(UnknownAtlasError, match=match) as info:
        load_atlas(bad)
    assert isinstance(info.value, UsageError)


def test_probabilistic_cache_is_reused(tmp_path, monkeypatch):
    import brainage.atlases as mod

    monkeypatch.setenv("BRAINAGE_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(0)
    prob = rng.integers(0, 100, size=(4, 5, 6, 3)).astype(np.uint8)
    src = tmp_path / "prob.nii.gz"
    nib.save(nib.Nifti1Image(prob, np.eye(4)), src)
    first = mod._maxprob_labels(src, 25, 1)
    expected = np.where(prob.max(-1) >= 25, prob.argmax(-1) + 1, 0)
    assert np.array_equal(np.asarray(first.dataobj), expected)
    assert len(list((tmp_path / "atlases").glob("prob_maxprob_*.nii.gz"))) == 1
    second = mod._maxprob_labels(src, 25, 1)
    assert np.array_equal(np.asarray(second.dataobj), expected)
