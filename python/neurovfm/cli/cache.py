"""``neurovfm metadata`` (describe a dataset folder) and ``neurovfm cache build|stats|verify``
(its uint8 token cache)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import PROG, Formatter, positive_int

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
    p.set_defaults(func=cmd_metadata)


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n, e.g. 0/4, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def add_cache(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "cache",
        help="build, inspect or verify the uint8 token cache",
        description="Build, inspect or verify DATA_DIR/processed/.",
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
        help="images processed at once (default: the CPUs this process may use)",
    )
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
        "Prints the images that are not cached and valid; exit code 1 when there are any.",
        epilog="examples:\n  neurovfm cache verify /data/ds\n  neurovfm cache verify /data/ds || neurovfm cache build /data/ds\n",
        formatter_class=Formatter,
    )
    v.add_argument("data_dir", metavar="DATA_DIR")
    v.set_defaults(func=cmd_cache_verify)


def cmd_metadata(args: argparse.Namespace) -> int:
    import warnings

    from ..data.metadata import DatasetMetadata

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = DatasetMetadata.from_directory(args.data_dir, args.modes)
    for w in caught:
        print(f"{PROG}: warning: {w.message}", file=sys.stderr)
    path = meta.save(args.output)
    by_mode = {m: len(meta.get_studies_by_mode(m)) for m in ("ct", "mri")}
    print(f"{path}: {len(meta)} studies ({by_mode['ct']} CT, {by_mode['mri']} MRI), {meta.num_images()} images")
    return 0


def cmd_cache_build(args: argparse.Namespace) -> int:
    from ..data.cache import CacheManager

    cm = CacheManager(args.data_dir)
    summary = cm.build_cache(
        num_workers=args.workers,
        force=args.force,
        study_names=args.study,
        shard=args.shard,
        progress=not args.no_progress,
    )
    if args.no_progress:
        print(summary)
    return 1 if summary.failed else 0


def cmd_cache_stats(args: argparse.Namespace) -> int:
    import json

    from ..data.cache import CacheManager

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
    from ..data.cache import CacheManager

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
