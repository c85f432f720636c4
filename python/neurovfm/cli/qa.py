"""``neurovfm qa``: a PNG (PDF, SVG) montage of the preprocessed volume, from a scan
or from a built cache (the drawing itself is :mod:`neurovfm.qa`'s)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from ._common import VIEW_NAMES, Formatter, UsageError, check_output_folder, mode, positive_int

_DESCRIPTION = """\
Write a PNG montage of the preprocessed volume, as the model receives it: the
centre slice across each axis of [D, H, W] (columns) for each channel (rows: the
CT windows brain, blood and bone, or the normalised MRI). Background tokens are
shaded, each panel edge carries the patient direction it faces (R/L, A/P, S/I),
and the title gives the shape, the voxel spacing and the view.

The scan is read and preprocessed as by 'neurovfm prepare'; with --cache, the
image is read from a built cache instead. Needs matplotlib
(pip install "neurovfm[qa]")."""

_EPILOG = """\
examples:
  neurovfm qa head_ct.nii.gz --mode ct -o qa.png
  neurovfm qa study/series_dir --mode mri -o t1_qa.png
  neurovfm qa --cache /data/ds --study s001 --image head -o s001_head.png
  neurovfm qa --cache /data/ds --study s002 -o s002.pdf     (study of one image)
"""


def add_qa(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "qa",
        parents=[common],
        help="PNG montage of the preprocessed volume (3 axes x CT windows, token mask, orientation)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=Formatter,
    )
    p.add_argument("scan", nargs="?", metavar="SCAN", help="NIfTI file, DICOM file or DICOM series folder")
    p.add_argument("--mode", type=mode, metavar="{ct,mri}", help="modality of SCAN (required with SCAN)")
    p.add_argument("--series-uid", metavar="UID", help="SeriesInstanceUID when a DICOM folder holds several series")
    p.add_argument("--cache", metavar="DATA_DIR", help="read the image from this dataset's cache instead of a scan")
    p.add_argument("--study", metavar="NAME", help="with --cache: the study")
    p.add_argument("--image", metavar="NAME", help="with --cache: the image (default: the study's only image)")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("qa.png"),
        metavar="OUT",
        help="the montage: .png (default qa.png), .pdf or .svg",
    )
    p.add_argument("--dpi", type=positive_int, default=100, metavar="N", help="resolution (default 100)")
    p.set_defaults(func=cmd_qa)


def _check_args(args: argparse.Namespace, suffixes: tuple[str, ...]) -> None:
    out = args.output
    if out.suffix.lower() not in suffixes:
        raise UsageError(f"output {str(out)!r} must end with {', '.join(suffixes)}")
    check_output_folder(out)
    if (args.scan is None) == (args.cache is None):
        raise UsageError("give a SCAN (with --mode) or --cache DATA_DIR --study NAME")
    if args.scan is not None:
        if args.mode is None:
            raise UsageError("--mode is required with a SCAN (--mode ct or --mode mri)")
        for opt in ("study", "image"):
            if getattr(args, opt) is not None:
                raise UsageError(f"--{opt} is for --cache, not for a SCAN")
        if not os.path.exists(args.scan):
            raise UsageError(f"{args.scan}: no such file or directory")
    else:
        if args.study is None:
            raise UsageError("--cache needs --study NAME")
        if args.mode is not None or args.series_uid is not None:
            raise UsageError("--mode and --series-uid are for a SCAN; a cached image knows its mode")


def cmd_qa(args: argparse.Namespace) -> int:
    from .. import qa

    _check_args(args, tuple(qa.SUFFIXES))
    try:
        qa._import_figure()
    except ImportError as err:
        raise UsageError(str(err)) from None
    t0 = time.perf_counter()
    print("reading the cached image" if args.scan is None else f"reading and preprocessing {args.scan}", flush=True)
    try:
        if args.scan is not None:
            vol = qa.load_scan(args.scan, args.mode, series_uid=args.series_uid)
        else:
            vol = qa.load_cached(args.cache, args.study, args.image)
    except KeyError as err:
        raise UsageError(err.args[0] if err.args else str(err)) from None
    path = qa.save_montage(vol, args.output, dpi=args.dpi)
    d, h, w = vol.shape
    print(
        f"wrote {path}: {vol.name}, {vol.mode.upper()}, [D, H, W] = [{d}, {h}, {w}], view {vol.view} "
        f"({VIEW_NAMES.get(vol.view, '?')}), D/H/W towards {'/'.join(qa.orientation_letters(vol.view, vol.direction))} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return 0
