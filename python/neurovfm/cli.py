"""The ``neurovfm`` command line.

One sub-command per task; each is registered by an ``_add_<name>`` function that
builds its parser and sets ``func`` to the function that runs it (``args -> int``).
User errors (a missing or unreadable file, a bad option) end with exit code 2 and
one line ``neurovfm: error: ...`` on stderr; anything else is a bug and keeps its
traceback.

    python -m neurovfm prepare                       # built-in phantoms, whole pipeline
    python -m neurovfm prepare scan.nii.gz --mode ct -o tokens.npz
    python -m neurovfm qa scan.nii.gz --mode ct -o qa.png
    python -m neurovfm bench                         # quick benchmarks (source checkout)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["UsageError", "build_parser", "main"]

PROG = "neurovfm"
#: File suffixes ``prepare -o`` can write.
OUTPUT_SUFFIXES = (".npz", ".pt")
_VIEW_NAMES = {0: "axial", 1: "coronal", 2: "sagittal"}


class UsageError(Exception):
    """A mistake of the user (bad option, missing input): exit code 2, one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, but errors become :class:`UsageError` (one line, no usage dump)."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=30)


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _mode(text: str) -> str:
    m = text.lower()
    if m not in ("ct", "mri"):
        raise argparse.ArgumentTypeError(f"invalid mode {text!r} (choose ct or mri)")
    return m


# --- parser ---------------------------------------------------------------------------------

_MAIN_EPILOG = """\
examples:
  neurovfm prepare                              run the pipeline on built-in phantoms
  neurovfm prepare head.nii.gz --mode ct        one scan: shapes, tokens, timings
  neurovfm prepare dicom_dir/ --mode mri -o t.npz
  neurovfm metadata /data/ds --modes modes.csv  describe a dataset folder
  neurovfm cache build /data/ds -w 16           build its uint8 cache
  neurovfm qa head.nii.gz --mode ct -o qa.png   PNG montage of the preprocessed volume
  neurovfm bench                                quick benchmarks against the reference

run 'neurovfm COMMAND --help' for the options of a command.
"""

_PREPARE_DESCRIPTION = """\
Run the NeuroVFM preprocessing on a scan, from file to tokens, and report what
each stage produced and how long it took:

  load_image             read, reorient to RPI, B-spline resample to 1x1x4 mm, crop
  prepare_for_inference  CT windows (brain, blood, bone) or MRI normalisation, masks
  tokenize               4x16x16 patches -> tokens [N, 1024], coords, filtered

Without PATH, built-in synthetic phantoms are written to a temporary folder and
the whole reading path runs on them: the CT as NIfTI, the same CT as a DICOM
series (mode ct) and a sagittal T1 MR as NIfTI (mode mri)."""

_PREPARE_EPILOG = """\
examples:
  neurovfm prepare
  neurovfm prepare --mode ct --phantom-dir phantoms/    keep the phantom files
  neurovfm prepare head_ct.nii.gz --mode ct
  neurovfm prepare study/series_dir --mode mri --series-uid 1.2.840.113619.2.55.3
  neurovfm prepare head_ct.nii.gz --mode ct -j 4 -o tokens.npz
  neurovfm prepare t1.nii.gz --mode mri -o tokens.pt    (needs PyTorch)

output file (-o): tokens [C, N, 1024] float32 (C = 3 CT windows brain, blood,
bone; or 1 for MRI), coords [N, 3] int32, filtered [N] uint8 (1 = background
token), size [3] int32, arrays [C, D, H, W] float32, channels, mode, view,
spacing, source. Without PATH, one file per phantom: OUT.<name>.npz.
"""


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command line (one sub-parser per command)."""
    from . import __version__

    parser = _Parser(
        prog=PROG,
        description="Fast, exact preprocessing of brain CT and MRI for the NeuroVFM model.",
        epilog=_MAIN_EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True

    # Options every command takes.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-j",
        "--threads",
        type=_positive_int,
        metavar="N",
        help="threads for the kernels and SimpleITK (default: the CPUs this process may use)",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more (-v: the library's choices, e.g. the DICOM series; -vv: debug)",
    )
    for add in _COMMANDS:
        add(sub, common)
    return parser


def _add_prepare(sub, common) -> None:
    p = sub.add_parser(
        "prepare",
        parents=[common],
        help="file to tokens on a scan (or the built-in phantoms), with timings",
        description=_PREPARE_DESCRIPTION,
        epilog=_PREPARE_EPILOG,
        formatter_class=_Formatter,
    )
    p.add_argument(
        "path",
        nargs="?",
        metavar="PATH",
        help="NIfTI file, DICOM file or DICOM series folder, or any image SimpleITK reads",
    )
    p.add_argument(
        "--mode",
        type=_mode,
        metavar="{ct,mri}",
        help="modality of PATH (required with PATH); without PATH, run only these phantoms",
    )
    p.add_argument(
        "--series-uid", metavar="UID", help="SeriesInstanceUID to read when a DICOM folder holds several series"
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="OUT",
        help="save tokens, coords, filtered and the arrays to OUT.npz (NumPy) or OUT.pt (PyTorch)",
    )
    p.add_argument(
        "--phantom-dir",
        type=Path,
        metavar="DIR",
        help="without PATH: write the phantoms here and keep them (default: a temporary folder)",
    )
    p.set_defaults(func=cmd_prepare)


_METADATA_EPILOG = """\
examples:
  neurovfm metadata /data/ds --modes modes.csv        # study,mode lines (ct or mri)
  neurovfm metadata /data/ds --modes modes.json -o /data/ds/metadata.json

Scans DATA_DIR/raw/<study>/ for NIfTI files, DICOM files and DICOM folders and
writes DATA_DIR/metadata.json. Studies missing from the mapping, or with a mode
other than ct/mri, are skipped with a warning naming them.
"""

_CACHE_EPILOG = """\
examples:
  neurovfm cache build /data/ds -j 16                  # all images, 16 at once
  neurovfm cache build /data/ds -j 8 --shard 3/10      # this machine's tenth
  neurovfm cache build /data/ds --force --study s001   # rebuild one study
  neurovfm cache stats /data/ds
  neurovfm cache verify /data/ds                       # CRC-check every file

Under a SLURM job array or torchrun, --shard defaults to the task's share
(SLURM_ARRAY_TASK_ID/COUNT, RANK/WORLD_SIZE). Several builders may work on one
folder at once.
"""


def _add_metadata(sub, common) -> None:
    p = sub.add_parser(
        "metadata",
        parents=[common],
        help="scan a dataset folder and write its metadata.json",
        description="Scan DATA_DIR/raw/<study>/ and write the dataset's metadata.json.",
        epilog=_METADATA_EPILOG,
        formatter_class=_Formatter,
    )
    p.add_argument("data_dir", metavar="DATA_DIR", help="dataset folder holding raw/<study>/")
    p.add_argument("--modes", required=True, metavar="FILE", help="study -> mode mapping: CSV (study,mode) or JSON object")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write (default DATA_DIR/metadata.json)")
    p.set_defaults(func=cmd_metadata)


def _shard(text: str):
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n, e.g. 0/4, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def _add_cache(sub, common) -> None:
    p = sub.add_parser(
        "cache",
        help="build, inspect or verify the uint8 token cache",
        description="Build, inspect or verify DATA_DIR/processed/.",
        epilog=_CACHE_EPILOG,
        formatter_class=_Formatter,
    )
    csub = p.add_subparsers(dest="cache_command", metavar="ACTION", title="actions")
    csub.required = True
    b = csub.add_parser("build", parents=[common], help="fill processed/ (resumable)", epilog=_CACHE_EPILOG,
                        formatter_class=_Formatter)
    b.add_argument("data_dir", metavar="DATA_DIR")
    b.add_argument("-w", "--workers", type=_positive_int, metavar="N",
                   help="images processed at once (default: the CPUs this process may use)")
    b.add_argument("--force", action="store_true", help="rebuild images already cached")
    b.add_argument("--shard", type=_shard, metavar="I/N", help="build only shard I of N")
    b.add_argument("--study", action="append", metavar="NAME", help="only this study (repeatable)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_cache_build)
    st = csub.add_parser(
        "stats",
        parents=[common],
        help="coverage, failures, bytes on disk",
        description="Count the studies and images of DATA_DIR, those cached, failed or stale, and the bytes on disk.",
        epilog="examples:\n  neurovfm cache stats /data/ds\n  neurovfm cache stats /data/ds --json > stats.json\n",
        formatter_class=_Formatter,
    )
    st.add_argument("data_dir", metavar="DATA_DIR")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=cmd_cache_stats)
    v = csub.add_parser(
        "verify",
        parents=[common],
        help="check every cached file (sizes and CRC-32)",
        description="Check every cache entry: sidecar, source fingerprint, pipeline version, sizes and CRC-32.\n"
        "Prints the images that are not cached and valid; exit code 1 when there are any.",
        epilog="examples:\n  neurovfm cache verify /data/ds\n  neurovfm cache verify /data/ds || neurovfm cache build /data/ds\n",
        formatter_class=_Formatter,
    )
    v.add_argument("data_dir", metavar="DATA_DIR")
    v.set_defaults(func=cmd_cache_verify)


def cmd_metadata(args) -> int:
    import warnings

    from .data.metadata import DatasetMetadata

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = DatasetMetadata.from_directory(args.data_dir, args.modes)
    for w in caught:
        print(f"{PROG}: warning: {w.message}", file=sys.stderr)
    path = meta.save(args.output)
    by_mode = {m: len(meta.get_studies_by_mode(m)) for m in ("ct", "mri")}
    print(f"{path}: {len(meta)} studies ({by_mode['ct']} CT, {by_mode['mri']} MRI), {meta.num_images()} images")
    return 0


def cmd_cache_build(args) -> int:
    from .data.cache import CacheManager

    cm = CacheManager(args.data_dir)
    summary = cm.build_cache(
        num_workers=args.workers, force=args.force, study_names=args.study, shard=args.shard,
        progress=not args.no_progress,
    )
    if args.no_progress:
        print(summary)
    return 1 if summary.failed else 0


def cmd_cache_stats(args) -> int:
    import json

    from .data.cache import CacheManager

    stats = CacheManager(args.data_dir).get_cache_stats()
    if args.json:
        print(json.dumps(stats, indent=1))
        return 0
    print(f"studies        {stats['total_studies']}")
    print(f"images         {stats['total_images']}")
    print(f"cached         {stats['cached_images']} ({100 * stats['coverage']:.1f}%)")
    print(f"failed         {stats['failed_images']}")
    print(f"stale/corrupt  {stats['stale_images']}")
    print(f"bytes on disk  {stats['bytes_on_disk'] / 1e6:.1f} MB")
    return 0


def cmd_cache_verify(args) -> int:
    from .data.cache import CacheManager

    problems = CacheManager(args.data_dir).verify()
    for key, status in sorted(problems.items()):
        print(f"{key}: {status}")
    print(f"{len(problems)} image(s) not cached and valid")
    if "stale" in problems.values():
        print(
            "stale: the source file changed, or the entry was built by an older pipeline version; "
            f"`neurovfm cache build {args.data_dir}` rebuilds it"
        )
    return 1 if problems else 0


# --- qa -------------------------------------------------------------------------------------

_QA_DESCRIPTION = """\
Write a PNG montage of the preprocessed volume, as the model receives it: the
centre slice across each axis of [D, H, W] (columns) for each channel (rows: the
CT windows brain, blood and bone, or the normalised MRI). Background tokens are
shaded, each panel edge carries the patient direction it faces (R/L, A/P, S/I),
and the title gives the shape, the voxel spacing and the view.

The scan is read and preprocessed as by 'neurovfm prepare'; with --cache, the
image is read from a built cache instead. Needs matplotlib
(pip install "neurovfm[qa]")."""

_QA_EPILOG = """\
examples:
  neurovfm qa head_ct.nii.gz --mode ct -o qa.png
  neurovfm qa study/series_dir --mode mri -o t1_qa.png
  neurovfm qa --cache /data/ds --study s001 --image head -o s001_head.png
  neurovfm qa --cache /data/ds --study s002 -o s002.pdf     (study of one image)
"""


def _add_qa(sub, common) -> None:
    p = sub.add_parser(
        "qa",
        parents=[common],
        help="PNG montage of the preprocessed volume (3 axes x CT windows, token mask, orientation)",
        description=_QA_DESCRIPTION,
        epilog=_QA_EPILOG,
        formatter_class=_Formatter,
    )
    p.add_argument("scan", nargs="?", metavar="SCAN", help="NIfTI file, DICOM file or DICOM series folder")
    p.add_argument("--mode", type=_mode, metavar="{ct,mri}", help="modality of SCAN (required with SCAN)")
    p.add_argument("--series-uid", metavar="UID", help="SeriesInstanceUID when a DICOM folder holds several series")
    p.add_argument("--cache", metavar="DATA_DIR", help="read the image from this dataset's cache instead of a scan")
    p.add_argument("--study", metavar="NAME", help="with --cache: the study")
    p.add_argument("--image", metavar="NAME", help="with --cache: the image (default: the study's only image)")
    p.add_argument(
        "-o", "--output", type=Path, default=Path("qa.png"), metavar="OUT",
        help="the montage: .png (default qa.png), .pdf or .svg",
    )
    p.add_argument("--dpi", type=_positive_int, default=100, metavar="N", help="resolution (default 100)")
    p.set_defaults(func=cmd_qa)


def cmd_qa(args) -> int:
    from . import qa

    out = args.output
    if out.suffix.lower() not in qa.SUFFIXES:
        raise UsageError(f"output {str(out)!r} must end with {', '.join(qa.SUFFIXES)}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"output folder {str(parent)!r} does not exist")
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
    path = qa.save_montage(vol, out, dpi=args.dpi)
    d, h, w = vol.shape
    print(
        f"wrote {path}: {vol.name}, {vol.mode.upper()}, [D, H, W] = [{d}, {h}, {w}], view {vol.view} "
        f"({_VIEW_NAMES.get(vol.view, '?')}), D/H/W towards {'/'.join(qa.orientation_letters(vol.view, vol.direction))} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return 0


# --- bench ----------------------------------------------------------------------------------

#: The benchmark scripts ``bench`` runs, in order: (name, file, quick arguments, what).
BENCHMARKS = (
    ("prepare", "bench_prepare.py", ["--quick"], "file to tokens against the reference"),
    ("cache", "bench_cache.py", ["--quick"], "cache build and cached loads against the reference"),
    ("dataset", "bench_dataset.py", ["--quick"], "dataset items against the reference"),
)

_BENCH_DESCRIPTION = """\
Run the benchmarks of a source checkout (bench/*.py) in their quick mode, each
beside the reference pipeline in the same run: bench_prepare.py (file to
tokens), then bench_cache.py and bench_dataset.py when present. Each prints its
own table; see bench/README.md. The benchmarks are not part of the installed
package: they are found in --bench-dir, $NEUROVFM_BENCH_DIR, the checkout the
package was imported from, or ./bench of the current folder or a parent.

The real-scan corpus is read from $NEUROVFM_TEST_DATA (default ../shared/data
beside the checkout); cases whose data is missing are skipped."""

_BENCH_EPILOG = """\
examples:
  neurovfm bench                               all quick benchmarks (a few minutes)
  neurovfm bench --only prepare -j 4           file to tokens only, 4 threads
  neurovfm bench --full                        the full runs (5 repeats, peak RSS, ...)
  neurovfm bench --list                        show what would run
  neurovfm bench --bench-dir ~/src/neurovfm/bench
"""


def _add_bench(sub, common) -> None:
    p = sub.add_parser(
        "bench",
        parents=[common],
        help="quick benchmarks against the reference (needs a source checkout's bench/)",
        description=_BENCH_DESCRIPTION,
        epilog=_BENCH_EPILOG,
        formatter_class=_Formatter,
    )
    names = [b[0] for b in BENCHMARKS]
    p.add_argument(
        "--only", metavar="NAMES",
        help=f"comma-separated benchmarks to run, from {','.join(names)} (default: all present)",
    )
    p.add_argument("--full", action="store_true", help="the full runs instead of the quick ones")
    p.add_argument("--bench-dir", type=Path, metavar="DIR", help="folder holding bench_prepare.py")
    p.add_argument("--list", action="store_true", help="print the commands and exit")
    p.set_defaults(func=cmd_bench)


def find_bench_dir(explicit=None) -> Path:
    """The folder of the benchmark scripts (see ``neurovfm bench --help``)."""
    if explicit is not None:
        d = Path(explicit)
        if not (d / BENCHMARKS[0][1]).is_file():
            raise UsageError(f"{d}: no {BENCHMARKS[0][1]} there (--bench-dir must be a checkout's bench/ folder)")
        return d
    candidates = []
    env = os.environ.get("NEUROVFM_BENCH_DIR")
    if env:
        candidates.append(Path(env))
    pkg = Path(__file__).resolve().parent
    candidates.append(pkg.parent.parent / "bench")  # python/neurovfm -> checkout/bench
    cwd = Path.cwd().resolve()
    candidates += [d / "bench" for d in (cwd, *cwd.parents)]
    for d in candidates:
        if (d / BENCHMARKS[0][1]).is_file():
            return d
    raise UsageError(
        "benchmark scripts not found: they live in bench/ of a source checkout, not in the installed "
        "package; run from the checkout, or pass --bench-dir DIR (or set NEUROVFM_BENCH_DIR)"
    )


def cmd_bench(args) -> int:
    import subprocess

    names = [b[0] for b in BENCHMARKS]
    wanted = names if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in names]
    if unknown or not wanted:
        raise UsageError(f"--only: unknown benchmark(s) {unknown or args.only!r}; choose from {','.join(names)}")
    bench_dir = find_bench_dir(args.bench_dir)
    env = dict(os.environ)
    # The scripts benchmark the very package this command runs from.
    pkg_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_parent, env.get("PYTHONPATH")]))
    runs = []
    for name, fn, quick, what in BENCHMARKS:
        if name not in wanted:
            continue
        script = bench_dir / fn
        if not script.is_file():
            if args.only is not None:
                raise UsageError(f"{script}: not found")
            print(f"{PROG} bench: {fn} not present in {bench_dir}, skipped", flush=True)
            continue
        cmd = [sys.executable, str(script)] + ([] if args.full else list(quick))
        if args.threads is not None:
            cmd += ["--threads", str(args.threads)] if name == "prepare" else []
            cmd += ["--workers", str(args.threads)] if name == "cache" else []
        runs.append((name, what, cmd))
    if args.list:
        for name, what, cmd in runs:
            print(f"{name}: {what}\n  {' '.join(cmd)}")
        return 0
    failed = []
    t_all = time.perf_counter()
    for i, (name, what, cmd) in enumerate(runs, 1):
        print(f"\n=== [{i}/{len(runs)}] {name}: {what}\n    {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, env=env, cwd=str(bench_dir.parent))
        dt = time.perf_counter() - t0
        status = "ok" if rc == 0 else f"FAILED (exit code {rc})"
        print(f"=== [{i}/{len(runs)}] {name}: {status}, {dt:.1f} s", flush=True)
        if rc != 0:
            failed.append(name)
    print(f"\n{len(runs) - len(failed)} of {len(runs)} benchmarks ran ({time.perf_counter() - t_all:.1f} s)")
    if failed:
        print(f"{PROG}: error: benchmark(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


# Sub-commands, in the order --help lists them.
_COMMANDS = [_add_prepare, _add_metadata, _add_cache, _add_qa, _add_bench]


# --- prepare --------------------------------------------------------------------------------


@dataclass
class ScanResult:
    """What ``prepare`` measured on one scan."""

    name: str
    path: str
    mode: str
    input_size: tuple  # (x, y, z)
    input_spacing: tuple
    input_dtype: str
    input_orientation: str
    output_shape: tuple  # [D, H, W]
    output_spacing: tuple  # (x, y, z)
    view: int
    tokens: int
    token_grid: tuple
    fg_tokens: float  # fraction of tokens without background
    fg_voxels: float  # fraction of foreground voxels
    times: dict = field(default_factory=dict)  # stage -> seconds
    arrays: dict = field(default_factory=dict, repr=False)  # what -o saves


def _dtype_name(pixel_id) -> str:
    import SimpleITK as sitk

    names = {
        sitk.sitkUInt8: "uint8",
        sitk.sitkInt8: "int8",
        sitk.sitkUInt16: "uint16",
        sitk.sitkInt16: "int16",
        sitk.sitkUInt32: "uint32",
        sitk.sitkInt32: "int32",
        sitk.sitkUInt64: "uint64",
        sitk.sitkInt64: "int64",
        sitk.sitkFloat32: "float32",
        sitk.sitkFloat64: "float64",
    }
    return names.get(pixel_id) or sitk.GetPixelIDValueAsString(pixel_id)


def _orientation(direction) -> str:
    import SimpleITK as sitk

    try:
        return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines([float(d) for d in direction])
    except RuntimeError:  # pragma: no cover - not a 3x3 direction
        return "?"


def _input_info(path: str, series_uid):
    """(size, spacing, dtype, orientation) of the input as read, without the voxels
    where the header says it (files); a DICOM folder is read again."""
    import SimpleITK as sitk

    if os.path.isfile(path):
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        try:
            reader.ReadImageInformation()
            dim = reader.GetDimension()
            if dim >= 3:
                direction = reader.GetDirection()
                if dim == 4:
                    direction = [direction[r * 4 + c] for r in range(3) for c in range(3)]
                return (
                    tuple(reader.GetSize()[:3]),
                    tuple(reader.GetSpacing()[:3]),
                    _dtype_name(reader.GetPixelID()),
                    _orientation(direction),
                )
        except RuntimeError:
            pass
    from .data import read_volume

    vol = read_volume(path, series_uid=series_uid)
    return (
        tuple(vol.array.shape[::-1]),
        tuple(vol.spacing),
        str(vol.array.dtype),
        _orientation(vol.direction),
    )


def run_scan(path, mode: str, series_uid=None, name: str = "", keep_arrays: bool = False) -> ScanResult:
    """File to tokens on one scan, timed per stage."""
    import numpy as np

    from .data import load_image, prepare_for_inference, tokenize

    path = os.fspath(path)
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file or directory")
    t0 = time.perf_counter()
    img = load_image(path, series_uid=series_uid)
    t1 = time.perf_counter()
    res = prepare_for_inference(img, mode, return_foreground=True)
    t2 = time.perf_counter()
    if res is None:
        raise UsageError(
            f"{path}: too small for one 4x16x16 token after resampling to 1x1x4 mm "
            f"(size {tuple(img.GetSize())} in x, y, z)"
        )
    arrs, mask, view, fg = res
    toks = [tokenize(a, mask) for a in arrs]
    t3 = time.perf_counter()

    size, spacing, dtype, orient = _input_info(path, series_uid)
    n = toks[0].img.shape[0]
    out = ScanResult(
        name=name or os.path.basename(path.rstrip(os.sep)),
        path=path,
        mode=mode,
        input_size=size,
        input_spacing=spacing,
        input_dtype=dtype,
        input_orientation=orient,
        output_shape=tuple(int(s) for s in arrs[0].shape[1:]),
        output_spacing=tuple(img.GetSpacing()),
        view=int(view),
        tokens=int(n),
        token_grid=tuple(int(s) for s in toks[0].size),
        fg_tokens=float(1.0 - mask.mean()) if n else 0.0,
        fg_voxels=float(np.count_nonzero(fg) / fg.size) if fg.size else 0.0,
        times={"read+resample": t1 - t0, "prepare": t2 - t1, "tokenize": t3 - t2, "total": t3 - t0},
    )
    if keep_arrays:
        channels = ["brain", "blood", "bone"] if mode == "ct" else ["mri"]
        out.arrays = {
            "tokens": np.stack([t.img for t in toks]),
            "coords": toks[0].coords,
            "filtered": toks[0].filtered,
            "size": np.asarray(toks[0].size, np.int32),
            "arrays": np.concatenate(arrs, axis=0),
            "channels": channels,
            "mode": mode,
            "view": int(view),
            "spacing": [float(s) for s in img.GetSpacing()],
            "source": path,
        }
    return out


def _fmt_mm(values) -> str:
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
            f"view {r.view} ({_VIEW_NAMES.get(r.view, '?')})"
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


def _check_output(out: Path | None) -> None:
    if out is None:
        return
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise UsageError(f"output {str(out)!r} must end with .npz or .pt")
    if suffix == ".pt":
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise UsageError("saving .pt files needs PyTorch (pip install torch); use an .npz output instead")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"output folder {str(parent)!r} does not exist")


def save_result(r: ScanResult, out: Path) -> None:
    """Write what ``run_scan(keep_arrays=True)`` kept to ``.npz`` or ``.pt``."""
    import numpy as np

    a = r.arrays
    if out.suffix.lower() == ".pt":
        try:
            import torch
        except ImportError:
            raise UsageError("saving .pt files needs PyTorch (pip install torch); use an .npz output instead") from None
        payload = {
            k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in a.items()
        }
        torch.save(payload, out)
    else:
        payload = {k: np.asarray(v) for k, v in a.items()}
        with open(out, "wb") as f:  # a file object: numpy must not append .npz
            np.savez(f, **payload)


def _output_for(out: Path | None, name: str, several: bool) -> Path | None:
    if out is None or not several:
        return out
    return out.with_name(f"{out.stem}.{name}{out.suffix}")


def cmd_prepare(args) -> int:
    _check_output(args.output)
    if args.path is None:
        if args.series_uid:
            raise UsageError("--series-uid needs a PATH")
        return _prepare_phantoms(args)
    if args.phantom_dir is not None:
        raise UsageError("--phantom-dir is for the built-in phantoms, without PATH")
    if args.mode is None:
        raise UsageError("--mode is required with a PATH (--mode ct or --mode mri)")
    r = run_scan(args.path, args.mode, args.series_uid, keep_arrays=args.output is not None)
    print(format_result(r), flush=True)
    if args.output is not None:
        save_result(r, args.output)
        print(f"  saved     {args.output}")
    return 0


def _prepare_phantoms(args) -> int:
    from . import phantom

    scans = [("ct_nifti", "ct"), ("ct_dicom", "ct"), ("mri_nifti", "mri")]
    scans = [(name, mode) for name, mode in scans if args.mode in (None, mode)]
    with tempfile.TemporaryDirectory(prefix="neurovfm-phantoms-") as tmp:
        folder = args.phantom_dir if args.phantom_dir is not None else Path(tmp)
        t0 = time.perf_counter()
        paths = phantom.write_phantoms(folder, names=[name for name, _ in scans])
        print(f"No PATH given: wrote the built-in phantoms to {folder} ({time.perf_counter() - t0:.1f} s)")
        failed = 0
        for name, mode in scans:
            print()
            try:
                r = run_scan(paths[name], mode, name=name, keep_arrays=args.output is not None)
            except Exception as err:  # noqa: BLE001 - report and go on: the other reading paths still run
                failed += 1
                print(f"{name}: {paths[name]} (mode {mode})\n  FAILED    {_one_line(err)}", flush=True)
                print(f"{PROG}: error: {name}: {_one_line(err)}", file=sys.stderr)
                continue
            print(format_result(r), flush=True)
            out = _output_for(args.output, name, len(scans) > 1)
            if out is not None:
                save_result(r, out)
                print(f"  saved     {out}")
        print()
        print(f"{len(scans) - failed} of {len(scans)} phantom scans prepared")
    return 1 if failed else 0


# --- entry point ----------------------------------------------------------------------------


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest's capture swaps it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _setup(args):
    """Logging and threads for this run; returns a function that restores them
    (``main`` may run in-process, e.g. from tests)."""
    import SimpleITK as sitk

    from . import _threads, set_num_threads

    logger = logging.getLogger("neurovfm")
    saved_level, saved_handlers = logger.level, list(logger.handlers)
    saved_threads, saved_sitk = _threads._num_threads, sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        h = _StderrHandler()
        h.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
        logger.addHandler(h)
    verbose = getattr(args, "verbose", 0)
    logger.setLevel(logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG)
    threads = getattr(args, "threads", None)
    if threads is not None:
        set_num_threads(threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)

    def restore():
        logger.setLevel(saved_level)
        logger.handlers[:] = saved_handlers
        set_num_threads(saved_threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(saved_sitk)

    return restore


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror
        if err.filename and str(err.filename) not in text:
            text = f"{err.filename}: {text}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 user error)."""
    from .errors import NeuroVFMError

    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    restore = _setup(args)
    try:
        return int(args.func(args))
    except (UsageError, NeuroVFMError, FileNotFoundError, ValueError) as err:
        sys.stdout.flush()
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        restore()
