"""The on-disk volume cache (decode once, memory-map, update per participant) and the batch prefetcher."""

from __future__ import annotations

import json
import os
import threading
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from brainage.exceptions import GroupLevelError, InputFileError, UsageError
from brainage.training import volume_cache as vc
from brainage.training import volume_decode as vd
from brainage.training.datasets import MultiModalData, VolumeDataset, batch_indices
from brainage.training.prefetch import BatchPrefetcher
from brainage.training.volume_cache import VolumeCache, VolumeCacheStore
from tests.conftest import MNI_AFFINE_2MM

SHAPE = (8, 9, 7)  # distinct sizes per axis so a swapped axis fails
N = 12
#: float16 rounds to 11 significant bits: half a step of 2**-10 for values in [1, 2)
F16_TOL = 2.0**-11


def _write(path, data):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), MNI_AFFINE_2MM), path)


@pytest.fixture
def maps(tmp_path):
    """A dozen participants' GM-like maps (values in [0, 1.5)), with their keys."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "deriv"
    folder.mkdir()
    paths, keys = [], []
    for i in range(N):
        p = folder / f"sub-{i + 1:02d}_label-GM_probseg.nii.gz"
        _write(p, rng.uniform(0, 1.5, SHAPE))
        paths.append(str(p))
        keys.append(f"sub-{i + 1:02d}")
    return paths, keys, tmp_path / "cache"


@pytest.fixture
def decodes(monkeypatch):
    """Count the NIfTI decodes of the cache (the paths decoded, in order)."""
    seen = []
    real = vd.decode_volume

    def counting(path):
        seen.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(vd, "decode_volume", counting)
    return seen


def _nifti(path):
    return np.asarray(nib.load(path).dataobj, dtype=np.float32)


# --------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("dtype", ["float16", "float32"], ids=["float16", "float32"])
def test_round_trip_equals_the_nifti_data(maps, dtype):
    paths, keys, folder = maps
    cache = VolumeCache.open(folder, paths, keys, name="anat", dtype=dtype)
    ds = cache.dataset()
    ref = VolumeDataset(paths)
    assert cache.shape == (N, 1, *SHAPE) and str(cache.dtype) == dtype and len(ds) == N
    errors = []
    for i in range(N):
        item = ds[i]
        assert item.dtype == np.float32 and item.shape == (1, *SHAPE)
        errors.append(float(np.abs(item - ref[i]).max()))
    if dtype == "float32":
        assert max(errors) == 0.0
    else:
        assert 0 < max(errors) <= F16_TOL
    # the manifest records the error actually made, per participant and overall
    assert cache.max_abs_error == pytest.approx(max(errors))
    manifest = json.loads(cache.manifest_path.read_text())
    assert manifest["participants"]["sub-03"]["max_abs_error"] == pytest.approx(errors[2])
    entry = manifest["participants"]["sub-03"]
    st = os.stat(paths[2])
    assert entry["paths"] == [paths[2]] and entry["sizes"] == [st.st_size]
    assert entry["mtimes_ns"] == [st.st_mtime_ns]


def test_channels_stack_in_order_like_volume_dataset(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for i in range(3):
        row = []
        for c in ("GM", "WM"):
            p = tmp_path / f"sub-{i}_label-{c}.nii.gz"
            _write(p, rng.uniform(0, 1, SHAPE) + (c == "WM"))
            row.append(str(p))
        rows.append(row)
    ds = VolumeCache.open(tmp_path / "cache", rows, name="anat").dataset()
    ref = VolumeDataset(rows)
    assert ds[1].shape == (2, *SHAPE)
    np.testing.assert_allclose(ds[1], ref[1], atol=F16_TOL)
    assert ds.paths == rows


def test_batch_slices_the_memmap_in_the_order_asked(maps):
    paths, keys, folder = maps
    ds = VolumeCache.open(folder, paths, keys, name="anat").dataset()
    idx = [9, 2, 5, 2]
    batch = ds.batch(idx)
    assert batch.dtype == np.float32 and batch.flags["C_CONTIGUOUS"] and batch.shape == (4, 1, *SHAPE)
    np.testing.assert_array_equal(batch, np.stack([ds[i] for i in idx]))
    out = np.zeros((4, 1, *SHAPE), np.float32)
    assert ds.batch(idx, out=out) is out and np.array_equal(out, batch)
    raw = ds.batch(idx, dtype=np.float16)  # the stored values, to convert on the device
    assert raw.dtype == np.float16 and np.array_equal(raw.astype(np.float32), batch)
    with pytest.raises(UsageError, match="out has shape"):
        ds.batch(idx, out=np.zeros((3, 1, *SHAPE), np.float32))


# --------------------------------------------------------------------------- reuse and updates
def test_reopening_reuses_the_cache_without_decoding(maps, decodes):
    paths, keys, folder = maps
    first = VolumeCache.open(folder, paths, keys, name="anat")
    assert first.last_update.action == "built" and len(decodes) == N
    again = VolumeCache.open(folder, paths, keys, name="anat")
    assert again.last_update.action == "reused" and again.last_update.decoded == []
    assert len(decodes) == N  # nothing decoded the second time
    np.testing.assert_array_equal(again.dataset()[4], first.dataset()[4])


def test_a_changed_participant_is_the_only_one_decoded_again(maps, decodes):
    paths, keys, folder = maps
    VolumeCache.open(folder, paths, keys, name="anat")
    before = VolumeCache.open(folder, paths, keys, name="anat").dataset()
    others = [before[i] for i in range(N)]
    new = np.full(SHAPE, 0.25, np.float32)
    new[0, 0, 0] = 1.0
    _write(paths[4], new)
    st = os.stat(paths[4])
    os.utime(paths[4], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a later mtime for sure
    decodes.clear()
    cache = VolumeCache.open(folder, paths, keys, name="anat")
    assert decodes == [os.path.basename(paths[4])]
    assert cache.last_update.action == "updated" and cache.last_update.decoded == ["sub-05"]
    ds = cache.dataset()
    np.testing.assert_array_equal(ds[4][0], new)  # 0.25 and 1.0 are exact in float16
    for i in (0, 3, 5, 11):
        np.testing.assert_array_equal(ds[i], others[i])
    manifest = json.loads(cache.manifest_path.read_text())
    assert manifest["participants"]["sub-05"]["mtimes_ns"] == [os.stat(paths[4]).st_mtime_ns]
    decodes.clear()
    assert VolumeCache.open(folder, paths, keys, name="anat").last_update.action == "reused"
    assert decodes == []


def test_new_participants_extend_the_cache_and_removed_ones_keep_their_slots(maps, decodes):
    paths, keys, folder = maps
    VolumeCache.open(folder, paths[:9], keys[:9], name="anat")
    decodes.clear()
    cache = VolumeCache.open(folder, paths, keys, name="anat")
    assert cache.last_update.action == "extended" and cache.last_update.decoded == keys[9:]
    assert len(decodes) == 3 and cache.shape[0] == N
    np.testing.assert_allclose(cache.dataset()[10][0], _nifti(paths[10]), atol=F16_TOL)
    np.testing.assert_allclose(cache.dataset()[1][0], _nifti(paths[1]), atol=F16_TOL)
    # a subset reuses the cache as it is: no decode, the others' slots stay
    decodes.clear()
    sub = VolumeCache.open(folder, paths[3:7], keys[3:7], name="anat")
    assert sub.last_update.action == "reused" and decodes == [] and sub.shape[0] == N
    assert sub.keys == keys[3:7] and len(sub.dataset()) == 4
    np.testing.assert_allclose(sub.dataset()[0][0], _nifti(paths[3]), atol=F16_TOL)
    with pytest.raises(KeyError, match="sub-01"):
        sub.slot("sub-01")  # in the file, but not checked by this open: not served


class _Killed(BaseException):
    """Stands for the process being killed half-way through writing slots."""


def _killed_run_jobs(array_path, dtype, grid, jobs, workers):
    arr = np.load(array_path, mmap_mode="r+")
    for slot, _ in jobs:
        arr[slot] = 7.0  # half-written: neither the old nor the new values
    arr.flush()
    raise _Killed


def test_a_killed_update_leaves_its_slots_pending_not_valid(maps, decodes, monkeypatch):
    paths, keys, folder = maps
    VolumeCache.open(folder, paths[:10], keys[:10], name="anat")
    st = os.stat(paths[2])
    original = open(paths[2], "rb").read()
    _write(paths[2], np.zeros(SHAPE))
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    real = vc.run_jobs
    monkeypatch.setattr(vc, "run_jobs", _killed_run_jobs)
    with pytest.raises(_Killed):  # sub-03 changed, sub-11 and sub-12 new
        VolumeCache.open(folder, paths, keys, name="anat")
    monkeypatch.setattr(vc, "run_jobs", real)
    # the file is put back exactly as the manifest knew it: only the journal says the slot is bad
    with open(paths[2], "wb") as fh:
        fh.write(original)
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns))
    decodes.clear()
    cache = VolumeCache.open(folder, paths, keys, name="anat")
    assert sorted(cache.last_update.decoded) == ["sub-03", "sub-11", "sub-12"] and len(decodes) == 3
    for i in (2, 10, 11):
        np.testing.assert_allclose(cache.dataset()[i][0], _nifti(paths[i]), atol=F16_TOL)


# --------------------------------------------------------------------------- bad inputs
def test_a_corrupt_nifti_raises_input_file_error_naming_it(maps):
    paths, keys, folder = maps
    with open(paths[6], "wb") as fh:
        fh.write(b"\x1f\x8b" + b"not a nifti at all" * 10)
    with pytest.raises(InputFileError, match=r"sub-07_label-GM_probseg\.nii\.gz: cannot be read"):
        VolumeCache.open(folder, paths, keys, name="anat")


def test_a_missing_nifti_raises_input_file_error_naming_it(maps):
    paths, keys, folder = maps
    os.unlink(paths[2])
    with pytest.raises(InputFileError, match=r"sub-03_label-GM_probseg\.nii\.gz: cannot be read"):
        VolumeCache.open(folder, paths, keys, name="anat")


def test_a_file_corrupted_after_the_build_is_caught_and_decoded_once_fixed(maps, decodes):
    paths, keys, folder = maps
    VolumeCache.open(folder, paths, keys, name="anat")
    good = _nifti(paths[8])
    with open(paths[8], "wb") as fh:
        fh.write(b"garbage" * 50)
    with pytest.raises(InputFileError, match="sub-09_label-GM"):
        VolumeCache.open(folder, paths, keys, name="anat")
    _write(paths[8], good + 0.5)
    decodes.clear()
    cache = VolumeCache.open(folder, paths, keys, name="anat")
    assert decodes == [os.path.basename(paths[8])]
    np.testing.assert_allclose(cache.dataset()[8][0], good + 0.5, atol=F16_TOL)


def test_a_map_on_another_grid_is_named(maps):
    paths, keys, folder = maps
    _write(paths[5], np.zeros((8, 9, 8)))
    with pytest.raises(InputFileError, match=r"sub-06_label-GM.*\(8, 9, 8\) grid, not the cohort's \(8, 9, 7\)"):
        VolumeCache.open(folder, paths, keys, name="anat")


def test_values_beyond_float16_are_refused_with_the_fix(maps):
    paths, keys, folder = maps
    _write(paths[1], np.full(SHAPE, 7e4))
    with pytest.raises(UsageError, match=r"sub-02_label-GM.*exceed float16's range.*dtype='float32'"):
        VolumeCache.open(folder, paths, keys, name="anat")
    cache = VolumeCache.open(folder, paths, keys, name="anat", dtype="float32")
    assert cache.dataset()[1].max() == pytest.approx(7e4)


def test_bad_arguments_are_refused(maps):
    paths, keys, folder = maps
    with pytest.raises(UsageError, match="dtype 'uint8' is not one of float16, float32"):
        VolumeCache.open(folder, paths, keys, dtype="uint8")
    with pytest.raises(UsageError, match="keys must be unique; repeated: sub-01"):
        VolumeCache.open(folder, paths[:2], ["sub-01", "sub-01"])
    with pytest.raises(UsageError, match="same number of maps"):
        VolumeCache.open(folder, [[paths[0]], [paths[1], paths[2]]])


# --------------------------------------------------------------------------- corrupt caches
def _truncate(cache):
    with open(cache.array_path, "rb+") as fh:
        fh.truncate(cache.nbytes - 100)


def _garble_manifest(cache):
    cache.manifest_path.write_text("{not json")


def _manifest_shape(cache):
    man = json.loads(cache.manifest_path.read_text())
    man["shape"][0] += 1
    cache.manifest_path.write_text(json.dumps(man))


def _other_array(cache):
    np.save(cache.array_path, np.zeros((N, 1, 8, 9, 6), np.float16))


def _no_array(cache):
    cache.array_path.unlink()


def _no_manifest(cache):
    cache.manifest_path.unlink()


@pytest.mark.parametrize("corrupt, reason", [
    (_truncate, "truncated"),
    (_garble_manifest, "unreadable"),
    (_no_manifest, "missing"),
    (_manifest_shape, "differs from the manifest"),
    (_other_array, "differs from the manifest"),
    (_no_array, "unreadable"),
], ids=["truncated-npy", "garbled-manifest", "no-manifest", "manifest-shape", "other-array", "no-npy"])
def test_a_corrupt_cache_is_detected_and_rebuilt(maps, decodes, corrupt, reason):
    paths, keys, folder = maps
    cache = VolumeCache.open(folder, paths, keys, name="anat")
    corrupt(cache)
    del cache
    decodes.clear()
    again = VolumeCache.open(folder, paths, keys, name="anat")
    assert again.last_update.action == "rebuilt" and reason in again.last_update.reason
    assert len(decodes) == N
    for i in (0, 7, 11):
        np.testing.assert_allclose(again.dataset()[i][0], _nifti(paths[i]), atol=F16_TOL)
    assert VolumeCache.open(folder, paths, keys, name="anat").last_update.action == "reused"


def test_verify_finds_a_damaged_slot_by_its_checksum(maps, decodes):
    paths, keys, folder = maps
    cache = VolumeCache.open(folder, paths, keys, name="anat")
    offset = cache.nbytes - int(np.prod(cache.shape)) * 2  # the data start
    slot_bytes = int(np.prod(cache.sample_shape)) * 2
    with open(cache.array_path, "rb+") as fh:  # same size, other bytes in slot 3
        fh.seek(offset + 3 * slot_bytes + 10)
        fh.write(b"\x00\x7c" * 8)  # float16 inf
    del cache
    decodes.clear()
    assert VolumeCache.open(folder, paths, keys, name="anat").last_update.action == "reused"
    cache = VolumeCache.open(folder, paths, keys, name="anat", verify=True)
    assert cache.last_update.decoded == ["sub-04"] and len(decodes) == 1
    np.testing.assert_allclose(cache.dataset()[3][0], _nifti(paths[3]), atol=F16_TOL)


@pytest.mark.slow
def test_worker_processes_decode_the_same_values_and_report_a_bad_file(tmp_path):
    rng = np.random.default_rng(3)
    paths = []
    for i in range(vd._POOL_MIN_JOBS + 6):
        p = tmp_path / f"sub-{i:03d}.nii.gz"
        _write(p, rng.uniform(0, 1.5, SHAPE))
        paths.append(str(p))
    one = VolumeCache.open(tmp_path / "a", paths, name="anat", workers=1)
    two = VolumeCache.open(tmp_path / "b", paths, name="anat", workers=2)
    assert two.last_update.action == "built"
    np.testing.assert_array_equal(two.dataset().batch(np.arange(len(paths))),
                                  one.dataset().batch(np.arange(len(paths))))
    with open(paths[40], "wb") as fh:
        fh.write(b"broken")
    with pytest.raises(InputFileError, match="sub-040.nii.gz"):
        VolumeCache.open(tmp_path / "c", paths, name="anat", workers=2)


# --------------------------------------------------------------------------- the store of VolumeDataset
def test_volume_dataset_reads_through_the_store_without_the_nifti_files(maps):
    paths, keys, folder = maps
    cache = VolumeCache.open(folder, paths, keys, name="anat")
    store = VolumeCacheStore({"anat": cache})
    assert isinstance(store, dict) and len(store) == N and (paths[0],) in store
    expected = cache.dataset()[7]
    other = str(folder.parent / "sub-99.nii.gz")
    _write(other, np.ones(SHAPE))
    for p in paths:
        os.unlink(p)  # every read below must come from the memory map
    ds = VolumeDataset(paths, cache=store)
    np.testing.assert_array_equal(ds[7], expected)
    data = MultiModalData({"anat": ds})
    assert data.batch(np.array([7, 1]))["anat"].shape == (2, 1, *SHAPE)
    # a participant outside the cache is decoded from its file, and not kept in memory
    outside = VolumeDataset([other], cache=store)
    np.testing.assert_array_equal(outside[0][0], np.ones(SHAPE))
    assert len(store) == N and (other,) not in store


# --------------------------------------------------------------------------- group switch
def _maps_cohort(root):
    from brainage.cohort.data import load_cohort
    from brainage.config import load_config

    from .test_group_level import write_cohort
    from .test_group_maps import CONFIG, write_maps

    bids, deriv = write_cohort(root, n=14)
    write_maps(bids, deriv)
    (root / "maps.yaml").write_text(CONFIG)
    return load_cohort(bids, deriv, load_config(root / "maps.yaml").group), deriv


def test_group_switch_streams_maps_from_the_disk_cache(tmp_path):
    from brainage.group.transforms import FeatureTransforms, volume_cache

    cohort, deriv = _maps_cohort(tmp_path)
    keys = list(cohort.participants.index)
    assert volume_cache(cohort, ["anat", "func"], 1.0, mode="auto") == {}  # fits: in memory
    assert volume_cache(cohort, ["anat", "func"], 0.0) is None  # the default streams
    assert volume_cache(cohort, ["anat", "func"], 1.0, mode="off") is None
    store = volume_cache(cohort, ["anat", "func"], 0.0, mode="auto", workers=1)
    assert isinstance(store, VolumeCacheStore) and set(store.caches) == {"anat", "func"}
    folder = deriv / "group" / "work" / "volume_cache"
    assert (folder / "anat.npy").exists() and (folder / "func.json").exists()
    expected = {m: VolumeDataset(cohort.inputs[m].paths.loc[keys[:5]].to_numpy(object).tolist())
                for m in ("anat", "func")}
    want = {m: [expected[m][i] for i in range(5)] for m in expected}
    for p in cohort.inputs["anat"].paths.to_numpy(object).ravel():
        os.unlink(p)  # from here on the anat maps can only come from the cache
    X = FeatureTransforms().inputs(cohort, keys[:5], ["anat", "func"], store)
    for m in ("anat", "func"):
        for i in range(5):
            np.testing.assert_allclose(X[m][i], want[m][i], atol=F16_TOL)
    with pytest.raises(GroupLevelError, match="group.volume_cache 'ram' is not one of"):
        volume_cache(cohort, ["anat"], 1.0, mode="ram")


def test_group_config_takes_the_switch_and_refuses_other_values():
    from brainage.config.group import GroupConfig

    assert GroupConfig().volume_cache == "memory"
    assert GroupConfig(volume_cache="disk").volume_cache == "disk"
    with pytest.raises(ValueError, match="volume_cache"):
        GroupConfig(volume_cache="ram")


# --------------------------------------------------------------------------- prefetcher
def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("brainage-prefetch") and t.is_alive()]


@pytest.mark.parametrize("depth", [1, 3], ids=["depth1", "depth3"])
def test_prefetcher_yields_the_batches_of_direct_slicing_in_order(maps, depth):
    paths, keys, folder = maps
    ds = VolumeCache.open(folder, paths, keys, name="anat").dataset()
    batches = batch_indices(np.arange(N), 4, shuffle=True, seed=3, epoch=1)
    with BatchPrefetcher(ds.batch, batches, depth=depth, pin_memory=False) as feed:
        got = list(feed)
    assert len(got) == len(batches) == 3
    for b, g in zip(batches, got):
        np.testing.assert_array_equal(g, ds.batch(b))
    assert not feed.alive and _prefetch_threads() == []


def test_prefetcher_raises_the_fetch_error_in_place_and_stops(maps):
    calls = []

    def fetch(b):
        calls.append(b)
        if b == 2:
            raise InputFileError("sub-03.nii.gz", "cannot be read as a volume", "check it")
        return b * 10

    feed = BatchPrefetcher(fetch, range(6), depth=2, pin_memory=False)
    got = []
    with pytest.raises(InputFileError, match="sub-03.nii.gz"):
        for x in feed:
            got.append(x)
    assert got == [0, 10]  # the batches before the failing one, in order
    feed._thread.join(2)
    assert not feed.alive and calls == [0, 1, 2]  # nothing fetched after the error
    assert list(feed) == []


def test_prefetcher_stops_when_the_consumer_fails(maps):
    def fetch(b):
        return b

    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="step failed"):
        with BatchPrefetcher(fetch, range(10_000), depth=2, pin_memory=False) as feed:
            for x in feed:
                if x == 3:
                    raise RuntimeError("step failed")
    assert not feed.alive and _prefetch_threads() == []
    assert time.perf_counter() - start < 5  # the producer blocked on a full queue was released


def test_prefetcher_refuses_a_zero_depth():
    with pytest.raises(UsageError, match="depth must be at least 1"):
        BatchPrefetcher(str, [1], depth=0)


def test_trainer_with_prefetch_gives_the_same_training(maps):
    from brainage.models.baselines import FusionBaselineNet
    from brainage.models.encoders import MLPEncoder
    from brainage.models.presets import get_preset
    from brainage.training.trainer import train_model

    torch.set_num_threads(1)
    paths, keys, folder = maps
    ds = VolumeCache.open(folder, paths, keys, name="anat").dataset()
    rng = np.random.default_rng(0)
    data = MultiModalData({"anat": ds, "func": rng.normal(size=(N, 5)).astype(np.float32)})
    y = rng.normal(size=N)
    cfg = get_preset("default", batch_size=4, max_epochs=3, latent_dim=2, hidden=(4,), dropout=(0.0,))
    runs = []
    for prefetch in (0, 2):
        torch.manual_seed(0)
        anat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(SHAPE)), 2))
        net = FusionBaselineNet({"anat": anat, "func": MLPEncoder(5, out_dim=2, hidden=(4,), dropout=0.0)},
                                latent_dim=2, hidden=(4,), dropout=(0.0,))
        res = train_model(net, data, y, np.arange(9), np.arange(9, N), cfg, device="cpu", prefetch=prefetch)
        runs.append([e["train_loss"] for e in res.history])
    assert runs[0] == runs[1] and len(runs[0]) == 3
    assert _prefetch_threads() == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prefetcher_pins_batches_on_cuda(maps):
    paths, keys, folder = maps
    ds = VolumeCache.open(folder, paths, keys, name="anat").dataset()
    with BatchPrefetcher(lambda b: {"anat": torch.from_numpy(ds.batch(b))}, [[0, 1], [2]]) as feed:
        got = list(feed)
    assert feed.pin_memory and all(g["anat"].is_pinned() for g in got)
