"""Every series of a study: :func:`find_series` and its records.

A hospital export holds several series per study (T1, T2, FLAIR, localizers, a CT in
two kernels, derived reformats, screenshots). :func:`find_series` lists all of them
under a folder, NIfTI volumes included, each with whether the pipeline should use it
and, when not, why. ``neurovfm series DIR`` prints the table, and
:meth:`DatasetMetadata.from_directory` makes one image per usable series.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ImageNotFoundError, ImageReadError
from .sources import nifti, remote

__all__ = [
    "DERIVED_POLICIES",
    "SeriesRecord",
    "check_derived",
    "find_series",
    "header_mode_conflict",
    "series_image_names",
]

log = logging.getLogger("neurovfm")

#: Default of ``find_series(min_slices=...)``: fewer slices than this is not a brain volume
#: (a scout, a single slab, a calibration), even when the files are readable.
MIN_SLICES = 8

#: The values of ``derived=`` (``--derived``): what :func:`find_series` does with a
#: derived/secondary series (DICOM ImageType ``DERIVED\SECONDARY``: reformats, maps,
#: screenshots, and every series of many research and anonymised exports).
#: ``auto`` skips one when the same folder holds a usable acquisition and uses it when
#: the folder holds none; ``include`` always uses it; ``skip`` never does.
DERIVED_POLICIES = ("auto", "include", "skip")


def check_derived(derived: object) -> str:
    """``derived`` checked against :data:`DERIVED_POLICIES` (any case)."""
    from ..errors import InvalidArgumentError

    d = derived.strip().lower() if isinstance(derived, str) else None
    if d not in DERIVED_POLICIES:
        raise InvalidArgumentError(f"derived must be one of {', '.join(map(repr, DERIVED_POLICIES))}, got {derived!r}")
    return d


@dataclass(frozen=True)
class SeriesRecord:
    """One series found by :func:`find_series` (a DICOM series of one geometry, or a NIfTI file)."""

    #: What to read: the NIfTI file, the DICOM file (multi-frame) or the series' folder
    #: (with ``series_uid`` to pick the series when the folder holds several).
    path: str
    #: SeriesInstanceUID ('' for NIfTI and for DICOM files without one).
    series_uid: str
    description: str
    #: DICOM Modality ('CT', 'MR', ...); '' for NIfTI.
    modality: str
    n_slices: int
    #: True when the pipeline should use it.
    usable: bool
    #: Why not: localizer, derived/secondary, colour, too few slices, missing slices,
    #: duplicate positions, unreadable file, ... When usable, '' or, for a derived series
    #: the ``derived`` policy uses, the rule that let it in.
    reason: str
    #: ``'dicom'`` or ``'nifti'``.
    kind: str
    series_number: int | None = None
    #: DICOM ImageType (backslash separated); '' for NIfTI.
    image_type: str = ""
    #: In-plane size (rows, columns); for NIfTI the first two axes.
    rows: int = 0
    cols: int = 0
    #: Voxel spacing (x, y, z) in mm, origin in mm and the 3x3 direction (row-major),
    #: as SimpleITK reports them for the volume; None when unknown.
    spacing: tuple[float, float, float] | None = None
    origin: tuple[float, float, float] | None = None
    direction: tuple[float, ...] | None = None
    #: True when the series is an acquisition meant as a volume that cannot be read
    #: correctly (an unreadable or truncated file, missing or duplicate slices, no
    #: positions): an error to report, where a localizer or a screenshot is simply not
    #: used. ``DatasetMetadata.from_directory`` keeps such a series as an image, so that
    #: the cache build records it as failed, with the reason.
    broken: bool = False
    #: The files, in slice order (one file for NIfTI and multi-frame DICOM).
    files: tuple[str, ...] = field(default=(), repr=False)
    #: True for a derived/secondary image volume (ImageType ``DERIVED\SECONDARY``), the
    #: series the ``derived`` policy decides about. A colour image, a localizer or a
    #: non-image object is reported as such, whatever its ImageType, and is False here.
    derived: bool = False
    #: The DICOM reader's own record of the series (read without a second walk:
    #: :func:`neurovfm.data.io.read_volume` takes the record); None for NIfTI.
    _info: Any = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        """A readable, file-system safe name: ``<number>_<description>`` (what is known)."""
        return series_name(self.series_number, self.description, self.series_uid, self.path, self.modality)

    def as_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (``files`` as their count, ``n_files``)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "_info"}
        d["n_files"] = len(d.pop("files"))
        d["name"] = self.name
        for k in ("spacing", "origin", "direction"):
            if d[k] is not None:
                d[k] = [float(v) for v in d[k]]
        return d


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def series_name(number: int | None, description: str, uid: str, path: str, modality: str = "") -> str:
    parts = [str(number)] if number is not None else []
    if _slug(description):
        parts.append(_slug(description))
    elif parts and modality:
        parts.append(_slug(modality))
    if not parts:
        base = os.path.basename(path.rstrip(os.sep))
        for ext in (".nii.gz", ".nii", ".dcm"):
            if base.lower().endswith(ext):
                base = base[: -len(ext)]
        parts.append(_slug(uid.rsplit(".", 1)[-1]) if uid else (_slug(base) or "series"))
    return "_".join(parts)


def series_image_names(records: Iterable[SeriesRecord]) -> list[str]:
    """Distinct names for ``records`` (their :attr:`SeriesRecord.name`; a repeated name
    gets ``_2``, ``_3``, ... in the order given)."""
    out: list[str] = []
    seen: dict[str, int] = {}
    for r in records:
        n = r.name
        if n in seen:
            seen[n] += 1
            k = seen[n]
            while f"{n}_{k}" in seen:
                k += 1
            n = f"{n}_{k}"
        seen.setdefault(n, 1)
        out.append(n)
    return out


def header_mode_conflict(modality: str, mode: str) -> str:
    """Why a DICOM ``Modality`` contradicts the pipeline ``mode`` (``'ct'``/``'mri'``),
    or '' (also for modalities that say nothing, e.g. ``OT``, or none: NIfTI)."""
    m = (modality or "").strip().upper()
    if mode == "ct" and m == "MR":
        return "the DICOM header says Modality=MR but the mode is 'ct' (CT windows on MR values are meaningless)"
    if mode == "mri" and m in ("CT", "PT"):
        return f"the DICOM header says Modality={m} but the mode is 'mri' (pass --mode ct for a CT)"
    return ""


# SeriesInfo kinds of problem that make a series broken (not merely "not a volume").
_BROKEN_KINDS = frozenset({"unreadable file", "no positions", "duplicate positions"})


def _apply_derived(records: list[SeriesRecord], derived: str) -> list[SeriesRecord]:
    """The ``derived`` policy on the series of one folder (see :data:`DERIVED_POLICIES`).

    A derived series the policy leaves out is reported as derived (not as broken or
    short: it is not read); one the policy uses is checked like any other series, and
    when usable its ``reason`` names the rule that let it in."""
    acquisition = any(r.usable and not r.derived for r in records)
    out = []
    for r in records:
        if not r.derived:
            out.append(r)
            continue
        what = f"derived/secondary image (ImageType {r.image_type})"
        if derived == "skip" or (derived == "auto" and acquisition):
            why = (
                "not used (derived='skip'; derived='include' uses it)"
                if derived == "skip"
                else "a reformat, map or screenshot beside the acquisition, not used "
                "(derived='auto' skips it when the folder holds a usable acquisition; derived='include' uses it)"
            )
            out.append(dataclasses.replace(r, usable=False, reason=f"{what}: {why}", broken=False))
        elif r.usable:
            why = (
                "used (derived='include')"
                if derived == "include"
                else "used: the folder holds no usable acquisition (derived='auto'; derived='skip' leaves it out)"
            )
            out.append(dataclasses.replace(r, reason=f"{what}: {why}"))
        else:
            out.append(r)
    return out


def _dicom_records(path: str, min_slices: int) -> tuple[list[SeriesRecord], list[str]]:
    """The DICOM series under ``path`` and every regular file the walk found."""
    from .sources.dicom.read import _direction
    from .sources.dicom.series import SeriesInfo, _make_series, _missing_slices, _scan, is_derived

    others: list[tuple[str, Any, str]] = []
    _p, walked, infos, _skipped = _scan(path, others=others)
    groups: dict[tuple[str, str], list[tuple[str, Any]]] = {}
    for f, h, what in others:
        groups.setdefault((what, h.series_uid or os.path.dirname(f)), []).append((f, h))
    extra: list[SeriesInfo] = []
    out = []
    for (what, _key), members in groups.items():
        h0 = members[0][1]
        if what == "localizer":
            info = _make_series(h0.series_uid, members, 1, len(members))
            extra.append(dataclasses.replace(info, problem="localizer (ImageType LOCALIZER)"))
            continue
        sop = h0.sop_class_uid or h0.media_storage_sop_class_uid or "?"
        files = tuple(f for f, _ in members)
        out.append(
            SeriesRecord(
                path=files[0] if len(files) == 1 else os.path.dirname(files[0]),
                series_uid=h0.series_uid,
                description=h0.series_description,
                modality=h0.modality,
                n_slices=0,
                usable=False,
                reason=f"non-image DICOM object (SOP class {sop}, no pixel data)",
                kind="dicom",
                series_number=int(h0.series_number) if getattr(h0, "has_series_number", False) else None,
                image_type=str(h0.image_type or ""),
                files=files,
            )
        )
    for info in [*infos, *extra]:
        h0 = info._headers[0] if info._headers else None
        reason = info.problem or ""
        broken = info._kind in _BROKEN_KINDS
        image_type = str(getattr(h0, "image_type", "") or "")
        derived = not reason and is_derived(image_type)
        if not reason and info.n_slices < min_slices:
            reason = f"too few slices: {info.n_slices} (fewer than {min_slices}): not a brain volume"
        if not reason and len(info._positions) >= 3:
            gap = _missing_slices(np.diff(np.asarray(info._positions)))
            if gap is not None:
                i, size, step = gap
                reason = f"missing slices: a gap of {size:.4g} mm between slices {i} and {i + 1} where the step is {step:.4g} mm"
                broken = True
        spacing = origin = direction = None
        if h0 is not None and getattr(h0, "has_iop", False):
            direction = _direction(h0.iop)
        if h0 is not None and getattr(h0, "has_pixel_spacing", False):
            row_sp, col_sp = (float(v) for v in h0.pixel_spacing)
            dz = 1.0  # SimpleITK's: the distance from the first slice to the last over n - 1
            hs = info._headers
            if len(hs) >= 2 and all(h.has_ipp for h in (hs[0], hs[-1])):
                d = float(np.linalg.norm(np.subtract(hs[-1].ipp, hs[0].ipp, dtype=np.float64)))
                dz = d / (len(hs) - 1) if d > 0 else 1.0
            spacing = (col_sp, row_sp, dz)
        if h0 is not None and getattr(h0, "has_ipp", False):
            origin = tuple(float(v) for v in h0.ipp)
        if info.multiframe:  # the geometry is in the per-frame groups: not guessed here
            spacing = origin = direction = None
        number = int(h0.series_number) if h0 is not None and getattr(h0, "has_series_number", False) else None
        where = info.files[0] if info.multiframe or len(info.files) == 1 else info.folder
        out.append(
            SeriesRecord(
                path=where,
                series_uid=info.uid,
                description=info.description,
                modality=info.modality,
                n_slices=info.n_slices,
                usable=not reason,
                reason=reason,
                kind="dicom",
                series_number=number,
                image_type=image_type,
                rows=info.rows,
                cols=info.cols,
                spacing=spacing,
                origin=origin,  # type: ignore[arg-type]
                direction=direction,
                broken=broken,
                files=info.files,
                derived=derived,
                _info=info,
            )
        )
    return out, walked


def _nifti_record(path: str, min_slices: int) -> SeriesRecord:
    base = os.path.basename(path)
    stem = base[: -len(".nii.gz")] if base.lower().endswith(".nii.gz") else base[: -len(".nii")]
    try:
        lay = nifti.nifti_layout(path)
    except ImageReadError as e:
        return SeriesRecord(path, "", stem, "", 0, False, e.reason, "nifti", broken=True, files=(path,))
    size = tuple(int(v) for v in reversed(lay.shape[-3:]))  # (x, y, z)
    reason = ""
    if min(size) < 2:
        reason = f"single slice: {size[0]} x {size[1]} x {size[2]}"
    elif sorted(size)[0] < min_slices:
        reason = f"too few slices: {sorted(size)[0]} (fewer than {min_slices}): not a brain volume"
    return SeriesRecord(
        path=path,
        series_uid="",
        description=stem,
        modality="",
        n_slices=min(size),
        usable=not reason,
        reason=reason,
        kind="nifti",
        rows=size[1],
        cols=size[0],
        spacing=tuple(float(v) for v in lay.spacing),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in lay.origin),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in lay.direction),
        files=(path,),
    )


def find_series(
    path: str | os.PathLike[str],
    *,
    min_slices: int = MIN_SLICES,
    derived: str = "auto",
    storage_options: Mapping[str, Any] | None = None,
) -> list[SeriesRecord]:
    """Every series under ``path`` (a folder, searched recursively, or one file).

    DICOM files are grouped into series (by SeriesInstanceUID, split by geometry;
    files need no extension, DICOMDIR and non-image objects are skipped); every
    ``.nii``/``.nii.gz`` file is a series of its own. Each :class:`SeriesRecord` says
    whether the pipeline should use it (``usable``) and, when not, why (``reason``):
    a localizer, a derived/secondary image (reformats, maps, screenshots) under the
    ``derived`` policy, a colour image, fewer than ``min_slices`` slices, missing or
    duplicate slices, an unreadable file. Usable series come first (most slices
    first), then the others.

    ``derived`` (:data:`DERIVED_POLICIES`): ``'auto'`` (default) skips a derived/secondary
    series when ``path`` holds a usable acquisition (a series that is not derived, NIfTI
    files included) and uses it, saying so in ``reason``, when it holds none;
    ``'include'`` always uses it; ``'skip'`` never does. The folder given is the study
    the rule looks at. This is the one answer to "which series" for every entry point:
    ``neurovfm series``, :meth:`DatasetMetadata.from_directory`, :func:`prepare_many`,
    ``ScanDataset`` and ``StudyPreprocessor.load_study``.

    A URL (``s3://bucket/study/``, any fsspec URL: :mod:`neurovfm.data.sources.remote`,
    ``storage_options`` for its filesystem) is listed once and staged; its records name
    the URLs of their files.
    """
    policy = check_derived(derived)
    if remote.is_url(path):
        return _remote_records(str(path), min_slices, policy, storage_options)
    p = os.fspath(path)
    if not os.path.exists(p):
        raise ImageNotFoundError(f"{p}: no such file or directory")
    records: list[SeriesRecord] = []
    if os.path.isfile(p) and nifti.is_nifti(p):
        records.append(_nifti_record(p, min_slices))
    else:
        try:
            dicom, files = _dicom_records(p, min_slices)  # one walk finds the NIfTI files too
        except ImageReadError as e:
            log.debug("%s: no DICOM series (%s)", p, e)
            dicom, files = [], []
        for f in files:
            if nifti.is_nifti(f) and not os.path.basename(f).startswith("."):
                records.append(_nifti_record(f, min_slices))
        records.extend(dicom)
    records = _apply_derived(records, policy)
    records.sort(key=lambda r: (not r.usable, -r.n_slices, r.path, r.series_uid))
    return records


def _remote_records(
    url: str, min_slices: int, derived: str, storage_options: Mapping[str, Any] | None
) -> list[SeriesRecord]:
    """:func:`find_series` of a URL: the prefix listed once and staged, its records with
    the URLs of their files (read later from those files alone: no second listing)."""
    with remote.staged(url, storage_options) as local:
        records = find_series(local, min_slices=min_slices, derived=derived)

        def to_url(p: str) -> str:
            rel = os.path.relpath(p, local)
            return url.rstrip("/") if rel == "." else remote.join(url, *rel.split(os.sep))

        return [
            dataclasses.replace(r, path=to_url(r.path), files=tuple(to_url(f) for f in r.files), _info=None)
            for r in records
        ]
