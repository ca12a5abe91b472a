"""Benchmark: the on-disk volume cache against decoding NIfTI files, and the batch prefetcher.

Uses the simulated cohort's 2 mm modulated GM maps (``/tmp/fc-demo``: 40 participants,
99 × 117 × 95 voxels, ~0.9 MB each as ``.nii.gz``), repeated through symbolic links to
``--n`` participants (400 by default) so that the cache is a realistic size. Measures:

* the cache build (``VolumeCache.open`` on an empty folder) with 1 and ``--workers``
  decoding processes: seconds, ms per participant, size on disk, float16's largest error;
* the reopen of an unchanged cache;
* the update after one participant's file changes (a symbolic link replaced by a new
  file): seconds and which participants were decoded (counted in the decoder itself);
* the extension by 10 new participants;
* samples/s reading shuffled batches of 16, as float32: (a) decoding NIfTI files per item
  (``VolumeDataset`` through ``MultiModalData.batch``, what the trainer does today when the
  maps stream), (b) the memory-mapped cache (``CachedVolumeDataset.batch``, warm page cache
  and cold, the cache's pages dropped with ``posix_fadvise``), (b') the cache through the
  group level's store (``VolumeDataset(paths, cache=store)``, per item), and (c) the cache
  with the background prefetcher, alone and feeding a consumer that takes a fixed time per
  batch (``--step-ms``, standing in for a GPU step that leaves the CPU free), against the
  same consumer fed without prefetching;
* uint8 with a per-participant scale against float16: the largest error on the real maps
  and the float32 conversion time of a batch (why the cache stores float16).

Run from the repository root::

    .venv/bin/python bench/bench_volume_cache.py [--n 400] [--workers 2] [--batches 12]

Writes ``bench/results/volume_cache.json``. On a shared CPU the figures are inflated;
the JSON records the load average at the start and the end.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import write_result

MAPS = "/tmp/fc-demo/bids/derivatives/brainage/sub-*/anat/*res-2_label-GM_desc-modulated_probseg.nii.gz"
BATCH = 16


def _cohort(real: list[str], n: int, root: str) -> tuple[list[str], list[str]]:
    """Symbolic links sub-0001 … sub-<n> to the real maps, in turn."""
    paths, keys = [], []
    for i in range(n):
        key = f"sub-{i + 1:04d}"
        folder = os.path.join(root, key, "anat")
        os.makedirs(folder, exist_ok=True)
        name = f"{key}_space-MNI152NLin2009aSym_res-2_label-GM_desc-modulated_probseg.nii.gz"
        link = os.path.join(folder, name)
        os.symlink(real[i % len(real)], link)
        paths.append(link)
        keys.append(key)
    return paths, keys


def _drop_pages(path: str) -> None:
    """Evict ``path``'s pages from the page cache (this file only), for a cold read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _rate(fn, batches) -> dict:
    t0 = time.perf_counter()
    n = 0
    for b in batches:
        out = fn(b)
        n += len(b)
    seconds = time.perf_counter() - t0
    del out
    return {"samples_per_s": round(n / seconds, 1), "samples": n, "seconds": round(seconds, 3)}


def _consumer_rate(batches, fetch, step_s: float, *, prefetch: bool) -> dict:
    from brainage.training.prefetch import BatchPrefetcher

    t0 = time.perf_counter()
    n = 0
    if prefetch:
        with BatchPrefetcher(fetch, batches, depth=3, pin_memory=False) as feed:
            for b, _ in zip(batches, feed):
                time.sleep(step_s)  # the device computes; the CPU is free
                n += len(b)
    else:
        for b in batches:
            fetch(b)
            time.sleep(step_s)
            n += len(b)
    seconds = time.perf_counter() - t0
    return {"samples_per_s": round(n / seconds, 1), "samples": n, "seconds": round(seconds, 3)}


def _uint8_vs_float16(real: list[str]) -> dict:
    import torch

    from brainage.training.volume_decode import decode_volume

    err16, err8 = 0.0, 0.0
    for p in real:
        v = decode_volume(p)
        err16 = max(err16, float(np.abs(v.astype(np.float16).astype(np.float32) - v).max()))
        scale = float(v.max()) / 255 if v.max() > 0 else 1.0
        q = np.clip(np.rint(v / scale), 0, 255).astype(np.uint8)
        err8 = max(err8, float(np.abs(q.astype(np.float32) * scale - v).max()))
    vox = int(np.prod(decode_volume(real[0]).shape))
    h = np.random.default_rng(0).random((BATCH, 1, vox), dtype=np.float32)
    h16, h8 = h.astype(np.float16), (h * 255).astype(np.uint8)
    scales = np.full((BATCH, 1, 1), 1 / 255, np.float32)
    out = np.empty_like(h)
    t_out, t16 = torch.from_numpy(out), torch.from_numpy(h16)

    def best(fn):
        fn()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return round(min(times) * 1e3, 2)

    ms = {"float16_numpy": best(lambda: np.copyto(out, h16)),
          "float16_torch_as_the_cache_does": best(lambda: t_out.copy_(t16)),
          "uint8_times_scale_numpy": best(lambda: np.multiply(h8, scales, out=out))}
    ratio = err8 / err16
    return {
        "float16_max_abs_error": err16,
        "uint8_max_abs_error": err8,
        "error_ratio_uint8_over_float16": round(ratio, 1),
        "bytes_per_participant": {"float16": vox * 2, "uint8": vox},
        "ms_to_float32_per_batch_of_16": ms,
        "decision": (f"float16 kept: uint8 would halve the bytes, but its error is {ratio:.1f} times "
                     f"float16's, and its conversion to float32 ({ms['uint8_times_scale_numpy']} ms a "
                     f"batch) is not faster than float16's as the cache converts "
                     f"({ms['float16_torch_as_the_cache_does']} ms)"
                     if ms["uint8_times_scale_numpy"] >= ms["float16_torch_as_the_cache_does"] else
                     f"float16 kept for accuracy: uint8's error is {ratio:.1f} times float16's, although "
                     f"its conversion to float32 is faster ({ms['uint8_times_scale_numpy']} against "
                     f"{ms['float16_torch_as_the_cache_does']} ms a batch); a GPU run avoids the CPU "
                     "conversion by moving float16 batches (batch(dtype=float16))"),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=400, help="participants (symbolic links to the 40 maps)")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes of the second build")
    parser.add_argument("--batches", type=int, default=12, help="batches of 16 timed for NIfTI decoding")
    parser.add_argument("--step-ms", type=float, default=16.0,
                        help="per-batch time of the simulated consumer (16 ms: 1,000 samples/s)")
    args = parser.parse_args(argv)

    import torch

    from brainage.training import volume_decode as vd
    from brainage.training.datasets import MultiModalData, VolumeDataset, batch_indices
    from brainage.training.prefetch import BatchPrefetcher
    from brainage.training.volume_cache import VolumeCache, VolumeCacheStore

    torch.set_num_threads(1)
    real = sorted(glob.glob(MAPS))
    if not real:
        raise SystemExit(f"no maps match {MAPS}; run the demo into /tmp/fc-demo first")
    figures = {"load_average_at_start": os.getloadavg(), "n_participants": args.n,
               "n_distinct_maps": len(real), "batch_size": BATCH, "torch_threads": 1}
    root = tempfile.mkdtemp(prefix="bench-volume-cache-")
    try:
        paths, keys = _cohort(real, args.n, os.path.join(root, "deriv"))
        grid = list(vd.header_grid(real[0]))
        figures["grid"] = grid
        figures["nifti_gz_mb_per_participant"] = round(np.mean([os.path.getsize(p) for p in real]) / 1e6, 3)

        # ------------------------------------------------ build, reopen, update, extend
        decoded: list[str] = []
        real_decode = vd.decode_volume

        def counting(path):
            decoded.append(path)
            return real_decode(path)

        vd.decode_volume = counting  # counts the decodes of this process (workers=1 builds)
        build = {}
        for workers in sorted({1, args.workers}):
            folder = os.path.join(root, f"cache-w{workers}")
            t0 = time.perf_counter()
            cache = VolumeCache.open(folder, paths, keys, name="anat", workers=workers)
            sec = time.perf_counter() - t0
            build[f"workers_{workers}"] = {
                "seconds": round(sec, 2), "ms_per_participant": round(sec / args.n * 1e3, 2),
                "samples_per_s": round(args.n / sec, 1)}
        folder = os.path.join(root, "cache-w1")
        t0 = time.perf_counter()
        cache = VolumeCache.open(folder, paths, keys, name="anat")
        reopen = time.perf_counter() - t0
        figures["build"] = {
            **build,
            "size_mb": round(cache.nbytes / 1e6, 1),
            "float32_equivalent_mb": round(cache.nbytes * 2 / 1e6, 1),
            "nifti_gz_mb": round(figures["nifti_gz_mb_per_participant"] * args.n, 1),
            "dtype": str(cache.dtype), "shape": list(cache.shape),
            "max_abs_error_vs_float32": cache.max_abs_error,
        }
        figures["reopen_unchanged"] = {"seconds": round(reopen, 4), "action": cache.last_update.action}

        which = min(122, args.n - 1)
        changed, link = keys[which], paths[which]
        data = real_decode(link) * np.float32(0.9)
        os.unlink(link)
        import nibabel as nib

        nib.save(nib.Nifti1Image(data, nib.load(real[0]).affine), link)
        decoded.clear()
        t0 = time.perf_counter()
        cache = VolumeCache.open(folder, paths, keys, name="anat")
        sec = time.perf_counter() - t0
        served = cache.dataset()[which][0]
        figures["update_one_changed"] = {
            "seconds": round(sec, 3), "action": cache.last_update.action,
            "changed": changed, "decoded": cache.last_update.decoded, "decoder_calls": len(decoded),
            "served_new_values_max_abs_error": float(np.abs(served - data).max()),
        }
        extra_paths, extra_keys = _cohort(real, args.n + 10, os.path.join(root, "deriv-extra"))
        extra_paths, extra_keys = extra_paths[args.n:], extra_keys[args.n:]
        decoded.clear()
        t0 = time.perf_counter()
        ext = VolumeCache.open(folder, paths + extra_paths, keys + extra_keys, name="anat")
        sec = time.perf_counter() - t0
        figures["extend_by_10"] = {"seconds": round(sec, 3), "action": ext.last_update.action,
                                   "decoder_calls": len(decoded), "shape": list(ext.shape)}
        vd.decode_volume = real_decode
        cache = VolumeCache.open(folder, paths, keys, name="anat")

        # ------------------------------------------------ read throughput, batches of 16
        order = batch_indices(np.arange(args.n), BATCH, shuffle=True, seed=0, epoch=0)
        nifti = MultiModalData({"anat": VolumeDataset(paths)})
        ds = cache.dataset()
        store_data = MultiModalData({"anat": VolumeDataset(paths, cache=VolumeCacheStore({"anat": cache}))})
        reads = {}
        reads["a_nifti_decode_per_item"] = _rate(nifti.batch, order[:args.batches])
        _drop_pages(str(cache.array_path))
        reads["b_cache_memmap_cold"] = _rate(ds.batch, order)
        reads["b_cache_memmap_warm"] = _rate(ds.batch, order)
        reads["b_cache_float16_warm"] = _rate(lambda b: ds.batch(b, dtype=np.float16), order)
        reads["b_cache_via_group_store_per_item"] = _rate(store_data.batch, order)

        def prefetched(fetch, batches):
            t0 = time.perf_counter()
            n = 0
            with BatchPrefetcher(fetch, batches, depth=3, pin_memory=False) as feed:
                for b, _ in zip(batches, feed):
                    n += len(b)
            seconds = time.perf_counter() - t0
            return {"samples_per_s": round(n / seconds, 1), "samples": n, "seconds": round(seconds, 3)}

        reads["c_cache_prefetched_warm"] = prefetched(ds.batch, order)
        step = args.step_ms / 1e3

        def half(b):  # the stored values, for a device that converts them itself
            return ds.batch(b, dtype=np.float16)

        reads["consumer"] = {
            "step_ms": args.step_ms,
            "cache_no_prefetch": _consumer_rate(order, ds.batch, step, prefetch=False),
            "cache_prefetch": _consumer_rate(order, ds.batch, step, prefetch=True),
            "cache_float16_no_prefetch": _consumer_rate(order, half, step, prefetch=False),
            "cache_float16_prefetch": _consumer_rate(order, half, step, prefetch=True),
            "nifti_no_prefetch": _consumer_rate(order[:args.batches], nifti.batch, step, prefetch=False),
            "nifti_prefetch": _consumer_rate(order[:args.batches], nifti.batch, step, prefetch=True),
            "note": "the consumer sleeps step_ms per batch (a GPU step leaves the CPU free); the "
                    "ceiling is 1000 * batch_size / step_ms samples/s",
        }
        warm, decode = reads["b_cache_memmap_warm"], reads["a_nifti_decode_per_item"]
        reads["speedup_cache_warm_over_nifti"] = round(warm["samples_per_s"] / decode["samples_per_s"], 1)
        reads["pin_memory"] = bool(torch.cuda.is_available())
        figures["read_batches_of_16"] = reads
        figures["uint8_scaled"] = _uint8_vs_float16(real)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures["load_average_at_end"] = os.getloadavg()
    path = write_result("volume_cache", figures)
    print(path)


if __name__ == "__main__":
    main()
