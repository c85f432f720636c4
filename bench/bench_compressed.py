#!/usr/bin/env python3
"""Compressed DICOM: file to tokens and the decode alone, neurovfm against the reference.

A real CT series (ct/phantom_head_5mm, 28 slices 512x512) is transcoded with GDCM's
``gdcmconv`` into each compressed transfer syntax (in a temporary folder). Per syntax:

- file to tokens at ``--threads`` (default 2): the reference (tests/reference.py:
  ``ref_read`` = SimpleITK's series reader, DICOMOrient, B-spline resample and crop,
  ``ref_prepare``, ``ref_tokenize``) against neurovfm (load_image + prepare_for_inference +
  tokenize), medians of interleaved runs, and the ratio ref / ours;
- the decode alone at 1 and 2 threads: SimpleITK's ImageSeriesReader (GDCM, one slice after
  another) against ``neurovfm.data.sources.dicom.read_dicom`` (header scan + parallel decode), in
  ms per slice, and the ratio;
- for JPEG 2000, OpenJPEG's own ``opj_decompress`` on the same codestreams (one thread;
  the decode time it prints per image), where it is installed.

    PYTHONPATH=python python bench/bench_compressed.py [--runs 5] [--threads 2]

A syntax this build does not decode (a library missing) is run anyway: neurovfm falls back
to SimpleITK and the row says so.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from _common import corpus_dir, median_time, set_threads  # noqa: E402  (paths: python/, tests/)

import reference as R  # noqa: E402

from neurovfm import _core  # noqa: E402
from neurovfm.data import load_image, prepare_for_inference, tokenize  # noqa: E402
from neurovfm.data.sources import dicom  # noqa: E402

SYNTAXES = [  # (label, gdcmconv flags; None: the uncompressed series itself)
    ("uncompressed", None),
    ("RLE Lossless", ["--rle"]),
    ("JPEG-LS lossless", ["--jpegls"]),
    ("JPEG-LS near (e=2)", ["--jpegls", "--lossy", "-e", "2"]),
    ("JPEG Lossless SV1", ["--jpeg"]),
    ("JPEG 2000 lossless", ["--j2k"]),
    ("JPEG 2000 lossy", ["--j2k", "--lossy", "-q", "50"]),
]


def transcode(src: Path, files: list[str], flags: list[str], out: Path) -> None:
    out.mkdir(parents=True)
    procs = [subprocess.Popen(["gdcmconv", *flags, f, str(out / Path(f).name)]) for f in files]
    if any(p.wait() for p in procs):
        raise SystemExit(f"gdcmconv {' '.join(flags)} failed")


def ref_tokens(path: str, mode: str = "ct") -> object:
    img = R.ref_read(path)
    res = R.ref_resample_crop(sitk.DICOMOrient(img, "RPI"))
    prep = R.ref_prepare(res, mode)
    assert prep is not None
    return [R.ref_tokenize(a, prep[1]) for a in prep[0]]


def our_tokens(path: str, mode: str = "ct") -> object:
    prep = prepare_for_inference(load_image(path), mode)
    assert prep is not None
    return [tokenize(a, prep[1]) for a in prep[0]]


def sitk_decode(files: list[str]) -> object:
    r = sitk.ImageSeriesReader()
    r.SetFileNames(files)
    return r.Execute()


def opj_ms_per_slice(folder: Path, files: list[str], tmp: Path) -> float | None:
    exe = shutil.which("opj_decompress")
    if exe is None:
        return None
    import pydicom
    from pydicom.encaps import generate_frames

    src = tmp / "j2k_in"
    src.mkdir()
    for i, f in enumerate(files):
        ds = pydicom.dcmread(folder / Path(f).name)
        (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
        (src / f"{i:03d}.j2k").write_bytes(frame)
    # opj_decompress prints its own "decode time: N ms" per image (no process start, no write)
    cmd = [exe, "-ImgDir", str(src), "-OutFor", "RAW", "-threads", "1"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    ms = [float(ln.split(":")[1].split()[0]) for ln in out.splitlines() if ln.startswith("decode time")]
    shutil.rmtree(src)
    return sum(ms) / len(ms) if ms else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per measurement (median)")
    ap.add_argument("--threads", type=int, default=2, help="threads for file to tokens")
    args = ap.parse_args()
    if shutil.which("gdcmconv") is None:
        raise SystemExit("gdcmconv not found (apt-get install libgdcm-tools)")
    phantom = corpus_dir() / "ct/phantom_head_5mm"
    if not phantom.is_dir():
        raise SystemExit(f"{phantom} missing: set NEUROVFM_TEST_DATA")
    files = list(dicom.scan_series(phantom)[0].files)
    n = len(files)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for label, flags in SYNTAXES:
            folder = phantom if flags is None else tmp / label.replace(" ", "_")
            if flags is not None:
                transcode(phantom, files, flags, folder)
            ffiles = [str(folder / Path(f).name) for f in files]
            h = _core.read_dicom_header(ffiles[0])
            name, why = _core.dicom_codec_status(h.transfer_syntax, h.bits_stored)
            path = str(folder)
            set_threads(args.threads)
            ref_tokens(path), our_tokens(path)  # warm the page cache and the pool
            ref_t = ours_t = float("inf")
            ref_ts, our_ts = [], []
            for _ in range(args.runs):  # interleaved
                t0 = time.perf_counter()
                ref_tokens(path)
                ref_ts.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                our_tokens(path)
                our_ts.append(time.perf_counter() - t0)
            ref_t, ours_t = sorted(ref_ts)[len(ref_ts) // 2], sorted(our_ts)[len(our_ts) // 2]
            dec = {}
            for t in (1, 2):
                set_threads(t)
                dec[("sitk", t)] = median_time(lambda: sitk_decode(ffiles), args.runs)
                dec[("ours", t)] = median_time(lambda: dicom.read_dicom(path), args.runs)
            reader = dicom.read_dicom(path).reader
            opj = opj_ms_per_slice(folder, files, tmp) if "JPEG 2000" in label else None
            rows.append((label, reader, why, ref_t, ours_t, dec, opj))
    set_threads(None)

    print(
        f"\nphantom_head_5mm: {n} slices 512x512; file to tokens at {args.threads} threads; "
        f"medians of {args.runs} runs\n"
    )
    head = (
        f"{'syntax':<20} {'reader':<9} {'ref ms':>8} {'ours ms':>8} {'x':>6} | "
        f"{'decode ms/slice  sitk1':>22} {'ours1':>6} {'x':>5} {'sitk2':>6} {'ours2':>6} {'x':>5} | opj_decompress"
    )
    print(head)
    print("-" * len(head))
    for label, reader, why, ref_t, ours_t, dec, opj in rows:
        ms = {k: v * 1e3 / n for k, v in dec.items()}
        opj_s = "" if opj is None else (f"{opj:.1f} ms/slice" if opj >= 1 else "<1 ms/slice (whole ms only)")
        print(
            f"{label:<20} {reader:<9} {ref_t * 1e3:8.0f} {ours_t * 1e3:8.0f} {ref_t / ours_t:6.1f} | "
            f"{ms[('sitk', 1)]:22.2f} {ms[('ours', 1)]:6.2f} {ms[('sitk', 1)] / ms[('ours', 1)]:5.1f} "
            f"{ms[('sitk', 2)]:6.2f} {ms[('ours', 2)]:6.2f} {ms[('sitk', 2)] / ms[('ours', 2)]:5.1f} | {opj_s}"
        )
        if why and label != "uncompressed":
            print(f"{'':<20} (not decoded here: {why})")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
