"""Many scans to tokens: :func:`prepare_many` (``neurovfm prepare INPUT... -o OUT_DIR``).

Inputs are files, folders (every series :func:`~neurovfm.data.find_series` finds in them;
the unusable ones become ``skipped`` rows with the reason, the broken ones ``failed``
rows), glob patterns, or a manifest CSV (columns ``path``, ``mode`` and optionally ``id``).
One output per series is written to ``out_dir`` atomically (a temporary name, then a
rename), so a killed run leaves no half-written file and a rerun makes only what is
missing. ``summary.csv`` gets a row per series as each one finishes (a killed run keeps
the rows of what it did) and is rewritten, in input order, at the end.

Each scan goes through the one recipe, :func:`neurovfm.data.scan.prepare_scan`; its mode
conflicts become :class:`~neurovfm.errors.ModeMismatchWarning` warnings, counted per row.
"""

from __future__ import annotations

import csv
import functools
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._threads import available_cpus, thread_limit
from ..errors import InvalidArgumentError, ModeMismatchWarning, UsageError, one_line
from ._files import TMP_TAG
from .runner import Progress, SummaryFile, in_shard, resolve_shard, run_jobs
from .preprocess import CT_WINDOW_NAMES
from .discover import ScanJob, discover_scans, read_manifest
from .outputs import OutputDir
from .scan import PreparedScan, prepare_scan

__all__ = [
    "BatchRow",
    "BatchSummary",
    "ScanJob",
    "discover_scans",
    "prepare_many",
    "read_manifest",
]

#: Output formats of :func:`prepare_many`.
FORMATS = ("npz", "pt", "nifti")
#: Columns of ``summary.csv``.
SUMMARY_COLUMNS = (
    "input",
    "series_uid",
    "output",
    "status",
    "reason",
    "shape",
    "tokens",
    "foreground",
    "seconds",
    "mode_warnings",
)
SUMMARY_NAME = "summary.csv"


#: Temporary outputs end with this; a later run removes the ones a killed run left.
def save_payload(payload: dict[str, Any], out: str | os.PathLike[str]) -> None:
    """Write a :meth:`PreparedScan.payload` to ``.npz`` (NumPy) or ``.pt`` (PyTorch)."""
    out = os.fspath(out)
    if out.lower().endswith(".pt") or out.lower().endswith(".pt" + TMP_TAG):
        import torch

        torch.save(
            {
                k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
                for k, v in payload.items()
            },
            out,
        )
    else:
        arrays: dict[str, Any] = {k: np.asarray(v) for k, v in payload.items()}
        with open(out, "wb") as f:  # a file object: numpy must not append .npz
            np.savez(f, **arrays)


# --- the run ------------------------------------------------------------------------------------


@dataclass
class BatchRow:
    """One row of ``summary.csv``."""

    input: str
    series_uid: str
    output: str  # paths separated by ';'
    status: str  # 'ok', 'skipped' or 'failed'
    reason: str = ""
    shape: str = ""  # D x H x W after resampling
    tokens: int = 0
    foreground: float = 0.0  # share of tokens without background
    seconds: float = 0.0
    mode_warnings: int = 0

    def as_row(self) -> list[str]:
        return [
            self.input,
            self.series_uid,
            self.output,
            self.status,
            self.reason,
            self.shape,
            str(self.tokens) if self.status == "ok" and self.shape else "",
            f"{self.foreground:.4f}" if self.status == "ok" and self.shape else "",
            f"{self.seconds:.3f}",
            str(self.mode_warnings),
        ]


@dataclass
class BatchSummary:
    """What :func:`prepare_many` did: a row per series (input order) and the totals."""

    rows: list[BatchRow] = field(default_factory=list)
    seconds: float = 0.0
    summary_path: str = ""

    def _count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)

    @property
    def ok(self) -> int:
        return self._count("ok")

    @property
    def skipped(self) -> int:
        return self._count("skipped")

    @property
    def failed(self) -> int:
        return self._count("failed")

    @property
    def mode_warnings(self) -> int:
        return sum(r.mode_warnings for r in self.rows)

    def __str__(self) -> str:
        done = sum(r.status == "ok" and r.reason != "already done" for r in self.rows)
        lines = [
            f"prepare: {self.ok} ok ({done} made, {self.ok - done} already done), {self.skipped} skipped, "
            f"{self.failed} failed, {self.mode_warnings} mode warnings, {self.seconds:.1f} s"
            + (f"; summary: {self.summary_path}" if self.summary_path else "")
        ]
        for r in self.rows:
            if r.status == "failed":
                lines.append(f"  failed {r.input} {r.series_uid}".rstrip() + f": {r.reason}")
        return "\n".join(lines)


def _write_nifti(r: PreparedScan, mode: str, prefix: str) -> list[str]:
    """The model-input volumes and the token mask of ``r`` as ``.nii.gz`` on its grid."""
    from .geometry import write_nifti_outputs

    return [os.fspath(p) for p in write_nifti_outputs(r.arrays, r.filtered, r.geometry, prefix, mode)]


def prepare_many(
    inputs: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    mode: str | None = None,
    *,
    manifest: str | os.PathLike[str] | None = None,
    format: str = "npz",
    workers: int = 1,
    force: bool = False,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    threads: int | None = None,
    derived: str = "auto",
    storage_options: Mapping[str, Any] | None = None,
    executor: str | None = None,
    ray_address: str | None = None,
) -> BatchSummary:
    """Prepare every series of ``inputs`` (and of ``manifest``) into ``out_dir``.

    Parameters
    ----------
    inputs
        Files, folders (every series :func:`~neurovfm.data.find_series` finds), glob
        patterns, or URLs (``s3://``, ``gs://``, ...: an object, or a prefix holding
        series; :mod:`neurovfm.data.sources.remote`).
    out_dir
        Where the outputs and ``summary.csv`` go (created if missing): a folder, or a URL
        prefix (each output uploaded whole once made, ``summary.csv`` last;
        :mod:`neurovfm.data.outputs`).
    mode
        ``'ct'`` or ``'mri'``; a manifest row's ``mode`` overrides it.
    manifest
        A CSV with the columns ``path``, ``mode`` and optionally ``id`` (put in the output name).
    format
        ``'npz'`` or ``'pt'``: the file ``neurovfm prepare -o`` writes; ``'nifti'``: the
        model-input volumes and the token mask as ``.nii.gz`` on the resampled, cropped grid
        (:func:`neurovfm.data.geometry.write_nifti_outputs`).
    workers
        Scans prepared at once (threads: the kernels release the GIL).
    force
        Remake outputs that exist (else a series with its output is 'ok', 'already done').
    shard
        ``(i, n)``: only this builder's share of the series (default: from the SLURM array
        or torchrun variables, as ``neurovfm cache build``).
    threads
        Kernel threads per scan (default ``max(1, cpus // workers)``).
    derived
        Derived/secondary series of a folder (:func:`~neurovfm.data.find_series`):
        ``'auto'`` (default: used only when the folder holds no usable acquisition),
        ``'include'`` or ``'skip'``. One the policy leaves out is a ``skipped`` row that
        says so and names the option that would use it.
    storage_options
        Options of the fsspec filesystem of URL inputs and outputs (credentials,
        endpoint); default: the backend's standard environment (for S3 the AWS
        variables, ``AWS_ENDPOINT_URL`` included).
    executor
        ``"serial"``, ``"threads"`` (default: threads when ``workers > 1``) or ``"ray"``:
        each series a Ray task of one CPU on the cluster at ``ray_address``
        (:mod:`neurovfm.data.ray_executor`; ``out_dir`` must be seen by every node: a
        shared folder or a URL prefix). Same outputs and summary as a local run.

    A scan that fails is a ``failed`` row with the reason; the run goes on. Mode
    conflicts are warned (:class:`~neurovfm.errors.ModeMismatchWarning`, from the calling
    thread) and counted per row.
    """
    if format not in FORMATS:
        raise InvalidArgumentError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidArgumentError(f"workers must be a positive integer, got {workers!r}")
    if mode is not None:
        mode = mode.lower()
        if mode not in ("ct", "mri"):
            raise InvalidArgumentError(f"mode must be 'ct' or 'mri', got {mode!r}")
    if format == "pt":
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise UsageError("--format pt needs PyTorch (pip install torch); use npz")
    shard_ = resolve_shard(shard)
    if executor == "ray":
        from .ray_executor import connect

        connect(ray_address)
    per_scan = threads or (1 if executor == "ray" else max(1, available_cpus() // workers))
    out = OutputDir(out_dir, storage_options)
    jobs = [j for j in discover_scans(inputs, mode, manifest, derived, storage_options) if in_shard(j.name, shard_)]
    staging = tempfile.TemporaryDirectory(prefix="neurovfm-summary-") if out.remote else None
    # the live summary: in the folder, or (remote) a local file uploaded when the run ends
    summary_path = out.path(SUMMARY_NAME) if staging is None else os.path.join(staging.name, SUMMARY_NAME)
    if staging is not None:
        out.fetch(SUMMARY_NAME, summary_path)
    summary = BatchSummary(summary_path=out.path(SUMMARY_NAME))
    previous = _previous_rows(summary_path)  # the rows of outputs already done, kept
    rows: dict[int, BatchRow] = {}
    index = {id(j): k for k, j in enumerate(jobs)}
    t0 = time.perf_counter()
    live = SummaryFile(summary_path, SUMMARY_COLUMNS, BatchRow.as_row)
    bar = Progress(len(jobs), "neurovfm prepare", "scan", enabled=progress)

    def record(j: ScanJob, res: tuple[BatchRow, list[str]]) -> dict[str, int]:
        row, msgs = res
        rows[index[id(j)]] = row
        for m in msgs:
            warnings.warn(ModeMismatchWarning(m), stacklevel=4)  # the caller of prepare_many
        if row.status == "failed" and progress:
            bar.say(f"neurovfm prepare: failed {row.input} {row.series_uid}".rstrip() + f": {row.reason}")
        live.add(row)
        return {"failed": sum(r.status == "failed" for r in rows.values())}

    work = functools.partial(_prepare_job, out, format, force, per_scan, previous)
    try:
        run_jobs(jobs, work, record, workers=workers, executor=executor, progress=bar, name="neurovfm-prepare")
    finally:
        bar.close()
        summary.rows = [rows[k] for k in sorted(rows)]
        summary.seconds = time.perf_counter() - t0
        live.close(summary.rows)
        if staging is not None:
            try:
                out.upload(summary_path, SUMMARY_NAME)  # last: the run is over
            finally:
                staging.cleanup()
    return summary


def _output_names(format: str, j: ScanJob) -> list[str]:
    """The names of ``j``'s outputs in the output folder (for NIfTI, the mask last)."""
    if format != "nifti":
        return [f"{j.name}.{format}"]
    names = [f"_{w}" for w in CT_WINDOW_NAMES] if j.mode == "ct" else [""]
    return [f"{j.name}{n}.nii.gz" for n in [*names, "_mask"]]  # the mask is written last


def _done_outputs(out: OutputDir, format: str, j: ScanJob) -> list[str] | None:
    """The outputs of ``j`` when they are all there (a rerun skips it), else None."""
    names = _output_names(format, j)
    return [out.path(n) for n in names] if all(out.exists(n) for n in names) else None


def _prepare_job(
    out: OutputDir, format: str, force: bool, per_scan: int, previous: dict[str, list[str]], j: ScanJob
) -> tuple[BatchRow, list[str]]:
    """One series of :func:`prepare_many` (a runner job: module level, picklable
    arguments): its summary row and its mode warnings."""
    t = time.perf_counter()
    base = BatchRow(j.input, j.series_uid, "", j.status)
    if j.status:
        base.reason = j.reason
        return base, []
    if j.mode is None:
        base.status, base.reason = "failed", "no mode (give --mode or a manifest 'mode' column)"
        return base, []
    done = None if force else _done_outputs(out, format, j)
    if done is not None:
        base.status, base.reason, base.output = "ok", "already done", ";".join(done)
        _fill_done(base, done, previous)
        return base, []
    try:
        with thread_limit(per_scan):
            r = prepare_scan(j.record or j.path, j.mode, j.series_uid or None, storage_options=out.storage_options)
            if format == "nifti":
                outputs = out.save_many(lambda folder: _write_nifti(r, str(j.mode), os.path.join(folder, j.name)))
            else:
                payload = r.payload(j.mode, j.path)
                outputs = [out.save(f"{j.name}.{format}", lambda tmp: save_payload(payload, tmp), f".{format}")]
    except Exception as err:  # noqa: BLE001 - one failed scan is a row; the run goes on
        base.status, base.reason = "failed", one_line(err)
        base.seconds = time.perf_counter() - t
        return base, []
    label = f"{j.path}" + (f" (series {j.series_uid})" if j.series_uid else "")
    msgs = [f"{label}: {m}" for m in r.mode_warnings]
    row = BatchRow(
        j.input,
        j.series_uid,
        ";".join(outputs),
        "ok",
        "",
        " x ".join(map(str, r.shape)),
        int(r.filtered.size),
        r.foreground,
        time.perf_counter() - t,
        len(msgs),
    )
    return row, msgs


# --- outputs already done -----------------------------------------------------------------------


def _outputs_key(output: str) -> str:
    """An output column, by its files' names (the folder may be given another way)."""
    return ";".join(os.path.basename(p) for p in output.split(";") if p)


def _previous_rows(path: str) -> dict[str, list[str]]:
    """The ``ok`` rows with a shape of an existing ``summary.csv``, by :func:`_outputs_key`."""
    found: dict[str, list[str]] = {}
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            if tuple(next(reader, ())) != SUMMARY_COLUMNS:
                return found
            for row in reader:
                if len(row) == len(SUMMARY_COLUMNS) and row[3] == "ok" and row[5]:
                    found[_outputs_key(row[2])] = row
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return found


def _fill_done(row: BatchRow, outputs: list[str], previous: dict[str, list[str]]) -> None:
    """The shape, tokens and foreground of an output already done: from the ``.npz``'s
    ``shape`` and ``filtered`` arrays (a few kB of it are read), else from the previous
    ``summary.csv``'s row for that output; left empty when neither has them."""
    if outputs[0].lower().endswith(".npz"):
        try:
            with np.load(outputs[0]) as z:
                flags = np.asarray(z["filtered"])
                shape = [int(v) for v in np.asarray(z["shape"]).ravel()]
            row.shape, row.tokens = " x ".join(map(str, shape)), int(flags.size)
            row.foreground = float(1.0 - flags.mean()) if flags.size else 0.0
            return
        except Exception:  # noqa: BLE001 - an unreadable output keeps its row without them
            pass
    old = previous.get(_outputs_key(";".join(outputs)))
    if old is not None:
        try:
            row.shape, row.tokens, row.foreground = old[5], int(old[6]), float(old[7])
        except ValueError:
            row.shape = ""
