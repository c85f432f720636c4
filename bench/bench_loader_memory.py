#!/usr/bin/env python3
"""DataLoader load: ImageDataset over a few hundred cached items with several
workers, epoch after epoch, beside a reference-style dataset (``torch.load`` of the
same ``.pt`` files without mmap, float ``/ 255`` and ``unfold`` into 4x16x16 tokens).

    PYTHONPATH=python python bench/bench_loader_memory.py                  # 300 items, 3 workers, 5 epochs
    PYTHONPATH=python python bench/bench_loader_memory.py --items 600 --workers 4 --epochs 8
    PYTHONPATH=python python bench/bench_loader_memory.py --data-dir /data/ds   # an existing cache

Prints, per epoch and for both: items/s, the main process's and the workers'
anonymous (heap) memory, the workers' peak open descriptors and mapped cache files,
and the ratio of items/s. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from _common import ROOT  # noqa: E402,F401  (paths: python/, tests/)

import torch  # noqa: E402

import loadprobe  # noqa: E402
from cachefaults import make_dataset  # noqa: E402
from neurovfm.data.cache import CacheManager  # noqa: E402
from neurovfm.datasets import ImageDataset, collate_packed  # noqa: E402


class ReferenceStyleDataset(torch.utils.data.Dataset):
    """What a seed-style loader does with the same cache: torch.load (a private copy
    of every file per item), float32 / 255, tokens by unfold."""

    def __init__(self, data_dir):
        self.cm = CacheManager(data_dir)
        self.items = []
        for study in self.cm.metadata:
            for rec in study.images:
                key = "brain" if study.mode == "ct" else "volume"
                name = self.cm.file_names(rec.name, study.mode)[key]
                self.items.append(os.path.join(self.cm.processed_dir, study.name, name))

    def __len__(self):
        return len(self.items)

    def set_epoch(self, epoch):
        pass

    def __getitem__(self, i):
        vol = torch.load(self.items[i], weights_only=True).float() / 255
        d, h, w = vol.shape[1:]
        t = vol[0].unfold(0, 4, 4).unfold(1, 16, 16).unfold(2, 16, 16).reshape(-1, 1024).clone()
        return {"img": t, "path": self.items[i]}


def reference_collate(items):
    return {"img": torch.cat([it["img"] for it in items]), "path": [it["path"] for it in items]}


def _row(name, r):
    workers = r["workers"]
    anon = sum(w["anon_mb"] for w in workers)
    return (
        f"{name:10s} epoch {r['epoch']}: {r['items'] / r['seconds']:8.1f} items/s | main heap "
        f"{r['main']['anon_mb']:7.1f} MB | workers' heap {anon:7.1f} MB ({len(workers)}) | "
        f"peak fds/worker {r['peak_worker_fds']:3d} | peak mapped cache files/worker {r['peak_worker_cache_maps']}"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument(
        "--size",
        type=int,
        nargs=3,
        default=(192, 192, 40),
        metavar=("X", "Y", "Z"),
        help="synthetic volumes: voxels at 1x1x4 mm (default: a head CT's 192 192 40)",
    )
    ap.add_argument("--batch-size", type=int, default=8, help="0: one item at a time (batch_size=None)")
    ap.add_argument("--data-dir", help="an existing dataset with a built cache (default: a synthetic one)")
    args = ap.parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("bench_loader_memory.py reads /proc: Linux only", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_dir
        if root is None:
            root = tmp
            make_dataset(root, n_ct=args.items // 2, n_mri=args.items - args.items // 2, size=tuple(args.size))
            CacheManager(root).build_cache(num_workers=2, progress=False)
        print(
            f"cache: {loadprobe.cache_bytes(root) / 2**20:.1f} MB of .pt files, {args.workers} workers, "
            f"batches of {args.batch_size or 'one item (batch_size=None)'}"
        )
        bs = args.batch_size or None
        ours = loadprobe.run_epochs(
            ImageDataset(root, fallback_to_raw=False, seed=0),
            args.epochs,
            args.workers,
            True,
            batch_size=bs,
            collate_fn=collate_packed if bs else None,
        )
        ref = loadprobe.run_epochs(
            ReferenceStyleDataset(root),
            args.epochs,
            args.workers,
            True,
            batch_size=bs,
            collate_fn=reference_collate if bs else None,
        )
        for a, b in zip(ours, ref):
            print(_row("neurovfm", a))
            print(_row("reference", b))
        for name, runs in (("neurovfm", ours), ("reference", ref)):
            grow = sum(w["anon_mb"] for w in runs[-1]["workers"]) - sum(w["anon_mb"] for w in runs[1]["workers"])
            print(f"{name}: workers' heap growth from epoch 1 to {args.epochs - 1}: {grow:+.1f} MB")
        rate = [sorted(r["items"] / r["seconds"] for r in runs[1:])[len(runs[1:]) // 2] for runs in (ours, ref)]
        print(
            f"items/s (median of epochs 1..): neurovfm {rate[0]:.1f}, reference {rate[1]:.1f}, ratio {rate[0] / rate[1]:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
