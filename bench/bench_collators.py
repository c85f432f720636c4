#!/usr/bin/env python3
"""MultiViewCollator: neurovfm's against the published NeuroVFM one, on the same batches.

    PYTHONPATH=python python bench/bench_collators.py
    PYTHONPATH=python python bench/bench_collators.py --items 8 --tokens 1500 --runs 15 --threads 1
    PYTHONPATH=python python bench/bench_collators.py --dtype uint8 --patch-drop-rate 0.25

The published collator is read from the local mirror of ``MLNeurosurg/neurovfm``
(``git show HEAD:neurovfm/datasets/collators.py``, ``$NEUROVFM_PUBLISHED_REPO`` or
``/work/.mirror/MLNeurosurg+neurovfm/repo``) into a temporary folder and imported from
there; when it is not available the bench says so and times neurovfm only.

Batches: ``--items`` synthetic items of about ``--tokens`` tokens each (``--dtype``:
float32, what the published dataset and ImageDataset give by default, or uint8,
``ImageDataset(img_dtype=torch.uint8)``; grids of different sizes, ~40% background
tokens, studies of 1-3 consecutive items), for ``apply_masks_internally`` False and
True. Every output key is compared (tensors: dtype, shape and values; the rest:
``==``), with ``patch_drop_rate=0.25`` too (both collators drawing from the global torch
generator, reseeded before each). Times (``--patch-drop-rate``, default 0): the median
of ``--runs`` interleaved runs (published, ours, cat, copy, published, ours, ...).

Two floors, for ``apply_masks_internally=False``, whose output holds the concatenation
of the items' ``img`` tensors (~50 MB by default):

* ``cat``: one bare ``torch.cat`` of them, into a fresh allocation. Most of its time is
  not the copy but the fresh memory: a page fault (and the kernel zeroing the page) per
  4 KiB on first touch, and unmapping it when freed. The published collator pays it
  (its last ``torch.cat``) besides per-study copies and per-series loops.
* ``copy``: ``torch.cat(..., out=)`` into a buffer allocated once (memory already
  mapped): the memory-bandwidth bound of any collator that returns the concatenation.
  neurovfm writes into recycled memory (neurovfm's buffer cache), so this is its bound.

With ``apply_masks_internally=True`` the output holds the kept rows only; the bench
also times ``torch.index_select`` of the foreground rows (``filtered == 0``) of that
concatenation into a buffer allocated once: the bound of that mode.

Thread counts: ``--threads`` sets torch's (the published collator's copies) and
neurovfm's (its row kernel); by default each library's own (the CPUs available).
Timings on a shared machine are noisy (a busy second core stalls both libraries'
threads); compare ratios of one run, repeat runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import _common  # noqa: F401  (import paths)
import torch

import neurovfm
from neurovfm.datasets.multiview import MultiViewCollator

MIRROR = _common.PUBLISHED_REPO


def published(tmp: Path) -> ModuleType | None:
    """The published collators module (bench/_common.published_module), or None."""
    return _common.published_module("neurovfm/datasets/collators.py", tmp)


def make_batch(n_items: int, tokens: int, seed: int, dtype: torch.dtype = torch.float32) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    items, study, left = [], 0, 0
    for i in range(n_items):
        if left == 0:
            study, left = study + 1, int(torch.randint(1, 4, (1,), generator=g))
        left -= 1
        h = int(torch.randint(8, 13, (1,), generator=g))
        d = max(1, round(tokens / (h * h)))
        n = d * h * h
        img = torch.rand((n, 1024), generator=g)
        coords = torch.stack(torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(h), indexing="ij"), -1)
        items.append(
            {
                "img": img.mul_(255).to(dtype) if dtype == torch.uint8 else img.to(dtype),
                "coords": coords.reshape(-1, 3).to(torch.int32),
                "filtered": (torch.rand(n, generator=g) < 0.4).to(torch.uint8),
                "size": torch.tensor([d, h, h], dtype=torch.int32),
                "path": f"s{study}/img{i}",
                "study": f"s{study}",
                "mode": "ct" if i % 2 else "mri",
                "window": "brain",
                "label": float(study % 2),
            }
        )
    return items


def compare(ours: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    bad = [f"keys: ours only {sorted(set(ours) - set(ref))}, published only {sorted(set(ref) - set(ours))}"]
    bad = bad if set(ours) != set(ref) else []
    for k in sorted(set(ours) & set(ref)):
        a, b = ours[k], ref[k]
        if torch.is_tensor(b):
            if not torch.is_tensor(a) or a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
                bad.append(f"{k}: {getattr(a, 'dtype', type(a))} {getattr(a, 'shape', '')} vs {b.dtype} {b.shape}")
        elif type(a) is not type(b) or a != b:
            bad.append(f"{k}: {a!r} vs {b!r}")
    return bad


def timed(fns: list[Callable[[], object]], runs: int) -> list[float]:
    ts: list[list[float]] = [[] for _ in fns]
    for f in fns:  # warm-up
        f()
    for _ in range(runs):
        for t, f in zip(ts, fns):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in ts]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=1500)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch and neurovfm threads (default: their own)")
    ap.add_argument("--dtype", choices=("float32", "uint8"), default="float32", help="the items' img dtype")
    ap.add_argument("--patch-drop-rate", type=float, default=0.0, help="patch_drop_rate of the timed collators")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        neurovfm.set_num_threads(args.threads)
    batch = make_batch(args.items, args.tokens, 0, getattr(torch, args.dtype))
    n_tok = sum(int(it["img"].shape[0]) for it in batch)
    n_studies = len({it["study"] for it in batch})
    mb = sum(it["img"].numel() * it["img"].element_size() for it in batch) / 1e6
    print(
        f"batch: {len(batch)} items, {n_studies} studies, {n_tok} tokens ({args.dtype}, {mb:.1f} MB); "
        f"patch_drop_rate {args.patch_drop_rate}; threads: torch {torch.get_num_threads()}, "
        f"neurovfm {neurovfm.get_num_threads()}"
    )
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        pub = published(Path(tmp))
        if pub is None:
            print(f"published collator unavailable (no mirror at {MIRROR}): timing neurovfm only")
        for internal in (False, True):
            p_drop = args.patch_drop_rate
            ours = MultiViewCollator(patch_drop_rate=p_drop, apply_masks_internally=internal)
            label = f"apply_masks_internally={internal}"
            if pub is None:
                (t,) = timed([lambda: ours(batch)], args.runs)
                print(f"{label}: neurovfm {t * 1e3:.2f} ms")
                continue
            ref = pub.MultiViewCollator(patch_drop_rate=p_drop, apply_masks_internally=internal)
            torch.manual_seed(0)
            mine = ours(batch)
            torch.manual_seed(0)
            bad = compare(mine, ref(batch))
            del mine
            for p in (0.25,):
                torch.manual_seed(1)
                a = MultiViewCollator(patch_drop_rate=p, apply_masks_internally=internal)(batch)
                torch.manual_seed(1)
                b = pub.MultiViewCollator(patch_drop_rate=p, apply_masks_internally=internal)(batch)
                bad += [f"patch_drop_rate={p}: {m}" for m in compare(a, b)]
            empty = MultiViewCollator(apply_masks_internally=internal)
            bad += [f"empty batch: {m}" for m in compare(empty([]), ref([])) if not m.startswith("keys")]
            failures += len(bad)
            print(f"{label}: outputs " + ("equal on every key" if not bad else "DIFFER: " + "; ".join(bad)))
            imgs = [it["img"] for it in batch]
            warm = torch.cat(imgs)
            fns = [lambda: ref(batch), lambda: ours(batch), lambda: torch.cat(imgs), lambda: torch.cat(imgs, out=warm)]
            if internal:  # the foreground rows of the concatenation, gathered into memory allocated once
                fg = torch.nonzero(torch.cat([it["filtered"] for it in batch]) == 0).flatten()
                kept = warm[fg]
                fns.append(lambda: torch.index_select(warm, 0, fg, out=kept))
            t_pub, t_ours, t_cat, t_copy, *t_kept = timed(fns, args.runs)
            gather = f", foreground rows gathered into warm memory {t_kept[0] * 1e3:.2f} ms" if t_kept else ""
            print(
                f"{label}: neurovfm {t_ours * 1e3:.2f} ms, published {t_pub * 1e3:.2f} ms, "
                f"ratio {t_pub / t_ours:.2f}x (floors, all img tensors: bare torch.cat {t_cat * 1e3:.2f} ms, "
                f"copy into warm memory {t_copy * 1e3:.2f} ms{gather})"
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
