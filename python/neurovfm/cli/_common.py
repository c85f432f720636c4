"""What every command shares: the usage error, the parser class and its formatter,
the option types, and the one-line rendering of an error."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

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


def storage_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` (``--storage-option``): VALUE as JSON when it parses (``true``, ``3``,
    ``{"endpoint_url": ...}``), else the string."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def add_storage_options(p: Any) -> None:
    """``--storage-option KEY=VALUE`` (repeatable): options of the fsspec filesystem of URL
    inputs and outputs."""
    p.add_argument(
        "--storage-option",
        dest="storage_options",
        type=storage_option,
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="for s3://, gs://, ... paths: an option of their fsspec filesystem (repeatable; "
        "e.g. endpoint_url=http://127.0.0.1:9000, anon=true); default: the backend's standard "
        "environment (for S3 the AWS variables, AWS_ENDPOINT_URL included)",
    )


def storage_options_of(args: argparse.Namespace) -> dict[str, Any] | None:
    pairs = getattr(args, "storage_options", None)
    return dict(pairs) if pairs else None


def out_path(text: str) -> Path | str:
    """``-o``: a local path, or a URL kept as it is (``Path`` would fold its ``//``)."""
    from ..data.sources.remote import is_url

    return text if is_url(text) else Path(text)


def add_ray(p: Any, what: str) -> None:
    """``--ray [ADDRESS]``: run the jobs as Ray tasks (neurovfm.data.ray_executor)."""
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help=f"run each {what} as a Ray task on the cluster at ADDRESS (ray.init(address=...): auto, "
        "HOST:PORT, ray://HOST:10001; without ADDRESS: RAY_ADDRESS, else a local Ray); "
        "the output must be a folder every node sees or a URL prefix (pip install 'neurovfm[ray]')",
    )


def ray_of(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(executor, address) from ``--ray``."""
    ray = getattr(args, "ray", None)
    return ("ray", ray or None) if ray is not None else (None, None)
