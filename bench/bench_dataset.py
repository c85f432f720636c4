#!/usr/bin/env python3
"""Training items: neurovfm's ImageDataset against the reference item, in one run.

    PYTHONPATH=python python bench/bench_dataset.py                 # threads 1 and 2
    PYTHONPATH=python python bench/bench_dataset.py --threads 1 --reps 20 --epochs 4
    PYTHONPATH=python python bench/bench_dataset.py --quick         # 1 thread, short blocks (neurovfm bench)

Dataset: real corpus scans (CT 1 mm head, tilted head CT, sagittal MPRAGE, contrast
T1, stroke T1), cached once by CacheManager in a temporary folder.

* reference item (the seed pipeline): ``torch.load`` of a reference cache file (a
  dict ``{"data": uint8 tensor [1, D, H, W], ...}`` and a mask dict, saved by
  ``torch.save``, loaded without mmap), crop view -> ``.float() / 255`` (on the
  crop only, which favours the reference) -> ``torch.transpose``/``torch.flip``
  -> einops-style ``reshape/permute/reshape`` into ``[N, 1024]`` tokens, the
  token flags cropped/flipped the same way, coords from ``meshgrid``. Same plan
  (window, crop, swap, flips) as the neurovfm item it is compared with; outputs
  are checked equal.
* neurovfm: ``ImageDataset.__getitem__`` (memory-mapped cache + one fused pass),
  float32 or uint8 tokens.
* floor: a plain copy (``ndarray.copy``) of the item's float32 token bytes.

Timed: ``__getitem__`` in this process (each variant runs all items as one
block, blocks alternate ``--runs`` times and the fastest block of each counts,
which resists preemption on a shared machine; kernel threads and torch threads
both set to ``--threads``), and the same through a DataLoader with 2 workers
(persistent workers, one warm-up pass, best of ``--loader-passes``; 1 kernel
thread per worker): items one by one (``batch_size=None``), and batches of 4
items collated (neurovfm: ``collate_packed``, which allocates in shared memory
inside workers; reference: ``torch.cat`` of the items). Prints items/s, token bytes/s
and ratios; per image, the item time against the floor, and the fused kernel
alone (volume already mapped and resident) against the floor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import corpus_dir, set_threads  # noqa: E402  (paths: python/, tests/)

import neurovfm  # noqa: E402
import torch  # noqa: E402
from corpus import DATASET_BENCH  # noqa: E402  (tests/corpus.py: the corpus lists)

from neurovfm import _core  # noqa: E402
from neurovfm.data.cache import CacheManager
from neurovfm.data.cache.entry import MapCache  # noqa: E402
from neurovfm.data.metadata import DatasetMetadata  # noqa: E402
from neurovfm.datasets import ImageDataset, collate_packed  # noqa: E402

SCANS = [(mode, rel) for rel, mode in DATASET_BENCH]


# --- the reference ------------------------------------------------------------------------------


def write_reference_cache(cm: CacheManager, out: Path) -> None:
    """One torch.save'd dict per cached file, as the seed pipeline stores them."""
    for study in cm.metadata:
        for rec in study.images:
            keys = ["brain", "blood", "bone"] if study.mode == "ct" else ["volume"]
            (out / study.name).mkdir(parents=True, exist_ok=True)
            for key in keys + ["mask"]:
                arr, side = cm.open_uint8(study.name, rec.name, key)
                name = side["files"][key]["name"]
                field = "mask" if key == "mask" else "data"
                torch.save(
                    {field: torch.from_numpy(np.array(arr)), "view": side["view"], "mode": study.mode},
                    out / study.name / name,
                )


def reference_item(folder: Path, item_like: dict, dtype=torch.float32) -> dict:
    study, image = item_like["path"].split("/")
    key = f"_{item_like['window']}" if item_like["mode"] == "ct" else ""
    d = torch.load(folder / study / f"{image}{key}.pt", weights_only=True)
    m = torch.load(folder / study / f"{image}_mask.pt", weights_only=True)
    x, f = d["data"], m["mask"]
    (d0, h0, w0), (sd, sh, sw) = item_like["crop"]
    x = x[:, d0 * 4 : (d0 + sd) * 4, h0 * 16 : (h0 + sh) * 16, w0 * 16 : (w0 + sw) * 16]
    f = f[d0 : d0 + sd, h0 : h0 + sh, w0 : w0 + sw]
    if dtype == torch.float32:
        x = x.float() / 255
    if item_like["transpose"]:
        x, f = x.transpose(2, 3), f.transpose(1, 2)
    dims = [k for k in range(3) if item_like["flips"][k]]
    if dims:
        x, f = torch.flip(x, [k + 1 for k in dims]), torch.flip(f, dims)
    c, D, H, W = x.shape
    tokens = (
        x.reshape(c, D // 4, 4, H // 16, 16, W // 16, 16).permute(1, 3, 5, 0, 2, 4, 6).reshape(-1, c * 4 * 16 * 16)
    )  # (d h w) (c pd ph pw)
    g = f.shape
    coords = torch.stack(
        torch.meshgrid(torch.arange(g[0]), torch.arange(g[1]), torch.arange(g[2]), indexing="ij"), -1
    ).reshape(-1, 3)
    return {
        "img": tokens,
        "coords": coords,
        "filtered": f.reshape(-1).clone(),
        "size": torch.tensor(g, dtype=torch.int32),
        "path": item_like["path"],
    }


class RefDataset(torch.utils.data.Dataset):
    """The reference items for a fixed list of plans (what neurovfm drew)."""

    def __init__(self, folder, plans, dtype=torch.float32):
        self.folder, self.plans, self.dtype = folder, plans, dtype

    def __len__(self):
        return len(self.plans)

    def __getitem__(self, k):
        return reference_item(self.folder, self.plans[k], self.dtype)


class EpochPairs(torch.utils.data.Dataset):
    """ImageDataset items for a fixed list of (index, epoch) pairs."""

    def __init__(self, ds, pairs):
        self.ds, self.pairs = ds, pairs

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, k):
        i, e = self.pairs[k]
        return self.ds.get_item(i, e)


def _plan(item):
    return {k: item[k] for k in ("path", "mode", "window", "crop", "transpose", "flips")}


# --- timing -------------------------------------------------------------------------------------


def time_in_process(ds, ds8, ref_dir, pairs, runs=5):
    """Each side runs all items (index, epoch) as one block; blocks alternate (ref f32,
    ours f32, ref u8, ours u8) ``runs`` times and each side's fastest block counts
    (robust to preemption on a shared machine). The reference follows the plans
    neurovfm drew. Returns ({side: seconds}, float32 token bytes)."""
    plans = [_plan(ds.get_item(i, e)) for i, e in pairs]
    nbytes = sum(ds.get_item(i, e)["img"].numel() * 4 for i, e in pairs)

    def run(fn, args):  # each result is dropped before the next, as a training loop consumes items
        for a in args:
            fn(*a)

    blocks = {
        "ref": lambda: run(reference_item, [(ref_dir, p) for p in plans]),
        "ours": lambda: run(ds.get_item, pairs),
        "ref8": lambda: run(reference_item, [(ref_dir, p, torch.uint8) for p in plans]),
        "ours8": lambda: run(ds8.get_item, pairs),
    }
    best = {k: float("inf") for k in blocks}
    for _ in range(runs):
        for k, fn in blocks.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best, nbytes


def reference_collate(items):
    """What a seed training loop does with variable-length items: concatenate."""
    lengths = torch.tensor([len(it["filtered"]) for it in items])
    cu = torch.zeros(len(items) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0)
    return {
        "img": torch.cat([it["img"] for it in items]),
        "coords": torch.cat([it["coords"] for it in items]),
        "filtered": torch.cat([it["filtered"] for it in items]),
        "cu_seqlens": cu,
        "path": [it["path"] for it in items],
    }


def time_loader(dataset, workers, passes, batch=None, collate=None):
    """Best of ``passes`` passes (after a warm-up pass) through a DataLoader: (seconds, items per pass).
    ``batch``: items per batch (fixed consecutive batches) with ``collate``; None: items one by one."""
    if batch is None:
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=workers, persistent_workers=True, shuffle=False
        )
    else:
        batches = [list(range(k, min(k + batch, len(dataset)))) for k in range(0, len(dataset), batch)]
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, num_workers=workers, persistent_workers=True, collate_fn=collate
        )
    n = len(dataset)
    for _ in loader:  # warm-up: starts the workers, warms the page cache
        pass
    best = float("inf")
    for _ in range(passes):
        t0 = time.perf_counter()
        for _ in loader:
            pass
        best = min(best, time.perf_counter() - t0)
    return best, n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="kernel/torch thread counts for the in-process runs")
    ap.add_argument("--reps", type=int, default=4, help="passes over the images per block (whole volume)")
    ap.add_argument("--epochs", type=int, default=8, help="epochs of crop+augment draws per block")
    ap.add_argument("--runs", type=int, default=5, help="alternating blocks per variant (the fastest counts)")
    ap.add_argument("--loader-passes", type=int, default=3, help="DataLoader passes (the best counts)")
    ap.add_argument("--calls", type=int, default=30, help="calls per image in the per-image table (median)")
    ap.add_argument(
        "--quick", action="store_true", help="--threads 1 --reps 1 --epochs 2 --runs 2 --loader-passes 1 --calls 10"
    )
    ap.add_argument("--data", default=str(corpus_dir()), help="the corpus (default $NEUROVFM_TEST_DATA)")
    args = ap.parse_args(argv)
    if args.quick:
        args.threads, args.reps, args.epochs, args.runs, args.loader_passes, args.calls = "1", 1, 2, 2, 1, 10
    corpus = Path(args.data)
    present = [rel for _, rel in SCANS if (corpus / rel).exists()]
    if not present:
        print(f"dataset benchmark skipped: none of its scans is in the corpus at {corpus}; set NEUROVFM_TEST_DATA")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="neurovfm-bench-dataset-"))
    try:
        modes = {}
        for i, (mode, rel) in enumerate(SCANS):
            if not (corpus / rel).exists():
                print(f"skipping missing {rel}")
                continue
            d = tmp / "raw" / f"s{i}"
            d.mkdir(parents=True)
            os.symlink(corpus / rel, d / os.path.basename(rel))
            modes[f"s{i}"] = mode
        DatasetMetadata.from_directory(tmp, modes).save()
        cm = CacheManager(tmp)
        s = cm.build_cache(2, progress=False)
        assert not s.failed, s.failed
        ref_dir = tmp / "ref_processed"
        write_reference_cache(cm, ref_dir)

        kw = {"seed": 0, "threads": 1}
        ds = ImageDataset(tmp, **kw)
        print(
            f"dataset: {len(ds)} images, {sum(ds[i]['img'].shape[0] for i in range(len(ds)))} tokens in all; "
            f"device: {os.cpu_count()} CPUs; kernels: AVX used when present"
        )
        # correctness first: the reference gives the same items
        for crop_aug in (False, True):
            d = ImageDataset(tmp, random_crop=crop_aug, augment=crop_aug, **kw)
            for i in range(len(d)):
                ours = d[i]
                ref = reference_item(ref_dir, _plan(ours))
                for k in ("img", "filtered", "size"):
                    assert torch.equal(ours[k], ref[k].to(ours[k].dtype)), (ours["path"], k)
                assert torch.equal(ours["coords"].long(), ref["coords"])
        print("outputs agree (tokens, flags, coords, size; whole volume and crop+augment)\n")

        n = len(ds)
        variants = {
            "whole volume": ([(i, 0) for _ in range(args.reps) for i in range(n)], {}),
            "crop+augment": (
                [(i, e) for e in range(args.epochs) for i in range(n)],
                {"random_crop": True, "augment": True},
            ),
        }
        rows = []
        for threads in [int(t) for t in args.threads.split(",")]:
            set_threads(threads, torch_too=True)
            for vname, (pairs, extra) in variants.items():
                d32 = ImageDataset(tmp, seed=0, **extra)
                d8 = ImageDataset(tmp, seed=0, img_dtype=torch.uint8, **extra)
                time_in_process(d32, d8, ref_dir, pairs[:n], 1)  # warm-up
                t, nbytes = time_in_process(d32, d8, ref_dir, pairs, args.runs)
                rows.append((f"in-process, {threads} thr", vname, len(pairs), nbytes, t))

        # DataLoader, 2 workers (1 kernel thread and 1 torch thread per worker)
        torch.set_num_threads(1)
        neurovfm.set_num_threads(None)
        for vname, (pairs, extra) in variants.items():
            pairs = pairs[: n * max(1, min(len(pairs) // n, 5))]
            d32 = ImageDataset(tmp, seed=0, **extra)
            d8 = ImageDataset(tmp, seed=0, img_dtype=torch.uint8, **extra)
            plans = []
            nbytes = 0
            for i, e in pairs:
                it = d32.get_item(i, e)
                plans.append(_plan(it))
                nbytes += it["img"].numel() * 4
            t = {}
            t["ref"], cnt = time_loader(RefDataset(ref_dir, plans), 2, args.loader_passes)
            t["ours"], _ = time_loader(EpochPairs(d32, pairs), 2, args.loader_passes)
            t["ref8"], _ = time_loader(RefDataset(ref_dir, plans, torch.uint8), 2, args.loader_passes)
            t["ours8"], _ = time_loader(EpochPairs(d8, pairs), 2, args.loader_passes)
            rows.append(("DataLoader, 2 workers", vname, cnt, nbytes, t))
            t = {}
            t["ref"], cnt = time_loader(RefDataset(ref_dir, plans), 2, args.loader_passes, 4, reference_collate)
            t["ours"], _ = time_loader(EpochPairs(d32, pairs), 2, args.loader_passes, 4, collate_packed)
            t["ref8"], _ = time_loader(
                RefDataset(ref_dir, plans, torch.uint8), 2, args.loader_passes, 4, reference_collate
            )
            t["ours8"], _ = time_loader(EpochPairs(d8, pairs), 2, args.loader_passes, 4, collate_packed)
            rows.append(("DataLoader 2w, batch 4", vname, cnt, nbytes, t))

        print(
            f"{'run':24s} {'items':14s} {'n':>5s} | {'ref f32':>9s} {'ours f32':>9s} {'ratio':>6s} | "
            f"{'ref u8':>9s} {'ours u8':>9s} {'vs ref f32':>10s} {'vs ref u8':>9s} | {'ours f32 GB/s':>13s}"
        )
        print(
            f"{'':24s} {'':14s} {'':>5s} | {'items/s':>9s} {'items/s':>9s} {'':>6s} | {'items/s':>9s} "
            f"{'items/s':>9s} {'':>10s} {'':>9s} | {'tokens':>13s}"
        )
        for run, vname, cnt, nbytes, t in rows:
            r, o, r8, o8 = (cnt / t[k] for k in ("ref", "ours", "ref8", "ours8"))
            print(
                f"{run:24s} {vname:14s} {cnt:5d} | {r:9.1f} {o:9.1f} {o / r:5.1f}x | {r8:9.1f} {o8:9.1f} "
                f"{o8 / r:9.1f}x {o8 / r8:8.1f}x | {nbytes / t['ours'] / 1e9:13.2f}"
            )
        print("targets: ours f32 >= 3x ref f32; ours u8 >= 10x ref f32 (the seed's item)")

        print(f"\nper image, whole volume, float32 tokens (median of {args.calls} calls, 1 thread): item vs floor")
        torch.set_num_threads(1)
        neurovfm.set_num_threads(1)
        print(
            f"  {'image':38s} {'tokens':>6s} {'MB':>6s} {'ref ms':>8s} {'ours ms':>8s} {'u8 ms':>7s} "
            f"{'copy ms':>8s} {'ours/copy':>9s} {'kernel ms':>9s} {'kernel/copy':>11s} "
            f"{'u8 copy ms':>10s} {'u8/copy':>7s} {'u8 anew ms':>10s}"
        )
        d8 = ImageDataset(tmp, seed=0, img_dtype="uint8", threads=1)
        cold = ImageDataset(tmp, seed=0, img_dtype="uint8", threads=1)
        cold._maps = MapCache(0)  # every file mapped anew (a dataset larger than the map cache)
        for i in range(n):
            it = ds[i]
            src = it["img"].numpy().copy()
            src8 = d8[i]["img"].numpy().copy()
            plan = _plan(it)
            tr, to, t8, tc, tk, tc8, tcold = [], [], [], [], [], [], []
            key = it["window"] or "volume"
            vol, flags, _geom = ds._volume(i, key)
            np.asarray(vol).sum()  # pages resident in this process
            for _ in range(args.calls):
                a = time.perf_counter()
                reference_item(ref_dir, plan)
                b = time.perf_counter()
                ds[i]
                c = time.perf_counter()
                d8[i]
                d = time.perf_counter()
                src.copy()
                e = time.perf_counter()
                _core.make_item(vol, flags, None, None, False, (False, False, False), "float32", True, 1)
                f = time.perf_counter()
                src8.copy()
                g = time.perf_counter()
                cold[i]
                h = time.perf_counter()
                tc8.append(g - f)
                tcold.append(h - g)
                tr.append(b - a)
                to.append(c - b)
                t8.append(d - c)
                tc.append(e - d)
                tk.append(f - e)
            med = [statistics.median(x) * 1e3 for x in (tr, to, t8, tc, tk, tc8, tcold)]
            print(
                f"  {it['path'] + ' ' + str(tuple(it['size'].tolist())):38s} {src.shape[0]:6d} "
                f"{src.nbytes / 1e6:6.2f} {med[0]:8.3f} {med[1]:8.3f} {med[2]:7.3f} {med[3]:8.3f} "
                f"{med[1] / med[3]:9.2f} {med[4]:9.3f} {med[4] / med[3]:11.2f} "
                f"{med[5]:10.3f} {med[2] / med[5]:7.2f} {med[6]:10.3f}"
            )
        print(
            "target: ours/copy <= 1.5 (the item: open + map the cached files, page faults, fused pass, dict);\n"
            "kernel = the fused pass alone on a volume already mapped and resident; u8 copy = a copy of\n"
            "the uint8 item's token bytes (its floor, target u8/copy <= 1.5); u8 anew = the uint8 item\n"
            "with every file mapped anew (entry.MapCache(0): a dataset larger than the map cache)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
