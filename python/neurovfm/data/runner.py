"""The one runner: a list of jobs through workers, this process's shard of them, a
progress bar on stderr with messages above it, and a live summary file.

Its callers are ``neurovfm cache build`` and ``cache import``
(:meth:`neurovfm.data.CacheManager.build_cache` and
:meth:`~neurovfm.data.CacheManager.import_published`) and ``neurovfm prepare -o DIR``
(:func:`neurovfm.data.prepare_many`). Each gives :func:`run_jobs`

* ``jobs``: its items, already narrowed to this process's shard (:func:`in_shard` of a
  stable key; the shard comes from ``--shard I/N`` or the SLURM array / torchrun
  variables, :func:`resolve_shard`);
* ``work(job) -> result``: one item, run by a worker. It is a module-level function (or a
  ``functools.partial`` of one) with picklable arguments, so that an executor in other
  processes or machines can ship it. It resumes: an item already done (a valid cache
  entry, an existing output) is reported, not redone, and an item that other builders
  may take at the same time takes its own lock first (the cache entry's lock file,
  :func:`neurovfm.data.cache.entry.build_entry`);
* ``record(job, result)``: run on the caller's thread, in completion order; it updates
  the caller's summary and returns the counts shown beside the bar.

Executors are named in :data:`EXECUTORS`: ``"serial"`` (the caller's thread, in order)
and ``"threads"`` (a thread pool: the kernels release the GIL). Each is a generator of
``(index, result)``; another one (e.g. Ray: ``ray.remote(work)`` per job and ``ray.wait``)
is one more such function in that table.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import sys
import warnings
import zlib
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import IO, Any, Generic, TypeVar

from .._threads import available_cpus
from ..errors import InvalidArgumentError
from ._files import atomic_write

__all__ = [
    "EXECUTORS",
    "Progress",
    "SummaryFile",
    "in_shard",
    "resolve_shard",
    "resolve_workers",
    "run_jobs",
    "shard_from_env",
]

J = TypeVar("J")
R = TypeVar("R")

log = logging.getLogger("neurovfm")


# --- shards and workers -------------------------------------------------------------------------


def shard_from_env(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """(index, count) of this builder from SLURM array or torchrun variables, or None."""
    env = os.environ if environ is None else environ
    if "SLURM_ARRAY_TASK_ID" in env:
        tid = int(env["SLURM_ARRAY_TASK_ID"])
        if "SLURM_ARRAY_TASK_COUNT" in env:
            lo = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            return tid - lo, int(env["SLURM_ARRAY_TASK_COUNT"])
        if "SLURM_ARRAY_TASK_MAX" in env:
            lo = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            return tid - lo, int(env["SLURM_ARRAY_TASK_MAX"]) - lo + 1
    if "WORLD_SIZE" in env and "RANK" in env and int(env["WORLD_SIZE"]) > 1:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    return None


def resolve_shard(shard: Any) -> tuple[int, int] | None:
    """``shard`` as ``(i, n)`` with ``0 <= i < n``; None: from the environment
    (:func:`shard_from_env`). :class:`InvalidArgumentError` for anything else."""
    if shard is None:
        return shard_from_env()
    try:
        i, n = (int(x) for x in shard)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise InvalidArgumentError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
    return i, n


def in_shard(key: str, shard: tuple[int, int] | None) -> bool:
    """Whether the item named ``key`` is shard ``(i, n)``'s: CRC-32 of ``key`` modulo ``n``
    is ``i`` (stable across processes, machines and runs). Every item when ``shard`` is None."""
    if shard is None:
        return True
    i, n = shard
    return zlib.crc32(key.encode()) % n == i


def resolve_workers(num_workers: int | None) -> int:
    """``num_workers``, or the CPUs this process may use; >= 1."""
    workers = num_workers if num_workers is not None else available_cpus()
    if workers < 1:
        raise InvalidArgumentError(f"num_workers must be >= 1, got {num_workers!r}")
    return workers


# --- executors ----------------------------------------------------------------------------------


def _serial(jobs: Sequence[J], work: Callable[[J], R], workers: int, name: str) -> Generator[tuple[int, R], None, None]:
    """Every job on the caller's thread, in order."""
    for k, job in enumerate(jobs):
        yield k, work(job)


def _threads(
    jobs: Sequence[J], work: Callable[[J], R], workers: int, name: str
) -> Generator[tuple[int, R], None, None]:
    """``workers`` threads; results in completion order. An exception of ``work`` ends the
    run once the jobs already started are done (as leaving a ``ThreadPoolExecutor`` does)."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as ex:
        futs = {ex.submit(work, job): k for k, job in enumerate(jobs)}
        for fut in as_completed(futs):
            yield futs[fut], fut.result()


def _ray(jobs: Sequence[J], work: Callable[[J], R], workers: int, name: str) -> Generator[tuple[int, R], None, None]:
    """Each job a Ray task on the cluster the caller connected to
    (:mod:`neurovfm.data.ray_executor`; Ray imported only here)."""
    from .ray_executor import ray_jobs

    yield from ray_jobs(jobs, work, workers, name)


#: The executors by name: ``(jobs, work, workers, thread name) -> (index, result)`` in
#: completion order. A new executor is one more entry here.
Executor = Callable[[Sequence[Any], Callable[[Any], Any], int, str], Generator[tuple[int, Any], None, None]]
EXECUTORS: dict[str, Executor] = {
    "serial": _serial,
    "threads": _threads,
    "ray": _ray,
}


# --- progress -----------------------------------------------------------------------------------


class Progress:
    """A run's progress bar (tqdm, on stderr), or nothing when not ``enabled``.

    While it shows, :meth:`say` prints a line above it, and :meth:`above` makes the
    warnings raised and the ``neurovfm`` log records written inside it print above it
    too, rather than through it."""

    def __init__(self, total: int, desc: str, unit: str, enabled: bool = True) -> None:
        self.bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)

    def say(self, text: str) -> None:
        """``text`` on stderr (above the bar while it shows)."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def advance(self, counts: Mapping[str, int] | None = None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if counts:
                self.bar.set_postfix(**counts, refresh=False)

    @contextlib.contextmanager
    def above(self) -> Iterator[None]:
        """Warnings raised inside are shown once it is left, above the bar (through the
        filters and ``warnings.showwarning`` as usual: ``pytest.warns`` still sees them)."""
        if self.bar is None:
            yield
            return
        with warnings.catch_warnings(record=True) as caught:
            yield
        if caught:
            with self.bar.external_write_mode(file=sys.stderr):
                for w in caught:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)

    @contextlib.contextmanager
    def logging_above(self) -> Iterator[None]:
        """The console handlers of the ``neurovfm`` logger write above the bar while inside."""
        if self.bar is None:
            yield
            return
        logger = logging.getLogger("neurovfm")
        saved = list(logger.handlers)
        console = [h for h in saved if isinstance(h, logging.StreamHandler) and h.stream in (sys.stderr, sys.stdout)]
        if not console:
            yield
            return
        logger.handlers = [h for h in saved if h not in console] + [_AboveBar(self, h) for h in console]
        try:
            yield
        finally:
            logger.handlers = saved

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _AboveBar(logging.Handler):
    """A console handler's records, formatted as it would, written above the bar."""

    def __init__(self, progress: Progress, orig: logging.Handler) -> None:
        super().__init__(orig.level)
        self.progress, self.orig = progress, orig
        self.filters = list(orig.filters)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.progress.say(self.orig.format(record))
        except Exception:  # pragma: no cover - as logging.Handler does
            self.handleError(record)


# --- the run ------------------------------------------------------------------------------------


def run_jobs(
    jobs: Sequence[J],
    work: Callable[[J], R],
    record: Callable[[J, R], Mapping[str, int] | None],
    *,
    workers: int = 1,
    executor: str | None = None,
    progress: Progress | None = None,
    name: str = "neurovfm",
) -> None:
    """Run ``work`` on every job and ``record`` each result on this thread as it comes.

    ``executor``: a key of :data:`EXECUTORS`; default ``"serial"`` for one worker, else
    ``"threads"``. ``progress``: advanced once per job with the counts ``record``
    returns; warnings and log records of the run print above it. ``name``: the
    workers' thread name prefix. An exception of ``work`` or ``record`` ends the run
    (``work`` functions turn an item's failure into a result)."""
    kind = executor or ("serial" if workers == 1 else "threads")
    if kind not in EXECUTORS:
        raise InvalidArgumentError(f"executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")
    bar = progress if progress is not None else Progress(0, "", "", enabled=False)
    with bar.logging_above(), contextlib.closing(EXECUTORS[kind](jobs, work, workers, name)) as results:
        for k, res in results:
            with bar.above():
                counts = record(jobs[k], res)
            bar.advance(counts)


class SummaryFile(Generic[J]):
    """A CSV of one row per finished item: written as the items finish (a killed run
    keeps the rows of what it did), then rewritten whole, in the items' order, by
    :meth:`close` (atomically)."""

    def __init__(self, path: str, columns: Sequence[str], as_row: Callable[[J], list[str]]) -> None:
        self.path, self.columns, self.as_row = path, tuple(columns), as_row
        self._f: IO[str] | None = open(path, "w", newline="")
        self._w = csv.writer(self._f)
        self._w.writerow(self.columns)
        self._f.flush()

    def add(self, row: J) -> None:
        assert self._f is not None
        self._w.writerow(self.as_row(row))
        self._f.flush()

    def close(self, rows: Sequence[J]) -> None:
        """The file again with ``rows`` (in their order)."""
        if self._f is not None:
            self._f.close()
            self._f = None

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(self.columns)
                for r in rows:
                    w.writerow(self.as_row(r))

        atomic_write(self.path, write)
