#!/usr/bin/env python3
"""Many scans to token files: ``prepare_many`` (``neurovfm prepare INPUT... -o OUT_DIR -w N``)
against the reference loop over the same scans.

The scans: every usable series of the corpus' ``ct/`` and ``mr/`` folders (found with
``find_series``), repeated as symbolic links until there are ``--scans`` of them, in one
folder of studies. Reference (tests/reference.py), per scan, one after the other:
``ref_read`` + ``ref_preprocess`` (sitk read, RPI, B-spline resample, crop) + ``ref_prepare`` (float64 NumPy) +
``ref_tokenize`` + ``np.savez``. neurovfm: ``prepare_many(..., workers=N)`` (N scans at once,
CPUs // N kernel threads each), writing the same kind of ``.npz``.

Both run ``--runs`` times, interleaved (one of ours, one of the reference's: both see the
same machine load); the medians are compared. Prints the wall times, the ratio, and where
neurovfm's time goes (per-stage sums over the scans of the last run: read, mode check,
resample, prepare, tokenize, save, and the rest: discovery, summary, waiting). Run it
from the repository root:

    PYTHONPATH=python python bench/bench_batch.py                  # ~16 scans, -w 2
    PYTHONPATH=python python bench/bench_batch.py --scans 12 --workers 4 --no-reference
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from _common import corpus_dir  # noqa: E402  (paths: python/, tests/)

import reference as R  # noqa: E402  (tests/reference.py: the reference pipeline)

from neurovfm._threads import available_cpus  # noqa: E402
from neurovfm.data import find_series, prepare_many  # noqa: E402
from neurovfm.data import batch as B  # noqa: E402

# corpus series that are brain volumes in their own mode (the others are edge cases)
MODES = {"ct": "ct", "mr": "mri"}


def build_folder(root: Path, n_scans: int) -> list[tuple[str, str, str | None]]:
    """Symlinked studies under root/<mode>/; returns (study path, mode, None) per study and the series."""
    data = corpus_dir()
    series: list[tuple[str, str, str]] = []  # (mode, path, uid)
    for sub, mode in MODES.items():
        for r in find_series(data / sub):
            if r.usable:
                series.append((mode, r.path, r.series_uid))
    if not series:
        sys.exit(f"no usable series under {data}")
    picked = [series[k % len(series)] for k in range(n_scans)]
    for k, (mode, path, uid) in enumerate(picked):
        study = root / mode / f"s{k:03d}"
        study.mkdir(parents=True)
        if os.path.isdir(path):
            files = [f for f in find_series(path) if f.series_uid == uid][0].files
            for f in files:
                (study / os.path.basename(f)).symlink_to(f)
        else:
            (study / os.path.basename(path)).symlink_to(path)
    return [(m, p, u) for m, p, u in picked]


def run_reference(picked: list[tuple[str, str, str | None]], out: Path) -> float:
    out.mkdir()
    t0 = time.perf_counter()
    for k, (mode, path, uid) in enumerate(picked):
        img = R.ref_preprocess(R.ref_read(path, uid or None))
        got = R.ref_prepare(img, mode)
        if got is None:
            continue
        arrs, mask, view = got
        toks = [R.ref_tokenize(a, mask) for a in arrs]
        with open(out / f"{k}.npz", "wb") as f:
            np.savez(f, tokens=np.stack([t[0] for t in toks]), coords=toks[0][1], filtered=toks[0][2], view=view)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=16)
    ap.add_argument("--workers", "-w", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3, help="interleaved runs of each; the medians are compared")
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    import logging
    import statistics
    import warnings

    logging.getLogger("neurovfm").setLevel(logging.ERROR)  # the tilted CT's notes, once per copy
    stages: dict[str, float] = {}
    orig, orig_save = B.prepare_scan, B._atomic_save

    def add(stage: str, seconds: float) -> None:
        stages[stage] = stages.get(stage, 0.0) + seconds

    def timed(*a: object, **k: object) -> B.PreparedScan:
        r = orig(*a, **k)  # type: ignore[arg-type]
        for s, v in r.times.items():
            add(s, v)
        return r

    def timed_save(*a: object, **k: object) -> None:
        t = time.perf_counter()
        orig_save(*a, **k)  # type: ignore[arg-type]
        add("save", time.perf_counter() - t)

    B.prepare_scan = timed  # type: ignore[assignment]
    B._atomic_save = timed_save  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="neurovfm-bench-batch-") as tmp:
        root = Path(tmp)
        picked = build_folder(root / "in", args.scans)
        print(f"{len(picked)} scans ({sum(m == 'ct' for m, _, _ in picked)} CT), {available_cpus()} CPUs")
        # one study folder per scan (the same DICOM series twice in one folder is one
        # series with duplicate slices); the manifest gives each its mode
        manifest = root / "scans.csv"
        manifest.write_text(
            "path,mode\n" + "".join(f"{st},{m}\n" for m in ("ct", "mri") for st in sorted((root / "in" / m).iterdir()))
        )
        ours_t: list[float] = []
        ref_t: list[float] = []
        for run in range(args.runs):  # interleaved: both see the same machine load
            stages.clear()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                s = prepare_many([], root / f"out{run}", manifest=manifest, workers=args.workers, progress=False)
                ours_t.append(time.perf_counter() - t0)
            bad = [r for r in s.rows if r.status != "ok"]
            for r in bad:
                print(f"  {r.status} {r.input}: {r.reason}")
            line = f"run {run + 1}: neurovfm prepare_many -w {args.workers} {ours_t[-1]:.2f} s ({s.ok} ok)"
            if not args.no_reference:
                ref_t.append(run_reference(picked, root / f"ref{run}"))
                line += f", reference loop {ref_t[-1]:.2f} s"
            print(line, flush=True)
        ours = statistics.median(ours_t)
        total = sum(stages.values())
        print(f"neurovfm prepare_many -w {args.workers}: {ours:.2f} s (median of {args.runs})")
        print("  where the time goes (last run; sum over scans, per worker thread):")
        for k, v in stages.items():
            print(f"    {k:<11} {v:7.2f} s  {100 * v / max(total, 1e-9):5.1f}%")
        rest = max(0.0, ours_t[-1] * args.workers - total)
        print(f"    {'other':<11} {rest:7.2f} s  (discovery, summary, waiting)")
        if ref_t:
            ref = statistics.median(ref_t)
            print(
                f"reference loop (ref_read + ref_preprocess + ref_prepare + ref_tokenize + np.savez): {ref:.2f} s (median)"
            )
            print(f"ratio reference / neurovfm: {ref / ours:.1f}x")


if __name__ == "__main__":
    main()
