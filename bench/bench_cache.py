#!/usr/bin/env python3
"""Cache build and cached-volume load: neurovfm's CacheManager against the
reference procedure (SimpleITK pipeline + torch.save of dicts, a process pool of
the same size), on one dataset of real scans, in one run.

    PYTHONPATH=python python bench/bench_cache.py                 # 2 workers, 12+ images
    PYTHONPATH=python python bench/bench_cache.py --workers 2 --copies 2 --repeats 3
    PYTHONPATH=python python bench/bench_cache.py --quick         # 1 copy, 1 run, 10 loads

Prints images per second for both, the ratio, bytes on disk for both, and the
time to load one cached CT window and one MRI volume both ways beside the floor
(a plain copy of the float32 output).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from _common import corpus_dir, median_time  # noqa: E402  (paths: python/, tests/)

import reference as R  # noqa: E402  (tests/reference.py: the reference pipeline)
from corpus import CACHE_BENCH  # noqa: E402  (tests/corpus.py: the corpus lists)

from neurovfm.data.cache import CacheManager  # noqa: E402
from neurovfm.data.metadata import DatasetMetadata  # noqa: E402

# (study mode, corpus path); each is copied --copies times as separate studies.
SCANS = [(mode, rel) for rel, mode in CACHE_BENCH]


# --- the reference procedure (seed pipeline) -------------------------------------------------
# SimpleITK read + DICOMOrient + B-spline Resample + crop and the NumPy prepare
# are the tests' reference (tests/reference.py); the cache part is the seed's:
# torch.save of a dict per file, a process pool.


def _ref_build_one(job):
    import torch

    src, out_dir, name, mode = job
    img = R.ref_preprocess(R.ref_read(src))
    outs, mask, view = R.ref_cache(img, mode)  # (arr * 255).astype(np.uint8) of the float64 arrays
    os.makedirs(out_dir, exist_ok=True)
    meta = {"view": view, "spacing": img.GetSpacing(), "mode": mode}
    keys = ["brain", "blood", "bone"] if mode == "ct" else [None]
    for key, arr in zip(keys, outs):
        fn = f"{name}_{key}.pt" if key else f"{name}.pt"
        torch.save({"data": torch.from_numpy(arr), **meta}, os.path.join(out_dir, fn))
    torch.save({"mask": torch.from_numpy(mask), **meta}, os.path.join(out_dir, f"{name}_mask.pt"))
    return name


def _init_worker(threads):
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def ref_build(jobs, workers):
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(1,)) as ex:
        list(ex.map(_ref_build_one, jobs))


# --- helpers ---------------------------------------------------------------------------------


def _du(path):
    total = 0
    for root, _d, files in os.walk(path):
        for f in files:
            if f.endswith(".pt"):
                total += os.path.getsize(os.path.join(root, f))
    return total


def make_dataset(root: Path, corpus: Path, copies: int):
    raw = root / "raw"
    modes = {}
    for c in range(copies):
        for i, (mode, rel) in enumerate(SCANS):
            src = corpus / rel
            if not src.exists():
                continue
            study = f"s{c}_{i}"
            d = raw / study
            d.mkdir(parents=True)
            dst = d / os.path.basename(rel)
            # copies, not links: the page cache sees distinct files as in a real dataset
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                shutil.copy(src, dst)
            modes[study] = mode
    meta = DatasetMetadata.from_directory(root, modes)
    meta.save()
    return meta


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--copies", type=int, default=2, help="copies of the scan list (9 scans each)")
    ap.add_argument("--repeats", type=int, default=3, help="build runs per side (median)")
    ap.add_argument("--loads", type=int, default=50, help="timed cached loads (median)")
    ap.add_argument("--quick", action="store_true", help="--copies 1 --repeats 1 --loads 10")
    ap.add_argument("--data", default=str(corpus_dir()), help="the corpus (default $NEUROVFM_TEST_DATA)")
    args = ap.parse_args(argv)
    if args.quick:
        args.copies, args.repeats, args.loads = 1, 1, 10
    corpus = Path(args.data)
    missing = [rel for _, rel in SCANS if not (corpus / rel).exists()]
    if missing:
        print(
            f"cache benchmark skipped: the real-scan corpus is not at {corpus} (missing {missing[0]}); "
            "set NEUROVFM_TEST_DATA"
        )
        return 0
    import torch

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="neurovfm-bench-cache-"))
    try:
        meta = make_dataset(tmp, corpus, args.copies)
        n_images = meta.num_images()
        jobs = []
        for s in meta:
            for im in s.images:
                jobs.append((str(tmp / im.path), str(tmp / "ref_processed" / s.name), im.name, s.mode))
        print(f"dataset: {len(meta)} studies, {n_images} images (real scans, copies), {args.workers} workers")
        # warm the page cache and both code paths once
        ref_build(jobs[:2], args.workers)
        cm = CacheManager(tmp)
        cm.build_cache(args.workers, force=True, study_names=[meta.get_all_studies()[0].name], progress=False)
        ref_t, our_t = [], []
        for _ in range(args.repeats):  # interleaved
            shutil.rmtree(tmp / "ref_processed", ignore_errors=True)
            t = time.perf_counter()
            ref_build(jobs, args.workers)
            ref_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            s = cm.build_cache(args.workers, force=True, progress=False)
            our_t.append(time.perf_counter() - t)
            assert not s.failed, s.failed
        rt, ot = statistics.median(ref_t), statistics.median(our_t)
        print("\ncache build (median of %d, interleaved)" % args.repeats)
        print(f"  reference : {rt:7.2f} s  {n_images / rt:7.2f} images/s")
        print(f"  neurovfm  : {ot:7.2f} s  {n_images / ot:7.2f} images/s")
        print(f"  ratio     : {rt / ot:7.1f}x   (target >= 15x)")
        rb, ob = _du(tmp / "ref_processed"), _du(tmp / "processed")
        print(f"  bytes on disk: reference {rb / 1e6:.1f} MB, neurovfm {ob / 1e6:.1f} MB ({ob / rb:.3f}x)")

        print(f"\ncached volume load (median of {args.loads}; page cache warm)")
        ct = next(s for s in meta if s.mode == "ct" and "phantom_head_1mm" in s.images[0].path)
        mr = next(s for s in meta if s.mode == "mri" and "sag_mprage" in s.images[0].path)
        for study, key, win in ((ct, "brain", "brain"), (mr, None, None)):
            name = study.images[0].name
            fn = f"{name}_{key}.pt" if key else f"{name}.pt"
            ref_path = tmp / "ref_processed" / study.name / fn

            def ref_load():
                d = torch.load(ref_path, weights_only=True)
                return d["data"].float() / 255

            def our_load():
                return cm.load_image(study.name, name, window=win)

            out = our_load()["data"]
            assert np.array_equal(out.numpy(), ref_load().numpy())
            floor_src = out.numpy().copy()
            tr = median_time(ref_load, args.loads)
            to = median_time(our_load, args.loads)
            tf = median_time(floor_src.copy, args.loads)
            label = f"{study.mode} {name} {tuple(out.shape)}"
            print(f"  {label}")
            print(f"    torch.load(dict) + float : {tr * 1e3:7.2f} ms")
            print(f"    CacheManager.load_image  : {to * 1e3:7.2f} ms   ratio {tr / to:5.1f}x (target >= 3x)")
            print(f"    floor (copy of output)   : {tf * 1e3:7.2f} ms   ours/floor {to / tf:5.2f} (target <= 1.5)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
