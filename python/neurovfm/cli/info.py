"""``neurovfm info``: the version, the build (instruction sets, DICOM decoders compiled in
and what falls back to SimpleITK), the thread count and the optional extras."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import Formatter

_EPILOG = """\
examples:
  neurovfm info
  neurovfm info --json
  NEUROVFM_NUM_THREADS=4 neurovfm info          the thread count the kernels would use

A DICOM decoder that is 'not built' leaves its series to SimpleITK, which reads them
one slice after another: a source build found no library for it (CMake says so when
it configures; the wheels carry every decoder).
"""


def add_info(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "info",
        parents=[common],
        help="version, build (instruction sets, DICOM decoders), threads, optional extras",
        description="Print what this installation is: version, build, threads and optional extras.",
        epilog=_EPILOG,
        formatter_class=Formatter,
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    import json

    from .._info import build_info, format_info

    info = build_info()
    print(json.dumps(info, indent=1) if args.json else format_info(info))
    return 0
