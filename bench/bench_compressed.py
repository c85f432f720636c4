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

HTJ2K (1.2.840.10008.1.2.4.201) has no gdcmconv writer: its rows are made with OpenJPH's
``ojph_compress`` (reversible, the stored bit depth) and wrapped with pydicom; the
reference reads the same HTJ2K files (SimpleITK 2.5 decodes HTJ2K with OpenJPEG). Beside
them, OpenJPH's own ``ojph_expand`` on the same codestreams (its "Elapsed time" per frame:
decode plus a raw write), where it is installed.

``--long`` (on by default) adds the 140-slice table: ct/phantom_head_1mm.nii.gz (512x512x140,
1 mm) written as a 140-file DICOM CT series with phantom_head_5mm's header (stored
HU + 1024, 12 bits, intercept -1024), uncompressed, transcoded with gdcmconv into the lossless
syntaxes (RLE, JPEG-LS, JPEG Lossless SV1, JPEG 2000) and as HTJ2K lossless; each compressed
volume is checked against the uncompressed one. The ratio targets (SPEC section 8) hold on this
series; ``--only`` picks rows by label substring.

Beside OpenJPEG's ``opj_decompress``, Grok's ``grk_decompress`` (Debian grokj2k-tools) on the
same JPEG 2000 codestreams, one thread, where installed.

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
from pathlib import Path

import SimpleITK as sitk

from _common import corpus_dir, interleaved_times, median_time, set_threads  # noqa: E402  (paths: python/, tests/)

import reference as R  # noqa: E402

from neurovfm import _core  # noqa: E402
from neurovfm.data import load_image, prepare_for_inference, tokenize  # noqa: E402
from neurovfm.data.sources import dicom  # noqa: E402

HTJ2K = "1.2.840.10008.1.2.4.201"

SYNTAXES = [  # (label, gdcmconv flags; None: the uncompressed series itself; ["ojph", ts]: HTJ2K)
    ("uncompressed", None),
    ("RLE Lossless", ["--rle"]),
    ("JPEG-LS lossless", ["--jpegls"]),
    ("JPEG-LS near (e=2)", ["--jpegls", "--lossy", "-e", "2"]),
    ("JPEG Lossless SV1", ["--jpeg"]),
    ("JPEG 2000 lossless", ["--j2k"]),
    ("JPEG 2000 lossy", ["--j2k", "--lossy", "-q", "50"]),
    ("HTJ2K lossless", ["ojph", HTJ2K]),
]


def transcode(src: Path, files: list[str], flags: list[str], out: Path) -> None:
    if flags[0] == "ojph":
        ojph_transcode(files, out, flags[1])
        return
    out.mkdir(parents=True)
    procs = [subprocess.Popen(["gdcmconv", *flags, f, str(out / Path(f).name)]) for f in files]
    if any(p.wait() for p in procs):
        raise SystemExit(f"gdcmconv {' '.join(flags)} failed")


def ojph_transcode(files: list[str], out: Path, ts: str) -> None:
    """Each file's frame as an HTJ2K codestream (ojph_compress, reversible, the stored
    bits, unsigned: ojph_compress 0.9 cannot write negative samples), wrapped with pydicom."""
    import numpy as np
    import pydicom
    from pydicom.encaps import encapsulate

    exe = shutil.which("ojph_compress")
    if exe is None:
        raise SystemExit("ojph_compress not found (apt-get install openjph-tools)")
    out.mkdir(parents=True)
    work = out.parent / (out.name + ".work")
    work.mkdir()
    dss = [pydicom.dcmread(f) for f in files]
    procs = []
    for i, ds in enumerate(dss):
        a = ds.pixel_array
        a = a.view(np.uint16) if a.dtype == np.int16 else a
        a.astype("<u2").tofile(work / f"{i}.raw")
        bits = int(ds.BitsStored) if a.max() < (1 << int(ds.BitsStored)) else 16
        cmd = [exe, "-i", str(work / f"{i}.raw"), "-o", str(work / f"{i}.j2c"), "-reversible", "true"]
        cmd += ["-dims", f"{{{a.shape[1]},{a.shape[0]}}}", "-num_comps", "1", "-signed", "false"]
        cmd += ["-bit_depth", str(bits), "-downsamp", "{1,1}"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
    if any(p.wait() for p in procs):
        raise SystemExit("ojph_compress failed")
    for i, (f, ds) in enumerate(zip(files, dss)):
        ds.PixelData = encapsulate([(work / f"{i}.j2c").read_bytes()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = ts
        ds.save_as(out / Path(f).name, enforce_file_format=True)
    shutil.rmtree(work)


def write_long_series(out: Path) -> list[str]:
    """ct/phantom_head_1mm.nii.gz as a 140-file DICOM CT series (phantom_head_5mm's header)."""
    import numpy as np
    import pydicom
    from pydicom.uid import generate_uid

    img = sitk.ReadImage(str(corpus_dir() / "ct/phantom_head_1mm.nii.gz"))
    vol = sitk.GetArrayFromImage(img)
    template = pydicom.dcmread(corpus_dir() / "ct/phantom_head_5mm/I10")
    d = img.GetDirection()
    sx, sy, sz = img.GetSpacing()
    series = generate_uid()
    out.mkdir(parents=True)
    paths = []
    for k in range(vol.shape[0]):
        ds = template.copy()
        pos = [img.GetOrigin()[i] + k * sz * d[3 * i + 2] for i in range(3)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])]
        ds.PixelSpacing = [f"{sy:.9g}", f"{sx:.9g}"]
        ds.SliceThickness = f"{sz:.9g}"
        ds.InstanceNumber = k + 1
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PixelData = (vol[k].astype(np.int32) + 1024).astype("<u2").tobytes()
        ds.Rows, ds.Columns = vol.shape[1:]
        p = out / f"I{k:04d}.dcm"
        ds.save_as(p)
        paths.append(str(p))
    return paths


def ojph_ms_per_slice(folder: Path, files: list[str], tmp: Path) -> float | None:
    """OpenJPH's ojph_expand on each frame: mean of the "Elapsed time" it prints (s)."""
    exe = shutil.which("ojph_expand")
    if exe is None:
        return None
    import pydicom
    from pydicom.encaps import generate_frames

    src = tmp / "ojph_in"
    src.mkdir()
    ms = []
    for i, f in enumerate(files):
        (frame,) = generate_frames(pydicom.dcmread(folder / Path(f).name).PixelData, number_of_frames=1)
        (src / f"{i}.j2c").write_bytes(frame)
        run = subprocess.run(
            [exe, "-i", str(src / f"{i}.j2c"), "-o", str(src / f"{i}.raw")], check=True, capture_output=True, text=True
        )
        ms += [
            float(ln.split("=")[1]) * 1e3
            for ln in (run.stdout + run.stderr).splitlines()
            if ln.startswith("Elapsed time")
        ]
    shutil.rmtree(src)
    return sum(ms) / len(ms) if ms else None


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
    # opj_decompress 2.5 prints one "decode time: N ms", the mean per image (whole ms)
    cmd = [exe, "-ImgDir", str(src), "-OutFor", "RAW", "-threads", "1"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    ms = [float(ln.split(":")[1].split()[0]) for ln in out.splitlines() if ln.startswith("decode time")]
    grk = shutil.which("grk_decompress")
    if grk is not None:  # Grok prints "decompress time: N ms/image"
        dst = tmp / "j2k_out"
        dst.mkdir()
        cmd = [grk, "-y", str(src), "-a", str(dst), "-O", "RAW", "-H", "1", "-v"]
        run = subprocess.run(cmd, check=True, capture_output=True, text=True)
        g = [
            ln.split("decompress time:")[1].split()[0]
            for ln in (run.stdout + run.stderr).splitlines()
            if "decompress time:" in ln
        ]
        GROK_MS[folder] = float(g[-1]) if g else None
        shutil.rmtree(dst)
    shutil.rmtree(src)
    return sum(ms) / len(ms) if ms else None


GROK_MS: dict[Path, float | None] = {}


def measure(label: str, folder: Path, files: list[str], args: argparse.Namespace, tmp: Path) -> tuple:
    """One table row: file to tokens (interleaved medians) and the decode alone."""
    ffiles = [str(folder / Path(f).name) for f in files]
    h = _core.read_dicom_header(ffiles[0])
    name, why = _core.dicom_codec_status(h.transfer_syntax, h.bits_stored)
    path = str(folder)
    set_threads(args.threads)
    ref_tokens(path), our_tokens(path)  # warm the page cache and the pool
    ts = interleaved_times({"ref": lambda: ref_tokens(path), "ours": lambda: our_tokens(path)}, args.runs)
    ref_ts, our_ts = ts["ref"], ts["ours"]
    ref_t, ours_t = sorted(ref_ts)[len(ref_ts) // 2], sorted(our_ts)[len(our_ts) // 2]
    dec = {}
    for t in (1, 2):
        set_threads(t)
        dec[("sitk", t)] = median_time(lambda: sitk_decode(ffiles), args.runs)
        dec[("ours", t)] = median_time(lambda: dicom.read_dicom(path), args.runs)
    reader = dicom.read_dicom(path).reader
    if "JPEG 2000" in label:
        other = ("opj_decompress", opj_ms_per_slice(folder, files, tmp))
        if GROK_MS.get(folder) is not None:
            other = (f"grk_decompress {GROK_MS[folder]:.2f}, opj_decompress", other[1])
    elif "HTJ2K" in label:
        other = ("ojph_expand", ojph_ms_per_slice(folder, files, tmp))
    else:
        other = ("", None)
    return (label, reader, why, ref_t, ours_t, dec, other)


def print_table(title: str, n: int, rows: list[tuple], args: argparse.Namespace) -> None:
    print(f"\n{title}: {n} slices 512x512; file to tokens at {args.threads} threads; medians of {args.runs} runs\n")
    head = (
        f"{'syntax':<20} {'reader':<9} {'ref ms':>8} {'ours ms':>8} {'x':>6} | "
        f"{'decode ms/slice  sitk1':>22} {'ours1':>6} {'x':>5} {'sitk2':>6} {'ours2':>6} {'x':>5} | "
        "the codec's own tool, ms/slice"
    )
    print(head)
    print("-" * len(head))
    for label, reader, why, ref_t, ours_t, dec, (tool, other) in rows:
        ms = {k: v * 1e3 / n for k, v in dec.items()}
        other_s = (
            ""
            if other is None
            else (f"{tool} {other:.2f}" if other >= 1 or "opj_decompress" not in tool else f"{tool} <1 (whole ms only)")
        )
        print(
            f"{label:<20} {reader:<9} {ref_t * 1e3:8.0f} {ours_t * 1e3:8.0f} {ref_t / ours_t:6.1f} | "
            f"{ms[('sitk', 1)]:22.2f} {ms[('ours', 1)]:6.2f} {ms[('sitk', 1)] / ms[('ours', 1)]:5.1f} "
            f"{ms[('sitk', 2)]:6.2f} {ms[('ours', 2)]:6.2f} {ms[('sitk', 2)] / ms[('ours', 2)]:5.1f} | {other_s}"
        )
        if why and label != "uncompressed":
            print(f"{'':<20} (not decoded here: {why})")
    sys.stdout.flush()


def wanted(label: str, args: argparse.Namespace) -> bool:
    return not args.only or any(w.strip().lower() in label.lower() for w in args.only.split(","))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per measurement (median)")
    ap.add_argument("--threads", type=int, default=2, help="threads for file to tokens")
    ap.add_argument("--long", action=argparse.BooleanOptionalAction, default=True, help="the 140-slice table")
    ap.add_argument("--short", action=argparse.BooleanOptionalAction, default=True, help="the 28-slice table")
    ap.add_argument("--only", default="", help="comma-separated label substrings: only those rows")
    args = ap.parse_args()
    phantom = corpus_dir() / "ct/phantom_head_5mm"
    if not phantom.is_dir():
        raise SystemExit(f"{phantom} missing: set NEUROVFM_TEST_DATA")
    files = list(dicom.scan_series(phantom)[0].files)
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        if args.short:
            rows = []
            for label, flags in SYNTAXES:
                if flags is not None and not wanted(label, args):
                    continue
                if flags is not None and flags[0] != "ojph" and shutil.which("gdcmconv") is None:
                    print(f"{label}: gdcmconv not found (apt-get install libgdcm-tools), skipped")
                    continue
                folder = phantom if flags is None else tmp / label.replace(" ", "_")
                if flags is not None:
                    transcode(phantom, files, flags, folder)
                rows.append(measure(label, folder, files, args, tmp))
            print_table("phantom_head_5mm", len(files), rows, args)
        if args.long:
            raw = tmp / "long_uncompressed"
            long_files = write_long_series(raw)
            rows = [measure("uncompressed", raw, long_files, args, tmp)]
            want = dicom.read_dicom(str(raw)).array
            same = {}
            for label, flags in SYNTAXES:
                if flags is None or "lossy" in label or "near" in label or not wanted(label, args):
                    continue
                if flags[0] != "ojph" and shutil.which("gdcmconv") is None:
                    print(f"{label}: gdcmconv not found (apt-get install libgdcm-tools), skipped")
                    continue
                folder = tmp / ("long_" + label.replace(" ", "_"))
                transcode(raw, long_files, flags, folder)
                rows.append(measure(label, folder, long_files, args, tmp))
                got = dicom.read_dicom(str(folder)).array
                same[label] = got.shape == want.shape and bool((got == want).all())
            print_table("phantom_head_1mm as DICOM", len(long_files), rows, args)
            for label, ok in same.items():
                print(f"{label} volume identical to the uncompressed one: {ok}")
    set_threads(None)


if __name__ == "__main__":
    main()
