"""``neurovfm demo DIR``: a small dataset made from the built-in phantoms
(:func:`neurovfm.demo.write_demo`), for the README's quick starts."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ._common import Formatter, UsageError

_DESCRIPTION = """\
Write a small dataset made from the built-in synthetic phantoms into DIR, in a few
seconds: two CT and two MR studies under DIR/raw/<study>/, one of each as NIfTI and
one as a DICOM series, with DIR/modes.csv (study,mode), DIR/labels.csv (study,label)
and DIR/manifest.csv (path,mode,id). DIR is then a dataset folder for
'neurovfm metadata' and 'neurovfm cache', and its files inputs for 'neurovfm prepare',
'series' and 'qa'."""

_EPILOG = """\
examples:
  neurovfm demo demo/
  neurovfm series demo/raw/mr_dicom
  neurovfm prepare --manifest demo/manifest.csv -o demo_out/
  neurovfm metadata demo --modes demo/modes.csv && neurovfm cache build demo
"""


def add_demo(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "demo",
        parents=[common],
        help="write a small demo dataset (phantom CT and MR, NIfTI and DICOM)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=Formatter,
    )
    p.add_argument("out_dir", metavar="DIR", help="where to write (created if needed)")
    p.add_argument("--force", action="store_true", help="write the demo's files again when DIR/raw exists")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import write_demo
    from ..errors import InvalidArgumentError

    t0 = time.perf_counter()
    try:
        demo = write_demo(args.out_dir, overwrite=args.force)
    except InvalidArgumentError as err:
        raise UsageError(str(err)) from None
    print(demo.describe())
    print(f"wrote {len(demo.scans)} studies in {time.perf_counter() - t0:.1f} s")
    return 0
