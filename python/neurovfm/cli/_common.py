"""What every command shares: the usage error, the parser class and its formatter,
the option types, and the one-line rendering of an error."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from ..errors import UsageError as UsageError
from ..errors import one_line as one_line

PROG = "neurovfm"
#: Names of the views ``prepare_for_inference`` reports (the slice axis of [D, H, W]).
VIEW_NAMES = {0: "axial", 1: "coronal", 2: "sagittal"}


class Parser(argparse.ArgumentParser):
    """argparse, but errors become :class:`UsageError` (one line, no usage dump)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


class Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def shard(text: str) -> tuple[int, int]:
    """``I/N`` (``--shard``): this builder's share, with ``0 <= I < N``."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N, e.g. 0/4, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"shard I/N needs 0 <= I < N, got {text!r}")
    return i, n


def mode(text: str) -> str:
    m = text.lower()
    if m not in ("ct", "mri"):
        raise argparse.ArgumentTypeError(f"invalid mode {text!r} (choose ct or mri)")
    return m


def check_output_folder(out: Path) -> None:
    """UsageError when the folder ``out`` would be written to does not exist."""
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"output folder {str(parent)!r} does not exist")


def add_derived(p: argparse.ArgumentParser) -> None:
    """``--derived {auto,include,skip}``: the one policy for derived/secondary series."""
    p.add_argument(
        "--derived",
        choices=("auto", "include", "skip"),
        default="auto",
        help="derived/secondary series (ImageType DERIVED\\SECONDARY: reformats, maps, screenshots, "
        "and every series of many research exports): auto (default) uses them only when the folder "
        "holds no usable acquisition; include always; skip never",
    )
