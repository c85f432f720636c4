"""Grouping DICOM files into series, ordering their slices, and checking them.

The headers from :mod:`.discovery` are grouped by
SeriesInstanceUID (by folder when the UID is blank), each group is split by
geometry (orientation, rows, columns, pixel spacing), and the slices of each
group are ordered along the slice normal as GDCM/SimpleITK order them. A
series that is not a readable 3D scalar volume (a single slice, colour,
duplicate or missing positions, unreadable files) is kept with ``problem`` set;
:func:`_check_geometry` refuses missing slices and warns about several slabs or
a gantry tilt before a series is read.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Optional

import numpy as np
import numpy.typing as npt

from .... import _core
from ...._threads import get_num_threads
from ....errors import (
    DicomSeriesError,
    StackedSliceError,
    ImageNotFoundError,
    ImageReadError,
    UnsupportedImageError,
)

from .discovery import _LOOPS, Header, _common_folder, _scan_files, _walk

__all__ = ["SeriesInfo", "is_derived", "scan_series"]

logger = logging.getLogger("neurovfm")

_COLOUR_PHOTOMETRIC = ("RGB", "YBR", "PALETTE", "ARGB", "CMYK", "HSV")

# Tolerances for grouping by geometry and for telling slice positions apart.
_IOP_TOL = 1e-4
_SPACING_REL_TOL = 1e-4
_POSITION_TOL = 1e-3  # mm along the slice normal
_NONUNIFORM_REL_TOL = 0.01
_TILT_TOL_DEG = 0.5


@dataclass(frozen=True)
class SeriesInfo:
    """One series of one geometry found by :func:`scan_series`."""

    #: SeriesInstanceUID ('' when the files have none).
    uid: str
    #: Files in slice order (along the slice normal, as GDCM orders them).
    files: tuple[str, ...]
    #: Number of slices (frames for a multi-frame file).
    n_slices: int
    rows: int
    cols: int
    modality: str
    description: str
    #: True when the compiled reader can read it (uncompressed little endian or a
    #: compression it decodes, single frame, classic CT/MR/PET storage, consistent
    #: headers).
    fast_path: bool
    #: Folder holding the files (their common folder).
    folder: str
    multiframe: bool = False
    #: Why this series cannot be read as a 3D scalar volume (None if it can).
    problem: Optional[str] = None
    _error: Any = field(default=None, repr=False, compare=False)
    _kind: Optional[str] = field(default=None, repr=False, compare=False)
    _headers: tuple[Header, ...] = field(default=(), repr=False, compare=False)
    _positions: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @property
    def usable(self) -> bool:
        return self.problem is None

    def _raise(self, where: Optional[str] = None) -> NoReturn:
        raise self._error(where or self._where(), self.problem)

    def _where(self) -> str:
        return self.files[0] if len(self.files) == 1 else self.folder


def _is_colour(h: Header) -> bool:
    if h.samples_per_pixel > 1:
        return True
    pi = h.photometric.upper()
    return pi not in ("MONOCHROME2", "MONOCHROME1", "") and pi.startswith(_COLOUR_PHOTOMETRIC)


def _iop_valid(v: Sequence[float]) -> bool:
    """GDCM's DirectionCosines::IsValid: unit row/column (1e-3) and orthogonal."""
    n1 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2]
    n2 = v[3] * v[3] + v[4] * v[4] + v[5] * v[5]
    dot = v[0] * v[3] + v[1] * v[4] + v[2] * v[5]
    return abs(n1 - 1) < 1e-3 and abs(n2 - 1) < 1e-3 and abs(dot) < 1e-3


def _gdcm_iop(h: Header) -> Optional[tuple[float, ...]]:
    """Direction cosines as GDCM reads them: normalised if slightly off, else None."""
    if not h.has_iop:
        return None
    v = tuple(h.iop)
    if _iop_valid(v):
        return v
    n1 = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    n2 = math.sqrt(v[3] * v[3] + v[4] * v[4] + v[5] * v[5])
    if n1 == 0 or n2 == 0:
        return None
    w = (v[0] / n1, v[1] / n1, v[2] / n1, v[3] / n2, v[4] / n2, v[5] / n2)
    return w if _iop_valid(w) else None


def _same_geometry(a: Header, b: Header) -> bool:
    if a.rows != b.rows or a.cols != b.cols:
        return False
    if a.has_iop != b.has_iop or a.has_pixel_spacing != b.has_pixel_spacing:
        return False
    if a.has_iop and max(abs(x - y) for x, y in zip(a.iop, b.iop)) > _IOP_TOL:
        return False
    if a.has_pixel_spacing:
        for x, y in zip(a.pixel_spacing, b.pixel_spacing):
            if abs(x - y) > _SPACING_REL_TOL * max(1.0, abs(x)):
                return False
    return True


def _header_problem(h: Header) -> str:
    """Why an image file cannot be read, from its header alone ('' when it can): the
    parser's error, no pixel data, or pixel data shorter than Rows x Columns x frames x
    samples x bits claim (checked before anything is allocated)."""
    if h.error:
        return h.error
    if not h.has_pixel_data:
        return "no pixel data (the PixelData element is missing)"
    length = getattr(h, "pixel_length", None)
    if length is None or h.encapsulated or h.bits_allocated < 8 or length == 0xFFFFFFFF:
        return ""
    dims = (h.rows, h.cols, max(1, h.number_of_frames), max(1, h.samples_per_pixel), h.bits_allocated // 8)
    need = int(np.prod(dims, dtype=object))
    if length < need:
        return (
            f"truncated or inconsistent header: pixel data holds {length} bytes but Rows x Columns x "
            f"frames x samples x bytes = {' x '.join(map(str, dims))} claims {need}"
        )
    return ""


def _make_series(uid: str, members: list[tuple[str, Header]], n_geometries: int, n_in_uid: int) -> SeriesInfo:
    """One geometry group -> SeriesInfo, with its slice order and any problem."""
    files = [f for f, _ in members]
    hs = [h for _, h in members]
    h0 = hs[0]
    multiframe = len(members) == 1 and h0.number_of_frames > 1
    problem: Optional[str] = None
    error: Optional[type[ImageReadError]] = None
    kind: Optional[str] = None
    positions: tuple[float, ...] = ()

    # Slice order: by distance along the normal of the first file's
    # orientation, as GDCM's IPP sorter (which SimpleITK uses) does.
    if len(members) > 1 and all(h.has_ipp for h in hs):
        cos = _gdcm_iop(h0)
        if cos is None:
            cos = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        n0 = cos[1] * cos[5] - cos[2] * cos[4]
        n1 = cos[2] * cos[3] - cos[0] * cos[5]
        n2 = cos[0] * cos[4] - cos[1] * cos[3]
        dist = np.array([n0 * x + n1 * y + n2 * z for x, y, z in (h.ipp for h in hs)])
        order = np.argsort(dist, kind="stable")
        files = [files[i] for i in order]
        hs = [hs[i] for i in order]
        positions = tuple(float(d) for d in dist[order])
        h0 = hs[0]

    folder = _common_folder(files)
    n = h0.number_of_frames if multiframe else len(files)
    broken = [(f, e) for f, h in zip(files, hs) if (e := _header_problem(h))]
    geo_note = (
        f" (series {uid or '<no uid>'} has {n_in_uid} images in {n_geometries} different geometries)"
        if n_geometries > 1
        else ""
    )
    c = next((h for h in hs if _is_colour(h)), None)
    if c is not None:
        problem = (
            f"colour image (SamplesPerPixel {c.samples_per_pixel}, PhotometricInterpretation "
            f"{c.photometric or '?'}): not a scalar volume"
        )
        error, kind = UnsupportedImageError, "colour"
    elif broken:
        f, err = broken[0]
        more = f" (and {len(broken) - 1} more files)" if len(broken) > 1 else ""
        problem = f"cannot read {f}: {err}{more}"
        error, kind = ImageReadError, "unreadable file"
    elif n < 2:
        problem = "2D image / single slice: not a 3D volume" + geo_note
        error, kind = UnsupportedImageError, "single slice"
    elif h0.rows < 2 or h0.cols < 2:
        problem = f"image is {h0.rows} x {h0.cols} pixels: not a 3D volume"
        error, kind = UnsupportedImageError, "too small"
    elif not multiframe and not positions:
        problem = (
            f"{sum(not h.has_ipp for h in hs)} of {len(hs)} files have no "
            "ImagePositionPatient: slice order and spacing are unknown"
        )
        error, kind = DicomSeriesError, "no positions"
    elif not multiframe:
        d = np.asarray(positions)
        dup = np.flatnonzero(np.diff(d) <= _POSITION_TOL)
        if dup.size:
            n_distinct = len(d) - dup.size
            i = int(dup[0])
            if n_distinct == 1:
                problem = (
                    f"duplicate slice positions: all {len(d)} files hold the same slice "
                    f"position ({', '.join(os.path.basename(x) for x in files[:3])}"
                    f"{', ...' if len(files) > 3 else ''}): "
                    "a 2D image / single slice stored several times, not a volume"
                )
                error, kind = StackedSliceError, "one position, several files"
            else:
                problem = (
                    f"duplicate slice positions: {len(d)} files but only {n_distinct} distinct "
                    f"positions (e.g. {os.path.basename(files[i])} and "
                    f"{os.path.basename(files[i + 1])} at {d[i]:.4f} mm along the slice normal): "
                    "several acquisitions or copies in one series"
                )
                error, kind = DicomSeriesError, "duplicate positions"

    fast = problem is None and not multiframe and all(_fast_ok(h) for h in hs)
    return SeriesInfo(
        uid=uid,
        files=tuple(files),
        n_slices=int(n),
        rows=int(h0.rows),
        cols=int(h0.cols),
        modality=h0.modality,
        description=h0.series_description,
        fast_path=bool(fast),
        folder=folder,
        multiframe=multiframe,
        problem=problem,
        _error=error,
        _kind=kind,
        _headers=tuple(hs),
        _positions=positions,
    )


def _fast_ok(h: Header) -> bool:
    return isinstance(h, _core.DicomHeader) and h.fast_readable


def _scan(
    path: str | os.PathLike[str], others: list[tuple[str, Header, str]] | None = None
) -> tuple[str, list[str], list[SeriesInfo], Counter[str]]:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise ImageNotFoundError(f"{p}: no such file or directory")
    loops: list[str] = []
    if os.path.isdir(p):
        files = _walk(p, loops)
    elif os.path.isfile(p):
        files = [p]
    else:
        raise ImageReadError(p, "not a regular file or folder")
    threads = get_num_threads()
    kept, skipped = _scan_files(files, threads, others)
    if loops:
        logger.info("%s: not followed: %d symbolic links that loop or lead nowhere (%s)", p, len(loops), loops[0])
        skipped[_LOOPS] = len(loops)

    # Group by SeriesInstanceUID (by folder when blank); a multi-frame file is
    # a series of its own.
    groups: dict[tuple[str, str], list[tuple[str, Header]]] = {}
    for f, h in kept:
        if h.number_of_frames > 1:
            key = ("file", f)
        elif h.series_uid:
            key = ("uid", h.series_uid)
        else:
            key = ("dir", os.path.dirname(f))
        groups.setdefault(key, []).append((f, h))

    series: list[SeriesInfo] = []
    for members in groups.values():
        uid = members[0][1].series_uid
        # Split by geometry: orientation, rows, columns, pixel spacing. Files
        # with identical values are grouped first; distinct values are then
        # merged when within tolerance.
        exact: dict[tuple[object, ...], list[tuple[str, Header]]] = {}
        for f, h in members:
            k = (
                h.rows,
                h.cols,
                h.has_iop and tuple(h.iop),
                h.has_pixel_spacing and tuple(h.pixel_spacing),
            )
            exact.setdefault(k, []).append((f, h))
        sub: list[list[tuple[str, Header]]] = []
        for g_exact in exact.values():
            for g in sub:
                if _same_geometry(g[0][1], g_exact[0][1]):
                    g.extend(g_exact)
                    break
            else:
                sub.append(list(g_exact))
        for g in sub:
            series.append(_make_series(uid, g, len(sub), len(members)))
    series.sort(key=lambda s: (-s.n_slices, s.folder, s.uid, s.files[0]))
    return p, files, series, skipped


def is_derived(image_type: str) -> bool:
    """True for a derived/secondary image: DICOM ImageType ``DERIVED\\SECONDARY[\\...]``
    (reformats, maps, screenshots; also every series of many research exports)."""
    parts = [p.strip().upper() for p in image_type.split("\\")]
    return len(parts) >= 2 and parts[0] == "DERIVED" and parts[1] == "SECONDARY"


def scan_series(path: str | os.PathLike[str]) -> list[SeriesInfo]:
    """The DICOM reader's groups under ``path`` (a folder, walked recursively, or a file),
    before the pipeline's choice of which to use (that is :func:`neurovfm.data.find_series`).

    DICOMDIR files and other directory records, non-image objects, localizers
    and non-DICOM files are skipped. Files are grouped by SeriesInstanceUID (by
    folder when blank) and split by geometry; each :class:`SeriesInfo` lists its
    files in slice order. Series that are not readable volumes (a single slice,
    colour, duplicate positions...) are included with ``problem`` set. Sorted
    by number of slices, largest first.
    """
    return _scan(path)[2]


def _missing_slices(steps: npt.NDArray[np.float64]) -> Optional[tuple[int, float, float]]:
    """(index of the first gap, its size, the step) when the steps are one step ``s`` except
    a few that are whole multiples ``k * s`` (k >= 2): slices missing from one stack. Two
    slabs of different thickness (any number of steps of each) are not this pattern."""
    step = float(np.median(steps))
    if step <= 0:
        return None
    ratio = steps / step
    k = np.rint(ratio)
    uniform = np.abs(ratio - 1) <= _NONUNIFORM_REL_TOL
    multiple = (k >= 2) & (np.abs(ratio - k) <= _NONUNIFORM_REL_TOL * k)
    if not multiple.any() or not (uniform | multiple).all() or multiple.sum() > max(1, len(steps) // 10):
        return None
    i = int(np.argmax(multiple))
    return i, float(steps[i]), step


def _check_geometry(s: SeriesInfo) -> None:
    """Refuses a stack with missing slices; warns about what SimpleITK reads without
    complaint but gets approximate (several slabs, gantry tilt)."""
    if len(s._positions) < 2:
        return
    if len(s._positions) >= 3:
        steps = np.diff(np.asarray(s._positions))
        gap = _missing_slices(steps)
        if gap is not None:
            i, size, step = gap
            n = int(round(size / step)) - 1
            raise DicomSeriesError(
                s.folder,
                f"missing slices: a gap of {size:.4g} mm between slices {i} and {i + 1} (of "
                f"{len(s._positions)}, ordered along the normal) where the step is {step:.4g} mm: "
                f"{n} slice{'s' if n > 1 else ''} missing; the volume would be distorted",
            )
        lo, hi = float(steps.min()), float(steps.max())
        if hi - lo > _NONUNIFORM_REL_TOL * max(abs(hi), 1e-12):
            logger.warning(
                "%s: slice spacing is not uniform (steps from %.4g to %.4g mm along the "
                "normal: several slabs); the volume uses one mean spacing, "
                "as SimpleITK does",
                s.folder,
                lo,
                hi,
            )
    h0, hn = s._headers[0], s._headers[-1]
    cos = _gdcm_iop(h0)
    if cos is None:
        return
    normal = np.cross(cos[:3], cos[3:])
    stack = np.asarray(hn.ipp, dtype=np.float64) - np.asarray(h0.ipp, dtype=np.float64)
    norm = float(np.linalg.norm(stack) * np.linalg.norm(normal))
    if norm > 0:
        angle = math.degrees(math.acos(min(1.0, abs(float(stack @ normal)) / norm)))
        if angle > _TILT_TOL_DEG:
            logger.warning(
                "%s: the slices are stacked %.1f degrees off their normal (gantry tilt or "
                "sheared acquisition); the volume keeps SimpleITK's orthogonal geometry, which "
                "ignores the shear",
                s.folder,
                angle,
            )
