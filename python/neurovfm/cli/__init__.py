"""The ``neurovfm`` command line.

One sub-command per task, one module per family of commands: :mod:`.prepare` (file to
tokens and its report), :mod:`.cache` (``metadata`` and ``cache``), :mod:`.qa`,
:mod:`.bench`; :mod:`._parser` assembles the parser, :mod:`._common` holds what they
share. User errors (a missing or unreadable file, a bad option) end with exit code 2
and one line ``neurovfm: error: ...`` on stderr; anything else is a bug and keeps its
traceback.

    python -m neurovfm prepare                       # built-in phantoms, whole pipeline
    python -m neurovfm prepare scan.nii.gz --mode ct -o tokens.npz
    python -m neurovfm qa scan.nii.gz --mode ct -o qa.png
    python -m neurovfm bench                         # quick benchmarks (source checkout)
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import TextIO

from ._common import PROG, UsageError, one_line
from ._parser import build_parser

# The former single module's names, for callers of ``neurovfm.cli.<name>``.
from .bench import BENCHMARKS as BENCHMARKS
from .bench import find_bench_dir as find_bench_dir
from .prepare import OUTPUT_SUFFIXES as OUTPUT_SUFFIXES
from .prepare import ScanResult as ScanResult
from .prepare import format_result as format_result
from .prepare import run_scan as run_scan
from .prepare import save_result as save_result

__all__ = ["UsageError", "build_parser", "main"]


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (pytest's capture swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def _format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """A warning as one line, ``neurovfm: warning: <message>`` (the message names the file;
    Python's source file and line of the warning are the library's business, not the
    user's). Installed as ``warnings.formatwarning``, so that a warning recorded (by
    ``warnings.catch_warnings(record=True)``, ``pytest.warns``) is recorded as ever."""
    text = message if isinstance(message, Warning) else Warning(message)
    return f"{PROG}: warning: {one_line(text)}\n"


def _setup(args: argparse.Namespace) -> Callable[[], None]:
    """Logging and threads for this run; returns a function that restores them
    (``main`` may run in-process, e.g. from tests)."""
    import SimpleITK as sitk

    from .. import _threads, set_num_threads

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
    saved_format = warnings.formatwarning
    warnings.formatwarning = _format_warning

    def restore() -> None:
        warnings.formatwarning = saved_format
        logger.setLevel(saved_level)
        logger.handlers[:] = saved_handlers
        set_num_threads(saved_threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(saved_sitk)

    return restore


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 user error)."""
    from ..errors import NeuroVFMError

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
    except (NeuroVFMError, FileNotFoundError, ValueError) as err:  # UsageError is a NeuroVFMError
        sys.stdout.flush()
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        restore()
