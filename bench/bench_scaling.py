"""Throughput scaling: cache-build images/s and DataLoader items/s against the worker count.

    PYTHONPATH=python python bench/bench_scaling.py                    # workers 1 and 2
    PYTHONPATH=python python bench/bench_scaling.py --workers 1,2,4,8,16 --copies 8

The dataset is bench_cache.py's (every CACHE_BENCH scan of the corpus, copied --copies
times, one study per scan). For each worker count W:

* build: ``CacheManager.build_cache(num_workers=W, threads_per_image=1)`` into an empty
  cache (one kernel thread per image, so that W alone sets the parallelism; the
  library's default with one worker is all the CPUs), best of --repeats;
* items: one epoch of ``ImageDataset`` (uint8 tokens, whole volumes, flips) through a
  ``DataLoader(num_workers=W, batch_size=8, collate_fn=collate_packed)`` with persistent
  workers (batches, as training reads them: one transfer per batch), after a warm-up
  epoch, best of --repeats; W = 0 (in-process) is also reported for reference.

Printed: rate, speed-up over 1 worker and parallel efficiency (speed-up / W). The
issue's target on this 2-CPU machine: 1 -> 2 workers at least 1.7x for both.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import corpus_dir  # noqa: E402  (paths: python/, tests/)
from bench_cache import make_dataset  # noqa: E402

import torch  # noqa: E402
from neurovfm.data.cache import CacheManager  # noqa: E402
from neurovfm.datasets import ImageDataset, collate_packed  # noqa: E402

BATCH = 8


def build_rate(root: Path, workers: int, repeats: int) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(repeats):
        shutil.rmtree(root / "processed", ignore_errors=True)
        t0 = time.perf_counter()
        summary = CacheManager(root).build_cache(num_workers=workers, progress=False, threads_per_image=1)
        best = min(best, time.perf_counter() - t0)
        n = len(summary.done)
        assert not summary.failed, summary.failed
    return n / best, n


def item_rate(root: Path, workers: int, repeats: int) -> tuple[float, int]:
    ds = ImageDataset(root, img_dtype=torch.uint8, augment=True, seed=0, fallback_to_raw=False)
    kw = {"persistent_workers": True} if workers else {}
    loader = torch.utils.data.DataLoader(
        ds, batch_size=BATCH, shuffle=True, num_workers=workers, collate_fn=collate_packed, **kw
    )
    for _ in loader:  # warm-up: worker start, imports, first maps
        pass
    best = float("inf")
    for epoch in range(repeats):
        ds.set_epoch(epoch + 1)
        t0 = time.perf_counter()
        n = sum(len(b["path"]) for b in loader)
        best = min(best, time.perf_counter() - t0)
    return n / best, len(ds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    p.add_argument("--copies", type=int, default=6, help="copies of each corpus scan (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="runs per point, the best counts (default 3)")
    args = p.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",")]
    corpus = corpus_dir()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="neurovfm-bench-scaling-") as tmp:
        root = Path(tmp)
        meta = make_dataset(root, corpus, args.copies)
        print(f"dataset: {meta.num_images()} images ({args.copies} copies of the corpus scans); {os.cpu_count()} CPUs")
        builds = {w: build_rate(root, w, args.repeats) for w in counts}
        items = {w: item_rate(root, w, args.repeats) for w in [0, *counts]}
        print(
            f"\n{'workers':>7s} | {'build img/s':>11s} {'speed-up':>8s} {'eff.':>5s} | {'items/s':>8s} {'speed-up':>8s} {'eff.':>5s}"
        )
        b1, i1 = builds[counts[0]][0], items[counts[0]][0]
        print(f"{'0 (in)':>7s} | {'-':>11s} {'-':>8s} {'-':>5s} | {items[0][0]:8.1f} {'-':>8s} {'-':>5s}")
        for w in counts:
            b, i = builds[w][0], items[w][0]
            print(
                f"{w:7d} | {b:11.2f} {b / b1:7.2f}x {b / b1 / w * counts[0]:5.2f} | {i:8.1f} {i / i1:7.2f}x {i / i1 / w * counts[0]:5.2f}"
            )
        print("target here (2 CPUs): 1 -> 2 workers >= 1.7x for the build and the items")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
