"""What :func:`~neurovfm.data.prepare_many` (and ``ScanDataset``) prepare: the inputs
(files, folders, glob patterns, URLs, manifest rows) as :class:`ScanJob` s, one per series
:func:`~neurovfm.data.find_series` finds under the ``derived`` policy, each with a unique
output name."""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UsageError, one_line
from .sources import remote

if TYPE_CHECKING:
    from .series import SeriesRecord

__all__ = ["ScanJob", "discover_scans", "read_manifest"]


@dataclass
class ScanJob:
    """One series to prepare (or to report: ``status`` 'skipped'/'failed' set up front)."""

    input: str  # what the user gave (a file, folder, pattern match or manifest path)
    path: str  # what to read
    series_uid: str
    mode: str | None
    name: str  # output stem, unique in the run
    id: str = ""
    status: str = ""  # '' = to do; 'skipped' or 'failed' known before reading
    reason: str = ""
    #: A series of a URL prefix: its record (the URLs of its files: read without listing
    #: the prefix again); None for local inputs.
    record: SeriesRecord | None = None


def read_manifest(path: str | os.PathLike[str]) -> list[tuple[str, str | None, str]]:
    """(path, mode or None, id) per row of a manifest CSV (columns ``path``, ``mode``[, ``id``]);
    relative paths are relative to the manifest's folder."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"manifest {path!r}: no such file")
    base = os.path.dirname(os.path.abspath(path))
    rows: list[tuple[str, str | None, str]] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip().lower() for c in reader.fieldnames or []]
        if "path" not in cols:
            raise UsageError(f"manifest {path!r} needs a 'path' column (and 'mode', optionally 'id'), got {cols}")
        for i, raw in enumerate(reader, start=2):
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
            p = row.get("path", "")
            if not p:
                continue
            m = row.get("mode", "").lower() or None
            if m is not None and m not in ("ct", "mri"):
                raise UsageError(f"manifest {path!r} line {i}: invalid mode {m!r} (choose ct or mri)")
            local = os.path.isabs(p) or remote.is_url(p)
            rows.append((p if local else os.path.join(base, p), m, row.get("id", "")))
    return rows


def _stem(path: str) -> str:
    from .series import _slug

    base = os.path.basename(os.path.normpath(path))
    for ext in (".nii.gz", ".nii", ".dcm"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    else:
        base = os.path.splitext(base)[0] if os.path.isfile(path) else base
    return _slug(base) or "scan"


def _expand(item: str) -> list[str]:
    if remote.is_url(item) or os.path.exists(item) or not glob.has_magic(item):
        return [item]
    return sorted(glob.glob(item))


def _url_jobs(
    url: str, mode: str | None, ident: str, prefix: str, derived: str, storage_options: Mapping[str, Any] | None
) -> list[ScanJob]:
    """The jobs of one URL input: one for an object whose name says NIfTI or DICOM (no
    listing now), else one per series ``find_series`` finds under the prefix."""
    from .series import find_series, series_image_names

    stem = prefix + _stem(url.rstrip("/"))
    if url.lower().endswith((".nii", ".nii.gz", ".dcm")):
        return [ScanJob(url, url, "", mode, stem, ident)]
    try:
        records = find_series(url, derived=derived, storage_options=storage_options)
    except (OSError, ValueError) as err:  # the library's read errors: a failed row
        return [ScanJob(url, url, "", mode, stem, ident, "failed", one_line(err))]
    if not records:
        return [ScanJob(url, url, "", mode, stem, ident, "failed", "no image series found")]
    jobs = []
    for r, sname in zip(records, series_image_names(records)):
        status = "" if r.usable else ("failed" if r.broken else "skipped")
        name = stem + ("" if len(records) == 1 else f"__{sname}")
        jobs.append(ScanJob(url, r.path, r.series_uid, mode, name, ident, status, r.reason if status else "", r))
    return jobs


def discover_scans(
    inputs: Iterable[str | os.PathLike[str]],
    mode: str | None = None,
    manifest: str | os.PathLike[str] | None = None,
    derived: str = "auto",
    storage_options: Mapping[str, Any] | None = None,
) -> list[ScanJob]:
    """The series to prepare, in a stable order, each with a unique output name (a folder's
    series by :func:`~neurovfm.data.find_series` under the ``derived`` policy). A URL that
    names one object is one job (read when it is prepared); a URL prefix is listed once by
    ``find_series`` and its series become jobs that carry their files' URLs."""
    from .series import check_derived, find_series, series_image_names

    derived = check_derived(derived)

    entries: list[tuple[str, str | None, str]] = [(os.fspath(p), mode, "") for p in inputs]
    if manifest is not None:
        entries += [(p, m or mode, i) for p, m, i in read_manifest(manifest)]
    jobs: list[ScanJob] = []
    for item, m, ident in entries:
        matches = _expand(item)
        if not matches:
            jobs.append(ScanJob(item, item, "", m, _stem(item), ident, "failed", "no file matches this pattern"))
            continue
        for p in matches:
            prefix = f"{ident}_" if ident else ""
            if remote.is_url(p):
                jobs.extend(_url_jobs(p, m, ident, prefix, derived, storage_options))
                continue
            if not os.path.exists(p):
                jobs.append(ScanJob(p, p, "", m, prefix + _stem(p), ident, "failed", f"{p}: no such file or directory"))
                continue
            if os.path.isfile(p):
                jobs.append(ScanJob(p, p, "", m, prefix + _stem(p), ident))
                continue
            records = find_series(p, derived=derived)
            if not records:
                jobs.append(ScanJob(p, p, "", m, prefix + _stem(p), ident, "failed", "no image series found"))
                continue
            names = series_image_names(records)
            for r, sname in zip(records, names):
                name = prefix + _stem(p) + ("" if len(records) == 1 else f"__{sname}")
                status = "" if r.usable else ("failed" if r.broken else "skipped")
                jobs.append(ScanJob(p, r.path, r.series_uid, m, name, ident, status, r.reason if status else ""))
    seen: dict[str, int] = {}
    for j in jobs:
        if j.name in seen:
            seen[j.name] += 1
            j.name = f"{j.name}_{seen[j.name]}"
        seen.setdefault(j.name, 1)
    return jobs
