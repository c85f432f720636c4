#!/usr/bin/env python3
"""Vol-JEPA masks: neurovfm's MultiBlockCollator against the published one, same steps.

    PYTHONPATH=python python bench/bench_masks.py                # equality + timing
    PYTHONPATH=python python bench/bench_masks.py --runs 5 --batch 8

The published ``neurovfm/datasets/collators.py`` (GitHub ``MLNeurosurg/neurovfm``) is
read from the local git mirror (``$NEUROVFM_PUBLISHED_REPO``, default
``/work/.mirror/MLNeurosurg+neurovfm/repo``), written to a temporary folder and
imported from there (it needs only torch). Without it, the bench says so and times
neurovfm alone.

Equality: for several mask configurations (the published pretraining one, with and
without patch drop, ``switch_enc_pred``, two configurations, bool token flags,
background filter off) and both values of ``apply_masks_internally``, both collators
get the same batches for 6 consecutive steps, with the global torch generator seeded
identically before each call (the published collator draws block positions and the
drop from it); every index tensor, cu_seqlens, max length and the batch tensors must
be equal. Timing: the pretraining configuration (with uint8 flags most samples end in
the fallback masks of 5 failed attempts) and ``switch_enc_pred`` (none do), ``--runs`` interleaved blocks of
``--steps`` calls each; the median block time of each is reported, and the ratio.

Batches: ``--batch`` items of synthetic token grids (D 8-40, H and W 10-16, an
ellipsoidal foreground, uint8 flags as the datasets give), ``img`` with 8 features
per token (the masks do not read ``img``; a full 1024 would only time ``torch.cat``,
the same in both).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import _common  # noqa: E402  (import paths; the published code)
import torch  # noqa: E402

from neurovfm.datasets.multiblock import MultiBlockCollator, pretraining_mask_config  # noqa: E402

MIRROR = _common.PUBLISHED_REPO


def load_published(tmp: Path) -> ModuleType | None:
    """The published collators module (bench/_common.published_module), or None."""
    return _common.published_module("neurovfm/datasets/collators.py", tmp)


def pretrain_cfg(**over: Any) -> dict[str, Any]:
    """The mask configuration the published DataModule builds for pretraining."""
    return pretraining_mask_config(**over)


CONFIGS: dict[str, dict[str, Any]] = {
    "pretrain": pretrain_cfg(),
    "pretrain drop 0.1": pretrain_cfg(drop_rate=0.1),
    "switch_enc_pred": pretrain_cfg(switch_enc_pred=[True]),
    "2 cfgs, npred 2/3": pretrain_cfg(
        hw_pred_mask_scale=[{"mri": [0.1, 0.3], "ct": [0.15, 0.25]}, {"mri": [0.05, 0.2], "ct": [0.1, 0.2]}],
        aspect_ratio=[(0.3, 3.0), (0.5, 2.0)],
        npred=[2, 3],
        switch_enc_pred=[False, True],
        drop_rate=0.05,
    ),
    "bool flags": pretrain_cfg(hw_pred_mask_scale=[{"mri": [0.3, 0.5], "ct": [0.2, 0.4]}]),
    "no background filter": pretrain_cfg(remove_background=False),
    "min_filt_ratio 0.5": pretrain_cfg(min_filt_ratio=0.5, enc_mask_scale={"mri": 0.003, "ct": 0.002}),
}


def make_batch(n: int, seed: int, bool_flags: bool = False, feat: int = 8) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        d = int(torch.randint(8, 41, (1,), generator=g))
        h = int(torch.randint(10, 17, (1,), generator=g))
        w = int(torch.randint(10, 17, (1,), generator=g))
        zz, yy, xx = torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
        rad = 0.55 + 0.4 * torch.rand(1, generator=g).item()
        inside = ((zz - d / 2) / (d / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2
        flags = (inside > rad**2).reshape(-1)
        items.append(
            {
                "img": torch.randn(d * h * w, feat, generator=g),
                "coords": torch.stack([zz, yy, xx], -1).reshape(-1, 3),
                "filtered": flags if bool_flags else flags.to(torch.uint8),
                "size": torch.tensor([d, h, w]),
                "label": i % 2,
                "study": f"s{i}",
                "path": f"p{i}",
                "mode": "ct" if i % 3 else "mri",
            }
        )
    return items


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(torch.equal(a, b))
        )
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b) and type(a) is type(b)


def check_equal(pub: ModuleType, steps: int, batch: int) -> None:
    for name, cfg in CONFIGS.items():
        for internal in (False, True):
            ours = MultiBlockCollator([cfg], apply_masks_internally=internal)
            theirs = pub.MultiBlockCollator([cfg], apply_masks_internally=internal)
            fallbacks = 0
            for step in range(steps):
                items = make_batch(batch, seed=100 * step + 7, bool_flags=name == "bool flags")
                torch.manual_seed(1000 + step)
                a = ours(items)
                torch.manual_seed(1000 + step)
                b = theirs(items)
                for part, x, y in zip(("batch", "pred", "pred_init", "enc"), a, b):
                    if not same(x, y):
                        raise SystemExit(f"MISMATCH config={name!r} internal={internal} step={step} part={part}")
                cu = a[3][0][1]
                fallbacks += int(((cu[1:] - cu[:-1]) == 1).sum())
            print(
                f"  equal over {steps} steps: {name:24s} apply_masks_internally={internal!s:5s} (1-token enc masks: {fallbacks})"
            )


def time_blocks(pub: ModuleType | None, runs: int, steps: int, batch: int) -> None:
    batches = [make_batch(batch, seed=s) for s in range(steps)]
    for cfg_name in ("pretrain", "switch_enc_pred"):
        cfg = CONFIGS[cfg_name]
        makers: dict[str, Any] = {"neurovfm": lambda: MultiBlockCollator([cfg])}
        if pub is not None:
            makers["published"] = lambda: pub.MultiBlockCollator([cfg])
        times: dict[str, list[float]] = {k: [] for k in makers}
        for _ in range(runs):
            for name, make in makers.items():
                coll = make()
                torch.manual_seed(0)
                t0 = time.perf_counter()
                for items in batches:
                    coll(items)
                times[name].append((time.perf_counter() - t0) / steps)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f" config {cfg_name!r}:")
        for k, v in med.items():
            print(
                f"  {k:10s} {v * 1e3:8.2f} ms / batch of {batch} (median of {runs} interleaved blocks of {steps} steps)"
            )
        if "published" in med:
            print(f"  speed-up: {med['published'] / med['neurovfm']:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        pub = load_published(Path(tmp))
        if pub is None:
            print(f"published collators.py unavailable (no mirror at {MIRROR}): timing neurovfm alone")
        else:
            print(
                f"equality against the published MultiBlockCollator ({args.steps} consecutive steps, batch {args.batch}):"
            )
            check_equal(pub, args.steps, args.batch)
        print(f"timing (torch threads {args.threads}):")
        time_blocks(pub, args.runs, args.steps, args.batch)


if __name__ == "__main__":
    main()
