"""``neurovfm metadata`` (describe a dataset folder) and ``neurovfm cache build|stats|verify|import``
(its uint8 token cache)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import (
    PROG,
    Formatter,
    UsageError,
    add_derived,
    add_ray,
    add_storage_options,
    positive_int,
    ray_of,
    shard,
    storage_options_of,
)

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
  neurovfm cache build /data/ds -w 16                  # all images, 16 at once
  neurovfm cache build /data/ds -w 4 -j 2              # 4 images at once, 2 kernel threads each
  neurovfm cache build /data/ds -w 8 --shard 3/10      # this machine's tenth
  neurovfm cache build /data/ds --force --study s001   # rebuild one study
  neurovfm cache stats /data/ds
  neurovfm cache verify /data/ds                       # CRC-check every file
  neurovfm cache import /data/ds                       # convert a published NeuroVFM cache

-w/--workers is images at once, -j/--threads kernel threads per image (default:
1 with several workers, else the CPUs), as in 'neurovfm prepare'.
Under a SLURM job array or torchrun, --shard defaults to the task's share
(SLURM_ARRAY_TASK_ID/COUNT, RANK/WORLD_SIZE). Several builders may work on one
folder at once.
"""

_IMPORT_EPILOG = """\
examples:
  neurovfm cache import /data/ds                       # every image of metadata.json
  neurovfm cache import /data/ds --study s001 -w 4
  neurovfm cache import /data/ds --trust-pickle        # a cache you built yourself

The published files are pickles: they are read with torch.load(weights_only=True)
(PyTorch needed). A file that needs more is refused unless --trust-pickle is given,
which runs the code pickled in it. Every scan must still be in raw/ (an entry records
its size and time). After the import the published code cannot read the cache.
"""


def add_metadata(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "metadata",
        parents=[common],
        help="scan a dataset folder and write its metadata.json",
        description="Scan DATA_DIR/raw/<study>/ and write the dataset's metadata.json.",
        epilog=_METADATA_EPILOG,
        formatter_class=Formatter,
    )
    p.add_argument("data_dir", metavar="DATA_DIR", help="dataset folder holding raw/<study>/")
    p.add_argument(
        "--modes", required=True, metavar="FILE", help="study -> mode mapping: CSV (study,mode) or JSON object"
    )
    p.add_argument("-o", "--output", metavar="FILE", help="where to write (default DATA_DIR/metadata.json)")
    add_derived(p)
    add_storage_options(p)
    p.set_defaults(func=cmd_metadata)


def add_cache(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "cache",
        help="build, inspect, verify or import the uint8 token cache",
        description="Build, inspect, verify or import DATA_DIR/processed/.",
        epilog=_CACHE_EPILOG,
        formatter_class=Formatter,
    )
    csub = p.add_subparsers(dest="cache_command", metavar="ACTION", title="actions")
    csub.required = True
    b = csub.add_parser(
        "build", parents=[common], help="fill processed/ (resumable)", epilog=_CACHE_EPILOG, formatter_class=Formatter
    )
    b.add_argument("data_dir", metavar="DATA_DIR")
    b.add_argument(
        "-w",
        "--workers",
        type=positive_int,
        metavar="N",
        help="images built at once (default: the CPUs this process may use); "
        "-j sets the kernel threads of each (default 1 with several workers)",
    )
    b.add_argument("--force", action="store_true", help="rebuild images already cached")
    b.add_argument("--shard", type=shard, metavar="I/N", help="build only shard I of N")
    b.add_argument("--study", action="append", metavar="NAME", help="only this study (repeatable)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument(
        "--derived",
        choices=("auto", "include", "skip"),
        default=None,
        help="first describe raw/ again under this policy for derived/secondary series (as 'neurovfm "
        "metadata --derived', with the modes of metadata.json; cached images stay cached), then build "
        "(default: metadata.json as it is)",
    )
    add_ray(b, "image")
    b.set_defaults(func=cmd_cache_build)
    st = csub.add_parser(
        "stats",
        parents=[common],
        help="coverage, failures, bytes on disk",
        description="Count the studies and images of DATA_DIR, those cached, failed or stale, and the bytes on disk.",
        epilog="examples:\n  neurovfm cache stats /data/ds\n  neurovfm cache stats /data/ds --json > stats.json\n",
        formatter_class=Formatter,
    )
    st.add_argument("data_dir", metavar="DATA_DIR")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=cmd_cache_stats)
    v = csub.add_parser(
        "verify",
        parents=[common],
        help="check every cached file (sizes and CRC-32)",
        description="Check every cache entry: sidecar, source fingerprint, pipeline version, sizes and CRC-32.\n"
        "Prints the images whose entry is missing, stale or corrupt; exit code 1 when there are any.",
        epilog="examples:\n  neurovfm cache verify /data/ds\n  neurovfm cache verify /data/ds || neurovfm cache build /data/ds\n",
        formatter_class=Formatter,
    )
    v.add_argument("data_dir", metavar="DATA_DIR")
    v.set_defaults(func=cmd_cache_verify)
    im = csub.add_parser(
        "import",
        parents=[common],
        help="convert a cache built by the published NeuroVFM code (in place)",
        description="Convert the cache the published NeuroVFM code built in DATA_DIR/processed/ into this\n"
        "library's entries, in place, without reading the scans: each image's files are checked\n"
        "(shapes, windows, modes, mask values), then rewritten, its sidecar last. Images that fail\n"
        "a check are listed with the file and the reason and left as they were; exit code 1 when\n"
        "there are any. Valid entries are skipped, so it can be run again.",
        epilog=_IMPORT_EPILOG,
        formatter_class=Formatter,
    )
    im.add_argument("data_dir", metavar="DATA_DIR")
    im.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load files that a safe torch.load refuses with weights_only=False, which runs the code "
        "pickled in them: only for a cache you built yourself",
    )
    im.add_argument(
        "-w",
        "--workers",
        type=positive_int,
        metavar="N",
        help="images converted at once (default: the CPUs this process may use)",
    )
    im.add_argument("--shard", type=shard, metavar="I/N", help="import only shard I of N")
    im.add_argument("--study", action="append", metavar="NAME", help="only this study (repeatable)")
    im.add_argument("--no-progress", action="store_true", help="no progress bar")
    im.set_defaults(func=cmd_cache_import)


def cmd_metadata(args: argparse.Namespace) -> int:
    import warnings

    from ..data import DatasetMetadata

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = DatasetMetadata.from_directory(
            args.data_dir, args.modes, derived=args.derived, storage_options=storage_options_of(args)
        )
    for w in caught:
        print(f"{PROG}: warning: {w.message}", file=sys.stderr)
    path = meta.save(args.output)
    _print_series_notes(meta)
    by_mode = {m: len(meta.get_studies_by_mode(m)) for m in ("ct", "mri")}
    n_skipped = len(meta.skipped_series)
    print(
        f"{path}: {len(meta)} studies ({by_mode['ct']} CT, {by_mode['mri']} MRI), {meta.num_images()} images"
        + (f", {n_skipped} series not used" if n_skipped else "")
        + (f", {len(caught)} warnings" if caught else "")
    )
    return 0


def _print_series_notes(meta: Any) -> None:
    """The series each study did not use, and the derived ones it did, with the policy."""
    used = [(s.name, im) for s in meta for im in s.images if im.note]
    if not meta.skipped_series and not used:
        return
    print(f"series by study (derived series: {meta.derived}):")
    for study, im in used:
        print(f"  {study}: used {im.name} ({im.path}): {im.note}")
    for study, rec in meta.skipped_series:
        print(f"  {study}: not used {rec.name} ({rec.path}): {rec.reason}")


def _rescan(data_dir: str, derived: str) -> None:
    """``metadata.json`` made again from raw/ under ``derived`` (modes and processed flags kept)."""
    import warnings

    from ..data import DatasetMetadata

    old = DatasetMetadata.from_file(f"{data_dir}/metadata.json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = DatasetMetadata.from_directory(data_dir, {s.name: s.mode for s in old}, derived=derived)
    for w in caught:
        print(f"{PROG}: warning: {w.message}", file=sys.stderr)
    done = {(s.name, im.name, im.path) for s in old for im in s.images if im.processed}
    for s in meta:
        for im in s.images:
            im.processed = (s.name, im.name, im.path) in done
    meta.published = old.published
    meta.save()
    _print_series_notes(meta)


def cmd_cache_build(args: argparse.Namespace) -> int:
    from ..data import CacheManager

    if args.derived is not None:
        CacheManager(args.data_dir)  # the missing-metadata error, as without --derived
        _rescan(args.data_dir, args.derived)
    cm = CacheManager(args.data_dir)
    summary = cm.build_cache(
        num_workers=args.workers,
        force=args.force,
        study_names=args.study,
        shard=args.shard,
        progress=not args.no_progress,
        threads_per_image=args.threads,
        executor=ray_of(args)[0],
        ray_address=ray_of(args)[1],
    )
    if args.no_progress:
        print(summary)
    return 1 if summary.failed else 0


def cmd_cache_stats(args: argparse.Namespace) -> int:
    import json

    from ..data import CacheManager

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


def cmd_cache_verify(args: argparse.Namespace) -> int:
    from ..data import CacheManager

    cm = CacheManager(args.data_dir)
    problems = cm.verify()
    for key, status in sorted(problems.items()):
        print(f"{key}: {status}")
    total = cm.metadata.num_images()
    if not problems:
        print(f"{total} of {total} images are cached and valid")
    else:
        counts = ", ".join(
            f"{n} {s}" for s in ("missing", "stale", "corrupt") if (n := sum(v == s for v in problems.values()))
        )
        print(f"{len(problems)} of {total} images need `neurovfm cache build {args.data_dir}` ({counts})")
    if "stale" in problems.values():
        print(
            "stale: the source file changed, or the entry was built by an older pipeline version; "
            f"`neurovfm cache build {args.data_dir}` rebuilds it"
        )
    return 1 if problems else 0


def cmd_cache_import(args: argparse.Namespace) -> int:
    from ..data import CacheManager

    cm = CacheManager(args.data_dir)
    try:
        summary = cm.import_published(
            trust_pickle=args.trust_pickle,
            num_workers=args.workers,
            study_names=args.study,
            shard=args.shard,
            progress=not args.no_progress,
        )
    except ImportError as err:
        raise UsageError(str(err)) from None
    if args.no_progress:
        print(summary)
    return 1 if summary.failed else 0
