#!/usr/bin/env python3
"""A gzip NIfTI from file to tokens against the floor (inflating it alone, ISA-L, one
thread) and the reference; then the inflaters of one gzip stream side by side.

1. File to tokens at ``--threads`` (default 2), interleaved runs: neurovfm
   (load_image + prepare_for_inference + tokenize), the reference (tests/reference.py:
   ref_read + ref_preprocess + ref_prepare + ref_tokenize) and the floor (ISA-L inflating
   the file into a buffer allocated once, one thread). Medians, the spread (min-max),
   ours / floor and reference / ours. Peak RSS of each in a fresh process.
   On the 1 mm head CT (512 x 512 x 140) and on that CT stacked ``--stack`` times.
2. Inflate only, at 1 and 2 threads (``--decode-threads``): ISA-L (``isal.igzip``; and
   ``isal.igzip_threaded``, which reads ahead on one more thread), rapidgzip (parallel
   inflate of one stream), libdeflate (PyPI ``deflate``, whole buffer, one thread), on the
   1 mm head CT and on a larger file made by stacking it (``--stack`` copies along z,
   gzip level 6). Wall and CPU time (all threads) per run; the CPU time per byte gives
   the prediction at 16 threads printed below the table.

    PYTHONPATH=python python bench/bench_gzip.py                 # 7 runs
    PYTHONPATH=python python bench/bench_gzip.py --repeats 11 --json out.json

The machine may be shared: every figure is a median of interleaved runs, with the spread.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from _common import corpus_dir, interleaved_times, set_threads  # noqa: E402  (paths: python/, tests/)

import reference as R  # noqa: E402  (tests/reference.py)

from neurovfm.data import load_image, prepare_for_inference, tokenize  # noqa: E402

MIB = 1 << 20
CASE = "ct/phantom_head_1mm.nii.gz"


def isize(path: str) -> int:
    with open(path, "rb") as f:
        f.seek(-4, 2)
        return int.from_bytes(f.read(4), "little")


# --- the pipelines ------------------------------------------------------------------------


def ours(path: str) -> object:
    img = load_image(path)
    prep = prepare_for_inference(img, "ct")
    return [tokenize(a, prep[1]) for a in prep[0]] if prep is not None else None


def ref(path: str) -> object:
    res = R.ref_preprocess(R.ref_read(path))
    prep = R.ref_prepare(res, "ct")
    return [R.ref_tokenize(a, prep[1]) for a in prep[0]] if prep is not None else None


# --- inflaters: each fills a buffer allocated once ------------------------------------------


def _fill(f, buf: memoryview, step: int = MIB) -> int:
    got = 0
    while True:
        k = f.readinto(buf[got : got + step])
        if not k:
            return got
        got += k


def isal_one(path: str, buf: memoryview) -> int:
    from isal import igzip

    with igzip.open(path, "rb") as f:
        return _fill(f, buf)


def isal_threaded(path: str, buf: memoryview) -> int:
    from isal import igzip_threaded

    with igzip_threaded.open(path, "rb", threads=1) as f:
        return _fill(f, buf)


def rapidgzip_p(p: int) -> Callable[[str, memoryview], int]:
    def run(path: str, buf: memoryview) -> int:
        import rapidgzip

        with rapidgzip.RapidgzipFile(path, parallelization=p) as f:
            return _fill(f, buf, 4 * MIB)

    run.__name__ = f"rapidgzip_{p}"
    return run


def libdeflate(path: str, buf: memoryview) -> int:
    import deflate

    with open(path, "rb") as f:
        out = deflate.gzip_decompress(f.read())  # whole buffer in, whole buffer out
    return len(out)


def inflaters(threads: list[int]) -> dict[str, tuple[int, Callable[[str, memoryview], int]]]:
    """name -> (threads it uses, function), for what is installed."""
    out: dict[str, tuple[int, Callable[[str, memoryview], int]]] = {"isal.igzip": (1, isal_one)}
    try:
        from isal import igzip_threaded  # noqa: F401

        out["isal.igzip_threaded"] = (2, isal_threaded)
    except ImportError:
        pass
    try:
        import rapidgzip  # noqa: F401

        for p in threads:
            out[f"rapidgzip P={p}"] = (p, rapidgzip_p(p))
    except ImportError:
        print("(rapidgzip not installed: pip install rapidgzip)")
    try:
        import deflate  # noqa: F401

        out["libdeflate"] = (1, libdeflate)
    except ImportError:
        print("(libdeflate not installed: pip install deflate)")
    return out


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU of every thread of this process) of one call, seconds."""
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}


def fmt(s: dict, unit: float = 1e3) -> str:
    return f"{s['median'] * unit:7.0f} ms [{s['min'] * unit:.0f}-{s['max'] * unit:.0f}]"


# --- peak RSS in a fresh process ------------------------------------------------------------


def rss_child(which: str, path: str, threads: int) -> None:
    set_threads(threads)
    if which == "floor":
        buf = memoryview(bytearray(isize(path) + 1))
        isal_one(path, buf)
    else:
        (ours if which == "ours" else ref)(path)
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec (the parent's, if larger).
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"peak_mib": peak}))


def measure_rss(which: str, path: str, threads: int) -> float | None:
    cmd = [sys.executable, __file__, "--rss-child", which, "--path", path, "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(f"  rss {which}: failed: {(out.stderr or out.stdout).strip().splitlines()[-1:]}")
        return None
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])


# --- the two parts --------------------------------------------------------------------------


FLOOR = "floor (ISA-L, 1 thread)"


def file_to_tokens(path: str, threads: int, reps: int, rss: bool) -> dict:
    """The floor: inflating the file alone on one thread (ISA-L) into a buffer allocated once."""
    set_threads(threads)
    buf = memoryview(bytearray(isize(path) + 1))
    fns = {"neurovfm": lambda: ours(path), "reference": lambda: ref(path), FLOOR: lambda: isal_one(path, buf)}
    for fn in fns.values():  # warm-up (page cache, buffers, imports)
        fn()
    runs = interleaved_times(fns, reps, between=gc.collect)
    res = {name: stats(v) for name, v in runs.items()}
    o, r, f = (res[k]["median"] for k in ("neurovfm", "reference", FLOOR))
    print(f"\n== {path}: file -> tokens at {threads} threads, median of {reps} interleaved runs [min-max]")
    for name in runs:
        print(f"  {name:<26}{fmt(res[name])}")
    print(f"  neurovfm / {FLOOR:<25}{o / f:.2f}x   (target <= 1.0x)")
    print(f"  reference / neurovfm        {r / o:.1f}x")
    out = {"threads": threads, "times": res, "over_floor": o / f, "ratio_to_reference": r / o}
    if rss:
        out["peak_rss_mib"] = {w: measure_rss(w, path, threads) for w in ("ours", "reference", "floor")}
        pk = out["peak_rss_mib"]
        print(
            "  peak RSS, fresh process:   "
            + ", ".join(f"{w} {v:.0f} MiB" for w, v in pk.items() if v is not None)
            + ("   (target: neurovfm <= 240 MiB)" if path.endswith(CASE) else "")
        )
    return out


def stack(path: str, copies: int, dst: Path) -> str:
    """``copies`` copies of the volume along z, written as gzip level 6."""
    import gzip

    img = sitk.ReadImage(path)
    arr = sitk.GetArrayFromImage(img)
    big = sitk.GetImageFromArray(np.concatenate([arr] * copies, axis=0))
    big.SetSpacing(img.GetSpacing())
    big.SetOrigin(img.GetOrigin())
    big.SetDirection(img.GetDirection())
    raw = dst / "stacked.nii"
    sitk.WriteImage(big, str(raw))
    out = dst / "stacked.nii.gz"
    with open(raw, "rb") as f, gzip.open(out, "wb", compresslevel=6) as g:
        while chunk := f.read(16 * MIB):
            g.write(chunk)
    raw.unlink()
    return str(out)


def inflate_table(paths: list[str], threads: list[int], reps: int) -> dict:
    table: dict = {}
    infl = inflaters(threads)
    for path in paths:
        n = isize(path)
        buf = memoryview(bytearray(n + 1))
        size = os.path.getsize(path)
        for _, fn in infl.values():  # warm-up
            fn(path, buf)
        walls: dict[str, list[float]] = {k: [] for k in infl}
        cpus: dict[str, list[float]] = {k: [] for k in infl}
        for _ in range(reps):
            for name, (_, fn) in infl.items():
                w, c = timed(lambda fn=fn: fn(path, buf))  # type: ignore[misc]
                walls[name].append(w)
                cpus[name].append(c)
        print(
            f"\n== inflate {Path(path).name}: {size / MIB:.0f} MiB gzip -> {n / MIB:.0f} MiB, "
            f"median of {reps} interleaved runs [min-max]"
        )
        print(f"  {'decoder':<22}{'threads':>8}{'wall':>26}{'CPU':>10}{'MB/s':>8}{'CPU/ISA-L':>11}")
        base_cpu = statistics.median(cpus["isal.igzip"])
        base_wall = statistics.median(walls["isal.igzip"])
        rows = {}
        for name, (t, _) in infl.items():
            w, c = stats(walls[name]), statistics.median(cpus[name])
            rows[name] = {"threads": t, "wall": w, "cpu": c}
            print(f"  {name:<22}{t:>8}{fmt(w):>26}{c * 1e3:7.0f} ms{n / w['median'] / 1e6:8.0f}{c / base_cpu:10.2f}x")
        # Prediction: rapidgzip's CPU per byte at 2 threads spread over P threads, but no
        # more threads than 4 MiB chunks of compressed data (its default chunk size).
        rg = [k for k in rows if k.startswith("rapidgzip") and rows[k]["threads"] == max(threads)]
        if rg:
            c2 = rows[rg[0]]["cpu"]
            for p in (4, 8, 16):
                eff = min(p, max(1, size // (4 * MIB)))
                print(
                    f"  predicted rapidgzip at {p:>2} threads: about {c2 / eff * 1e3:.0f} ms "
                    f"({base_wall / (c2 / eff):.1f}x ISA-L's one thread; {eff} chunks busy)"
                )
        table[path] = rows
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--decode-threads", default="1,2", help="rapidgzip's thread counts (comma-separated)")
    ap.add_argument("--stack", type=int, default=3, help="copies along z of the larger file (0: none; both parts)")
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--rss-child", choices=["ours", "reference", "floor"])
    ap.add_argument("--path")
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.path, args.threads)
        return
    path = str(corpus_dir() / CASE)
    if not os.path.exists(path):
        sys.exit(f"missing {path}: set NEUROVFM_TEST_DATA")
    out: dict = {}
    threads = [int(t) for t in args.decode_threads.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        paths = [path] + ([stack(path, args.stack, Path(tmp))] if args.stack > 1 else [])
        if not args.skip_pipeline:
            # the 1 mm CT, then the same stacked (the longest, largest file this corpus makes)
            out["pipeline"] = {p: file_to_tokens(p, args.threads, args.repeats, not args.no_rss) for p in paths}
        out["inflate"] = inflate_table(paths, threads, args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
