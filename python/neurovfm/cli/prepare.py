"""``neurovfm prepare``: file to tokens on a scan (or the built-in phantoms), the
report of what each stage produced and how long it took, and the output file."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._common import PROG, VIEW_NAMES, Formatter, UsageError, add_derived, check_output_folder, one_line
from ._common import mode as mode_arg
from ._common import add_ray, add_storage_options, out_path, positive_int, ray_of, shard, storage_options_of

if TYPE_CHECKING:
    pass


#: File suffixes ``prepare -o`` can write.
OUTPUT_SUFFIXES = (".npz", ".pt")

_DESCRIPTION = """\
Run the NeuroVFM preprocessing on a scan, from file to tokens, and report what
each stage produced and how long it took:

  load_image             read, reorient to RPI, B-spline resample to 1x1x4 mm, crop
  prepare_for_inference  CT windows (brain, blood, bone) or MRI normalisation, masks
  tokenize               4x16x16 patches -> tokens [N, 1024], coords, filtered

Without PATH, built-in synthetic phantoms are written to a temporary folder and
the whole reading path runs on them: the CT as NIfTI, the same CT as a DICOM
series (mode ct) and a sagittal T1 MR as NIfTI (mode mri)."""

_EPILOG = """\
examples:
  neurovfm prepare
  neurovfm prepare --mode ct --phantom-dir phantoms/    keep the phantom files
  neurovfm prepare head_ct.nii.gz --mode ct
  neurovfm prepare study/series_dir --mode mri --series-uid 1.2.840.113619.2.55.3
  neurovfm prepare head_ct.nii.gz --mode ct -j 4 -o tokens.npz   4 kernel threads
  neurovfm prepare t1.nii.gz --mode mri -o tokens.pt    (needs PyTorch)
  neurovfm prepare studies/ --mode mri -o out/ -w 4      batch: every usable series, 4 at once
  neurovfm prepare 'scans/*.nii.gz' --mode ct -o out/ --shard 0/4
  neurovfm prepare --manifest scans.csv -o out/          CSV: path,mode[,id]

batch mode (several inputs, -o naming a folder, --output-dir or --manifest): one
output per series in OUT_DIR, -w N scans at once (each with -j kernel threads,
default CPUs/N; before 0.3, -j N meant scans at once here),
series already done are skipped (--force remakes them), outputs are written under
a temporary name then renamed (a killed run leaves no half file; rerun to finish),
and OUT_DIR/summary.csv has a row per series (input, series_uid, output, status
ok/skipped/failed, reason, shape, tokens, foreground, seconds, mode_warnings),
appended as each finishes and rewritten in input order at the end. Exit code 1
when a series failed.

output file (-o): tokens [C, N, 1024] float32 (C = 3 CT windows brain, blood,
bone; or 1 for MRI), coords [N, 3] int32, filtered [N] uint8 (1 = background
token), size [3] int32 (the token grid), channels, mode, view, the grid's
geometry (spacing, origin, direction, axes, shape, flips: OutputGeometry.from_dict)
and source. The tokens hold every voxel: neurovfm.data.untokenize(tokens, size)
gives the [C, D, H, W] arrays back. Without PATH, one file per phantom:
OUT.<name>.npz.
"""


def add_prepare(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "prepare",
        parents=[common],
        help="file to tokens on a scan (or the built-in phantoms), with timings",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=Formatter,
    )
    p.add_argument(
        "path",
        nargs="*",
        metavar="PATH",
        help=(
            "NIfTI file, DICOM file or DICOM series folder, or any image SimpleITK reads; "
            "several (or folders of studies, or glob patterns) with -o OUT_DIR: batch mode"
        ),
    )
    p.add_argument(
        "--mode",
        type=mode_arg,
        metavar="{ct,mri}",
        help="modality of PATH (required with PATH); without PATH, run only these phantoms",
    )
    p.add_argument(
        "--series-uid", metavar="UID", help="SeriesInstanceUID to read when a DICOM folder holds several series"
    )
    p.add_argument(
        "-o",
        "--output",
        type=out_path,
        metavar="OUT",
        help="save tokens, coords, filtered and the geometry to OUT.npz (NumPy) or OUT.pt (PyTorch)",
    )
    b = p.add_argument_group("batch mode (several inputs, -o naming a folder, --output-dir or --manifest)")
    b.add_argument(
        "--output-dir",
        type=out_path,
        metavar="DIR",
        help="batch mode: write one output per series here (a folder, or a URL prefix: s3://bucket/out/)",
    )
    b.add_argument("--manifest", type=Path, metavar="CSV", help="batch mode: scans from a CSV (path, mode[, id])")
    b.add_argument(
        "--format", choices=["npz", "pt", "nifti"], default="npz", help="batch mode: output format (default npz)"
    )
    b.add_argument(
        "-w",
        "--workers",
        type=positive_int,
        metavar="N",
        help="batch mode: scans prepared at once (default 1; each with -j kernel threads, default CPUs/N)",
    )
    b.add_argument("--force", action="store_true", help="batch mode: remake outputs that exist")
    b.add_argument(
        "--shard",
        type=shard,
        metavar="I/N",
        help="batch mode: only shard I of N (default: from SLURM array / torchrun variables)",
    )
    b.add_argument("--no-progress", action="store_true", help="batch mode: no progress bar")
    add_derived(b)
    add_ray(b, "series (batch mode)")
    add_storage_options(p)
    p.add_argument(
        "--phantom-dir",
        type=Path,
        metavar="DIR",
        help="without PATH: write the phantoms here and keep them (default: a temporary folder)",
    )
    p.set_defaults(func=cmd_prepare)


# --- one scan -------------------------------------------------------------------------------


@dataclass
class InputHeader:
    """The input as read, before any resampling."""

    size: tuple[int, ...]  # (x, y, z)
    spacing: tuple[float, ...]  # (x, y, z)
    dtype: str
    orientation: str


@dataclass
class ScanResult:
    """What ``prepare`` measured on one scan."""

    name: str
    path: str
    mode: str
    input_size: tuple[int, ...]  # (x, y, z)
    input_spacing: tuple[float, ...]
    input_dtype: str
    input_orientation: str
    output_shape: tuple[int, ...]  # [D, H, W]
    output_spacing: tuple[float, ...]  # (x, y, z)
    view: int
    tokens: int
    token_grid: tuple[int, ...]
    fg_tokens: float  # fraction of tokens without background
    fg_voxels: float  # fraction of foreground voxels
    times: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    arrays: dict[str, Any] = field(default_factory=dict, repr=False)  # what -o saves


def _orientation(direction: Any) -> str:
    import SimpleITK as sitk

    try:
        return str(sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines([float(d) for d in direction]))
    except RuntimeError:  # pragma: no cover - not a 3x3 direction
        return "?"


def _header(shape_zyx: tuple[int, ...], spacing: Any, dtype: Any, direction: Any) -> InputHeader:
    import numpy as np

    return InputHeader(
        tuple(int(s) for s in shape_zyx[::-1]),
        tuple(float(s) for s in spacing[:3]),
        np.dtype(dtype).name,
        _orientation(direction),
    )


def run_scan(
    path: str | os.PathLike[str],
    mode: str,
    series_uid: str | None = None,
    name: str = "",
    keep_arrays: bool = False,
    derived: str = "auto",
    storage_options: dict[str, Any] | None = None,
) -> ScanResult:
    """File to tokens on one scan, timed per stage (:func:`neurovfm.data.scan.prepare_scan`;
    a DICOM Modality or values that contradict ``mode`` are a ``ModeMismatchWarning``).
    A folder without ``series_uid`` gives its first usable series by
    :func:`~neurovfm.data.find_series` (most slices) under the ``derived`` policy."""
    import warnings

    from ..data.scan import prepare_scan
    from ..data.series import SeriesRecord, find_series
    from ..data.sources import remote
    from ..errors import ModeMismatchWarning

    path = os.fspath(path)
    url = remote.is_url(path)
    if not url and not os.path.exists(path):
        raise UsageError(f"{path}: no such file or directory")
    src: str | SeriesRecord = path
    is_folder = not path.lower().endswith((".nii", ".nii.gz", ".dcm")) if url else os.path.isdir(path)
    if is_folder and series_uid is None:
        records = find_series(path, derived=derived, storage_options=storage_options)
        usable = [rec for rec in records if rec.usable]
        if not usable:
            why = "; ".join(f"{rec.name}: {rec.reason}" for rec in records[:3]) or "no image files"
            hint = "; --derived include would use its derived series" if "derived/secondary" in why else ""
            raise UsageError(f"{path}: no usable series ({why}){hint}")
        src = usable[0]
    r = prepare_scan(src, mode, series_uid, storage_options=storage_options)
    for conflict in r.mode_warnings:
        warnings.warn(ModeMismatchWarning(f"{path}: {conflict}"), stacklevel=2)
    header = _header(r.input_shape, r.input_spacing, r.input_dtype, r.input_direction)
    t = r.times
    read = t["read"] + t["mode check"] + t["resample"]
    out = ScanResult(
        name=name or os.path.basename(path.rstrip(os.sep)),
        path=path,
        mode=mode,
        input_size=header.size,
        input_spacing=header.spacing,
        input_dtype=header.dtype,
        input_orientation=header.orientation,
        output_shape=r.shape,
        output_spacing=tuple(r.image.GetSpacing()),
        view=r.view,
        tokens=int(r.filtered.size),
        token_grid=tuple(int(v) for v in r.size),
        fg_tokens=r.foreground,
        fg_voxels=r.foreground_voxels,
        times={
            "read+resample": read,
            "prepare": t["prepare"],
            "tokenize": t["tokenize"],
            "total": read + t["prepare"] + t["tokenize"],
        },
    )
    if keep_arrays:
        out.arrays = r.payload(mode, path)
    return out


# --- the report and the output file ---------------------------------------------------------


def _fmt_mm(values: tuple[float, ...]) -> str:
    return " x ".join(f"{v:.3f}".rstrip("0").rstrip(".") for v in values)


def format_result(r: ScanResult) -> str:
    """The lines ``prepare`` prints for one scan."""
    t = r.times
    d, h, w = r.output_shape
    lines = [
        f"{r.name}: {r.path} (mode {r.mode})",
        (
            f"  input     {' x '.join(map(str, r.input_size))} voxels (x, y, z), "
            f"{_fmt_mm(r.input_spacing)} mm, {r.input_dtype}, orientation {r.input_orientation}"
        ),
        (
            f"  output    [D, H, W] = [{d}, {h}, {w}], spacing {_fmt_mm(r.output_spacing)} mm (x, y, z), "
            f"view {r.view} ({VIEW_NAMES.get(r.view, '?')})"
        ),
        (
            f"  tokens    N = {r.tokens} ({' x '.join(map(str, r.token_grid))}), "
            f"foreground {100 * r.fg_tokens:.1f}% of tokens, {100 * r.fg_voxels:.1f}% of voxels"
        ),
        (
            f"  time      read+resample {t['read+resample']:.3f} s | prepare {t['prepare']:.3f} s | "
            f"tokenize {t['tokenize']:.3f} s | total {t['total']:.3f} s"
        ),
    ]
    return "\n".join(lines)


_NEEDS_TORCH = "saving .pt files needs PyTorch (pip install torch); use an .npz output instead"


def _check_output(out: Path | None) -> None:
    if out is None:
        return
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise UsageError(f"output {str(out)!r} must end with .npz or .pt")
    if suffix == ".pt":
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise UsageError(_NEEDS_TORCH)
    check_output_folder(out)


def save_result(r: ScanResult, out: Path) -> None:
    """Write what ``run_scan(keep_arrays=True)`` kept to ``.npz`` or ``.pt``
    (:func:`neurovfm.data.batch.save_payload`, as the batch mode writes it)."""
    from ..data.batch import save_payload

    if out.suffix.lower() == ".pt":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise UsageError(_NEEDS_TORCH) from None
    save_payload(r.arrays, out)


def _output_for(out: Path | None, name: str, several: bool) -> Path | None:
    if out is None or not several:
        return out
    return out.with_name(f"{out.stem}.{name}{out.suffix}")


# --- the command ----------------------------------------------------------------------------


def _batch_mode(args: argparse.Namespace) -> bool:
    out = args.output
    folder_out = isinstance(out, str) or (
        out is not None and (out.is_dir() or str(out).endswith(("/", os.sep)) or not out.suffix)
    )
    return len(args.path) > 1 or args.output_dir is not None or args.manifest is not None or folder_out


def cmd_prepare(args: argparse.Namespace) -> int:
    if _batch_mode(args):
        return _prepare_batch(args)
    batch_only = (
        args.format != "npz" or args.force or args.shard is not None or args.no_progress or args.ray is not None
    )
    if batch_only or args.workers is not None:
        raise UsageError(
            "--format, --force, --shard, -w/--workers, --ray and --no-progress are for batch mode (-o OUT_DIR)"
        )
    args.path = args.path[0] if args.path else None
    _check_output(args.output)
    if args.path is None:
        if args.series_uid:
            raise UsageError("--series-uid needs a PATH")
        return _prepare_phantoms(args)
    if args.phantom_dir is not None:
        raise UsageError("--phantom-dir is for the built-in phantoms, without PATH")
    if args.mode is None:
        raise UsageError("--mode is required with a PATH (--mode ct or --mode mri)")
    r = run_scan(
        args.path,
        args.mode,
        args.series_uid,
        keep_arrays=args.output is not None,
        derived=args.derived,
        storage_options=storage_options_of(args),
    )
    print(format_result(r), flush=True)
    if args.output is not None:
        save_result(r, args.output)
        print(f"  saved     {args.output}")
    return 0


def _prepare_batch(args: argparse.Namespace) -> int:
    from ..data.batch import prepare_many

    if args.output is not None and args.output_dir is not None:
        raise UsageError("give the output folder once: -o OUT_DIR or --output-dir OUT_DIR")
    out = args.output_dir if args.output_dir is not None else args.output
    if out is None:
        raise UsageError("batch mode needs an output folder: -o OUT_DIR")
    if args.phantom_dir is not None or args.series_uid:
        raise UsageError("--phantom-dir and --series-uid are for one scan, not batch mode")
    if not args.path and args.manifest is None:
        raise UsageError("batch mode needs INPUT... or --manifest CSV")
    if args.mode is None and args.manifest is None:
        raise UsageError("--mode is required (--mode ct or --mode mri), or a --manifest with a mode column")
    if isinstance(out, Path):  # a URL prefix is made by its first object
        if out.exists() and not out.is_dir():
            raise UsageError(f"output folder {str(out)!r} is a file")
        check_output_folder(out)
    summary = prepare_many(
        args.path,
        out,
        args.mode,
        manifest=args.manifest,
        format=args.format,
        workers=args.workers or 1,
        force=args.force,
        shard=args.shard,
        progress=not args.no_progress,
        threads=args.threads,
        derived=args.derived,
        storage_options=storage_options_of(args),
        executor=ray_of(args)[0],
        ray_address=ray_of(args)[1],
    )
    print(summary, flush=True)
    if args.no_progress:  # else prepare_many said it as it happened
        for row in summary.rows:
            if row.status == "failed":
                print(f"{PROG}: error: {row.input} {row.series_uid}".rstrip() + f": {row.reason}", file=sys.stderr)
    return 1 if summary.failed else 0


def _prepare_phantoms(args: argparse.Namespace) -> int:
    from .. import phantom

    scans = [("ct_nifti", "ct"), ("ct_dicom", "ct"), ("mri_nifti", "mri")]
    scans = [(name, m) for name, m in scans if args.mode in (None, m)]
    with tempfile.TemporaryDirectory(prefix="neurovfm-phantoms-") as tmp:
        folder = args.phantom_dir if args.phantom_dir is not None else Path(tmp)
        t0 = time.perf_counter()
        paths = phantom.write_phantoms(folder, names=[name for name, _ in scans])
        print(f"No PATH given: wrote the built-in phantoms to {folder} ({time.perf_counter() - t0:.1f} s)")
        failed = 0
        for name, m in scans:
            print()
            try:
                r = run_scan(paths[name], m, name=name, keep_arrays=args.output is not None)
            except Exception as err:  # noqa: BLE001 - report and go on: the other reading paths still run
                failed += 1
                print(f"{name}: {paths[name]} (mode {m})\n  FAILED    {one_line(err)}", flush=True)
                print(f"{PROG}: error: {name}: {one_line(err)}", file=sys.stderr)
                continue
            print(format_result(r), flush=True)
            out = _output_for(args.output, name, len(scans) > 1)
            if out is not None:
                save_result(r, out)
                print(f"  saved     {out}")
        print()
        print(f"{len(scans) - failed} of {len(scans)} phantom scans prepared")
    return 1 if failed else 0
