#!/usr/bin/env python3
"""MultiViewCollator: neurovfm's against the published NeuroVFM one, on the same batches.

    PYTHONPATH=python python bench/bench_collators.py
    PYTHONPATH=python python bench/bench_collators.py --items 8 --tokens 1500 --runs 15 --threads 1

The published collator is read from the local mirror of ``MLNeurosurg/neurovfm``
(``git show HEAD:neurovfm/datasets/collators.py``, ``$NEUROVFM_PUBLISHED_REPO`` or
``/work/.mirror/MLNeurosurg+neurovfm/repo``) into a temporary folder and imported from
there; when it is not available the bench says so and times neurovfm only.

Batches: ``--items`` synthetic float32 items of about ``--tokens`` tokens each (grids
of different sizes, ~40% background tokens, studies of 1-3 consecutive items), for
``apply_masks_internally`` False and True. Every output key is compared (tensors: dtype,
shape and values; the rest: ``==``), with ``patch_drop_rate=0.25`` too (both collators
drawing from the global torch generator, reseeded before each). Times: the median of
``--runs`` interleaved runs (published, ours, floor, published, ours, floor, ...), where
the floor is one ``torch.cat`` of the items' ``img`` tensors: with
``apply_masks_internally=False`` the output holds that concatenation, so no collator
can beat it; its cost (a fresh ~50 MB allocation, page faults included) varies with the
allocator's state and bounds the attainable ratio.
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

from neurovfm.datasets.multiview import MultiViewCollator

MIRROR = _common.PUBLISHED_REPO


def published(tmp: Path) -> ModuleType | None:
    """The published collators module (bench/_common.published_module), or None."""
    return _common.published_module("neurovfm/datasets/collators.py", tmp)


def make_batch(n_items: int, tokens: int, seed: int) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    items, study, left = [], 0, 0
    for i in range(n_items):
        if left == 0:
            study, left = study + 1, int(torch.randint(1, 4, (1,), generator=g))
        left -= 1
        h = int(torch.randint(8, 13, (1,), generator=g))
        d = max(1, round(tokens / (h * h)))
        n = d * h * h
        coords = torch.stack(torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(h), indexing="ij"), -1)
        items.append(
            {
                "img": torch.rand((n, 1024), generator=g),
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
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = make_batch(args.items, args.tokens, 0)
    n_tok = sum(int(it["img"].shape[0]) for it in batch)
    n_studies = len({it["study"] for it in batch})
    print(f"batch: {len(batch)} items, {n_studies} studies, {n_tok} tokens; torch threads {torch.get_num_threads()}")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        pub = published(Path(tmp))
        if pub is None:
            print(f"published collator unavailable (no mirror at {MIRROR}): timing neurovfm only")
        for internal in (False, True):
            ours = MultiViewCollator(apply_masks_internally=internal)
            label = f"apply_masks_internally={internal}"
            if pub is None:
                (t,) = timed([lambda: ours(batch)], args.runs)
                print(f"{label}: neurovfm {t * 1e3:.2f} ms")
                continue
            ref = pub.MultiViewCollator(apply_masks_internally=internal)
            bad = compare(ours(batch), ref(batch))
            for p in (0.25,):
                torch.manual_seed(1)
                a = MultiViewCollator(patch_drop_rate=p, apply_masks_internally=internal)(batch)
                torch.manual_seed(1)
                b = pub.MultiViewCollator(patch_drop_rate=p, apply_masks_internally=internal)(batch)
                bad += [f"patch_drop_rate={p}: {m}" for m in compare(a, b)]
            bad += [f"empty batch: {m}" for m in compare(ours([]), ref([])) if not m.startswith("keys")]
            failures += len(bad)
            print(f"{label}: outputs " + ("equal on every key" if not bad else "DIFFER: " + "; ".join(bad)))
            imgs = [it["img"] for it in batch]
            t_pub, t_ours, t_floor = timed(
                [lambda: ref(batch), lambda: ours(batch), lambda: torch.cat(imgs)], args.runs
            )
            print(
                f"{label}: neurovfm {t_ours * 1e3:.2f} ms, published {t_pub * 1e3:.2f} ms, "
                f"ratio {t_pub / t_ours:.2f}x (floor: torch.cat of the img tensors {t_floor * 1e3:.2f} ms)"
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
