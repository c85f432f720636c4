"""The parser of the whole command line: the options every command takes, and one
sub-parser per command, each registered by its module's ``add_<name>`` function
(which sets ``func``, the function that runs it: ``args -> int``)."""

from __future__ import annotations

import argparse

from . import bench, cache, demo, info, prepare, qa, series
from ._common import PROG, Formatter, Parser, positive_int

_MAIN_EPILOG = """\
examples:
  neurovfm prepare                              run the pipeline on built-in phantoms
  neurovfm prepare head.nii.gz --mode ct        one scan: shapes, tokens, timings
  neurovfm prepare dicom_dir/ --mode mri -o t.npz
  neurovfm series /exports/study_0042           every series of a study: usable or not, and why
  neurovfm metadata /data/ds --modes modes.csv  describe a dataset folder
  neurovfm cache build /data/ds -w 16           build its uint8 cache
  neurovfm cache import /data/ds                convert a cache built by the published code
  neurovfm qa head.nii.gz --mode ct -o qa.png   PNG montage of the preprocessed volume
  neurovfm bench                                quick benchmarks against the reference
  neurovfm demo demo/                           a small dataset to try every command on
  neurovfm info                                 version, build, DICOM decoders, threads, extras

run 'neurovfm COMMAND --help' for the options of a command.
"""

# Sub-commands, in the order --help lists them.
_COMMANDS = [
    prepare.add_prepare,
    series.add_series,
    cache.add_metadata,
    cache.add_cache,
    qa.add_qa,
    demo.add_demo,
    info.add_info,
    bench.add_bench,
]


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command line (one sub-parser per command)."""
    from .. import __version__

    parser = Parser(
        prog=PROG,
        description="Fast, exact preprocessing of brain CT and MRI for the NeuroVFM model.",
        epilog=_MAIN_EPILOG,
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True

    # Options every command takes.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-j",
        "--threads",
        type=positive_int,
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
