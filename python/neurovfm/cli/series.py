"""``neurovfm series``: every series under a folder, and whether the pipeline uses it
(:func:`neurovfm.data.find_series`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._common import Formatter, add_derived, add_storage_options, positive_int, storage_options_of

_DESCRIPTION = """\
List every series under DIR (searched recursively; DICOM files need no extension,
each NIfTI file is a series): its number and description, modality, slice count,
spacing, whether the pipeline uses it and, when not, why (localizer, derived or
secondary image, colour, too few slices, missing or duplicate slices, unreadable,
non-image object). 'neurovfm metadata' makes one image per usable series of a
study folder, named as the NAME column."""

_EPILOG = """\
examples:
  neurovfm series /exports/study_0042
  neurovfm series /exports/study_0042 --json > series.json
  neurovfm series scan.nii.gz --min-slices 16
  neurovfm series /exports/study_0042 --derived include   # use derived/secondary series too
"""


def add_series(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "series",
        parents=[common],
        help="list every series under a folder: usable or not, and why",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=Formatter,
    )
    p.add_argument("path", metavar="DIR", help="a study folder (or any folder, or one file)")
    p.add_argument("--json", action="store_true", help="one JSON list of the records instead of the table")
    p.add_argument(
        "--min-slices",
        type=positive_int,
        default=None,
        metavar="N",
        help="fewer slices than N is not a volume (default 8)",
    )
    add_derived(p)
    add_storage_options(p)
    p.set_defaults(func=cmd_series)


def _spacing(v: Any) -> str:
    return "x".join(f"{x:.3g}" for x in v) if v else "?"


def cmd_series(args: argparse.Namespace) -> int:
    from ..data.series import MIN_SLICES, find_series, series_image_names

    records = find_series(
        args.path,
        min_slices=args.min_slices or MIN_SLICES,
        derived=args.derived,
        storage_options=storage_options_of(args),
    )
    if args.json:
        json.dump([r.as_dict() for r in records], sys.stdout, indent=1)
        print()
        return 0
    names = series_image_names(records)
    rows = [("NAME", "MODALITY", "SLICES", "SPACING (mm)", "USE", "SERIES UID / PATH", "REASON")]
    for r, name in zip(records, names):
        rows.append(
            (
                name,
                r.modality or "-",  # a NIfTI file has no modality
                str(r.n_slices),
                _spacing(r.spacing),
                "yes" if r.usable else "no",
                r.series_uid or r.path,
                r.reason,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    usable = sum(r.usable for r in records)
    print(
        f"{len(records)} series under {args.path}: {usable} usable, {len(records) - usable} not "
        f"(derived series: {args.derived})"
    )
    return 0
