"""DICOM series discovery, choice, ordering and reading.

A folder (walked recursively) or a single file is scanned with the compiled
header parser; files are grouped by SeriesInstanceUID (by folder when the UID
is blank), each group is split by geometry (orientation, rows, columns, pixel
spacing), and the slices of each group are ordered along the slice normal as
GDCM/SimpleITK order them. :func:`read_dicom` picks the series with the most
slices (or the one named by ``series_uid=``) and reads it:

- uncompressed little-endian single-frame series are read by the compiled
  reader (multithreaded, GIL released); voxels, pixel type and geometry are
  exactly those of ``SimpleITK.ImageSeriesReader`` on the same file list;
- anything else (compressed, big endian, enhanced multi-frame, exotic pixel
  layouts) is read by SimpleITK, with its errors turned into the library's.

Nothing is ever picked or stacked silently when that would be wrong: a single
slice, colour images, slices stacked at the same position or a series whose
files cannot be read raise the library's exceptions naming the path and reason.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from neurovfm import _core
from neurovfm.data.volume import RawVolume
from neurovfm._threads import get_num_threads
from neurovfm.errors import (
    DicomSeriesError,
    StackedSliceError,
    ImageNotFoundError,
    ImageReadError,
    UnsupportedImageError,
)

__all__ = [
    "RawVolume",
    "SeriesInfo",
    "StackedSliceError",
    "find_series",
    "is_dicom_file",
    "read_dicom",
    "read_series",
]

logger = logging.getLogger("neurovfm")

#: Media Storage Directory Storage (DICOMDIR and other directory records).
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

_COLOUR_PHOTOMETRIC = ("RGB", "YBR", "PALETTE", "ARGB", "CMYK", "HSV")

# Tolerances for grouping by geometry and for telling slice positions apart.
_IOP_TOL = 1e-4
_SPACING_REL_TOL = 1e-4
_POSITION_TOL = 1e-3  # mm along the slice normal
_NONUNIFORM_REL_TOL = 0.01
_TILT_TOL_DEG = 0.5

_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM "
    b"UC UI UL UN UR US UT UV".split()
)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())


@dataclass(frozen=True)
class SeriesInfo:
    """One series of one geometry found by :func:`find_series`."""

    #: SeriesInstanceUID ('' when the files have none).
    uid: str
    #: Files in slice order (along the slice normal, as GDCM orders them).
    files: tuple
    #: Number of slices (frames for a multi-frame file).
    n_slices: int
    rows: int
    cols: int
    modality: str
    description: str
    #: True when the compiled reader can read it (uncompressed little endian,
    #: single frame, classic CT/MR/PET storage, consistent headers).
    fast_path: bool
    #: Folder holding the files (their common folder).
    folder: str
    multiframe: bool = False
    #: Why this series cannot be read as a 3D scalar volume (None if it can).
    problem: Optional[str] = None
    _error: Any = field(default=None, repr=False, compare=False)
    _kind: Optional[str] = field(default=None, repr=False, compare=False)
    _headers: tuple = field(default=(), repr=False, compare=False)
    _positions: tuple = field(default=(), repr=False, compare=False)

    @property
    def usable(self) -> bool:
        return self.problem is None

    def _raise(self, where: Optional[str] = None):
        raise self._error(where or self._where(), self.problem)

    def _where(self) -> str:
        return self.files[0] if len(self.files) == 1 else self.folder


# ---------------------------------------------------------------------------
# Cheap detection


def is_dicom_file(path) -> bool:
    """True when ``path`` looks like a DICOM file by content (not by name).

    Checks "DICM" at byte 128, or a plausible dataset start without preamble
    (a first element in group 0x0002 or 0x0008 whose length fits in the file).
    Reads at most 132 bytes; never raises.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(132)
            size = os.fstat(f.fileno()).st_size
    except (OSError, TypeError, ValueError):
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    group, _ = struct.unpack_from("<HH", head, 0)
    if group not in (0x0002, 0x0008):
        return False
    vr = head[4:6]
    if vr in _VRS:
        if vr in _LONG_VRS:
            if len(head) < 12:
                return False
            (length,) = struct.unpack_from("<I", head, 8)
            return length == 0xFFFFFFFF or 12 + length <= size
        (length,) = struct.unpack_from("<H", head, 6)
        return 8 + length <= size
    (length,) = struct.unpack_from("<I", head, 4)
    return length != 0xFFFFFFFF and 8 + length <= size and length < (1 << 24)


# ---------------------------------------------------------------------------
# Scanning


_LOOPS = "symbolic links not followed (a loop or a missing target)"


def _walk(root: str, loops: Optional[list] = None) -> list:
    """Regular files under root, recursively; symlinks followed, loops not (the
    symbolic links that loop or lead nowhere are appended to ``loops``)."""
    out = []
    seen = set()
    stack = [root]
    loops = [] if loops is None else loops
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            if os.path.islink(d):
                loops.append(d)
            continue
        seen.add(key)
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            logger.debug("cannot list %s: %s", d, exc)
            continue
        subdirs = []
        for e in entries:
            try:
                if e.is_dir():
                    subdirs.append(e.path)
                elif e.is_file():
                    out.append(e.path)
                elif e.is_symlink() and not os.path.exists(e.path):
                    loops.append(e.path)
            except OSError:  # ELOOP
                if os.path.islink(e.path):
                    loops.append(e.path)
        stack.extend(reversed(subdirs))
    out.sort()
    return out


class _PyHeader:
    """The header fields the grouping needs, from pydicom (rare fallback)."""

    uncompressed_native = False
    is_dicom = True
    error = ""
    encapsulated = False
    float_pixel_data = False

    def __init__(self, ds, has_pixels: bool):
        def get(name, default):
            v = ds.get(name, default)
            return default if v is None or v == "" else v

        def floats(name, n):
            v = ds.get(name)
            try:
                vals = tuple(float(x) for x in v)
            except (TypeError, ValueError):
                return None
            return vals if len(vals) == n else None

        meta = getattr(ds, "file_meta", None)
        self.transfer_syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
        self.media_storage_sop_class_uid = str(getattr(meta, "MediaStorageSOPClassUID", "") or "")
        self.sop_class_uid = str(get("SOPClassUID", ""))
        self.series_uid = str(get("SeriesInstanceUID", ""))
        self.modality = str(get("Modality", ""))
        it = ds.get("ImageType")
        if it is None or isinstance(it, str):
            self.image_type = str(it or "")
        else:
            self.image_type = "\\".join(str(x) for x in it)
        self.series_description = str(get("SeriesDescription", ""))
        self.photometric = str(get("PhotometricInterpretation", ""))
        self.rows = int(get("Rows", 0))
        self.cols = int(get("Columns", 0))
        self.samples_per_pixel = int(get("SamplesPerPixel", 1))
        self.bits_allocated = int(get("BitsAllocated", 0))
        self.bits_stored = int(get("BitsStored", 0))
        self.high_bit = int(get("HighBit", 0))
        self.pixel_representation = int(get("PixelRepresentation", 0))
        try:
            self.number_of_frames = int(get("NumberOfFrames", 1))
        except (TypeError, ValueError):
            self.number_of_frames = 1
        ipp, iop, ps = (
            floats("ImagePositionPatient", 3),
            floats("ImageOrientationPatient", 6),
            floats("PixelSpacing", 2),
        )
        self.has_ipp, self.ipp = ipp is not None, ipp or (0.0, 0.0, 0.0)
        self.has_iop, self.iop = iop is not None, iop or (0.0,) * 6
        self.has_pixel_spacing, self.pixel_spacing = ps is not None, ps or (1.0, 1.0)
        self.has_instance_number = "InstanceNumber" in ds
        self.has_pixel_data = has_pixels
        self.output_dtype = None
        self.stored_dtype = None


def _pydicom_header(path: str):
    try:
        import pydicom

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, defer_size=1024)
            return _PyHeader(ds, "PixelData" in ds)
    except Exception:  # pydicom raises many types on broken files
        return None


def _is_localizer(h) -> bool:
    it = h.image_type.upper()
    return "LOCALIZER" in it and any(t.strip() == "LOCALIZER" for t in it.split("\\"))


def _is_colour(h) -> bool:
    if h.samples_per_pixel > 1:
        return True
    pi = h.photometric.upper()
    return pi not in ("MONOCHROME2", "MONOCHROME1", "") and pi.startswith(_COLOUR_PHOTOMETRIC)


def _iop_valid(v) -> bool:
    """GDCM's DirectionCosines::IsValid: unit row/column (1e-3) and orthogonal."""
    n1 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2]
    n2 = v[3] * v[3] + v[4] * v[4] + v[5] * v[5]
    dot = v[0] * v[3] + v[1] * v[4] + v[2] * v[5]
    return abs(n1 - 1) < 1e-3 and abs(n2 - 1) < 1e-3 and abs(dot) < 1e-3


def _gdcm_iop(h):
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


def _same_geometry(a, b) -> bool:
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


def _scan_files(files: list, threads: int):
    """Headers of the image files, and counts of what was skipped and why."""
    headers = _core.read_dicom_headers(files, threads)
    kept = []
    skipped = Counter()
    unreadable = []
    for f, h in zip(files, headers):
        if not h.is_dicom:
            if os.access(f, os.R_OK):
                skipped["not DICOM"] += 1
            else:
                skipped["unreadable (permission denied)"] += 1
                unreadable.append((f, "permission denied"))
            continue
        sop = h.media_storage_sop_class_uid or h.sop_class_uid
        if sop == DICOMDIR_SOP_CLASS or h.sop_class_uid == DICOMDIR_SOP_CLASS:
            skipped["DICOMDIR / directory record"] += 1
            continue
        if h.error and not h.has_pixel_data:
            # The fast parser gave up before the pixel data (deflate, odd
            # encodings): let pydicom have a go; such files are never fast.
            ph = _pydicom_header(f)
            if ph is None:
                skipped["unreadable DICOM"] += 1
                unreadable.append((f, h.error))
                continue
            h = ph
        if h.rows <= 0 or h.cols <= 0 or not (h.has_pixel_data or h.has_ipp):
            # (An image header with a position but no pixels is a broken image, kept
            # so that the series reports it rather than reading around the gap.)
            skipped["non-image DICOM object"] += 1
            continue
        if _is_localizer(h):
            skipped["localizer"] += 1
            continue
        kept.append((f, h))
    for f, err in unreadable:
        logger.warning("skipping unreadable DICOM file %s: %s", f, err)
    return kept, skipped


def _common_folder(files) -> str:
    dirs = {os.path.dirname(f) for f in files}
    if len(dirs) == 1:
        return dirs.pop()
    try:
        return os.path.commonpath(list(dirs))
    except ValueError:
        return sorted(dirs)[0]


def _header_problem(h) -> str:
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


def _make_series(uid: str, members: list, n_geometries: int, n_in_uid: int) -> SeriesInfo:
    """One geometry group -> SeriesInfo, with its slice order and any problem."""
    files = [f for f, _ in members]
    hs = [h for _, h in members]
    h0 = hs[0]
    multiframe = len(members) == 1 and h0.number_of_frames > 1
    problem = None
    error = None
    kind = None
    positions = ()

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
        f" (series {uid or '<no uid>'} has {n_in_uid} images in {n_geometries} different "
        "geometries)"
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


def _fast_ok(h) -> bool:
    return isinstance(h, _core.DicomHeader) and h.fast_readable


def _scan(path):
    p = os.fspath(path)
    if not os.path.exists(p):
        raise ImageNotFoundError(f"{p}: no such file or directory")
    loops: list = []
    if os.path.isdir(p):
        files = _walk(p, loops)
    elif os.path.isfile(p):
        files = [p]
    else:
        raise ImageReadError(p, "not a regular file or folder")
    threads = get_num_threads()
    kept, skipped = _scan_files(files, threads)
    if loops:
        logger.info("%s: not followed: %d symbolic links that loop or lead nowhere (%s)", p, len(loops), loops[0])
        skipped[_LOOPS] = len(loops)

    # Group by SeriesInstanceUID (by folder when blank); a multi-frame file is
    # a series of its own.
    groups: dict = {}
    for f, h in kept:
        if h.number_of_frames > 1:
            key = ("file", f)
        elif h.series_uid:
            key = ("uid", h.series_uid)
        else:
            key = ("dir", os.path.dirname(f))
        groups.setdefault(key, []).append((f, h))

    series = []
    for members in groups.values():
        uid = members[0][1].series_uid
        # Split by geometry: orientation, rows, columns, pixel spacing. Files
        # with identical values are grouped first; distinct values are then
        # merged when within tolerance.
        exact: dict = {}
        for f, h in members:
            k = (
                h.rows,
                h.cols,
                h.has_iop and tuple(h.iop),
                h.has_pixel_spacing and tuple(h.pixel_spacing),
            )
            exact.setdefault(k, []).append((f, h))
        sub: list = []
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


def find_series(path) -> list:
    """The DICOM image series under ``path`` (a folder, walked recursively, or a file).

    DICOMDIR files and other directory records, non-image objects, localizers
    and non-DICOM files are skipped. Files are grouped by SeriesInstanceUID (by
    folder when blank) and split by geometry; each :class:`SeriesInfo` lists its
    files in slice order. Series that are not readable volumes (a single slice,
    colour, duplicate positions...) are included with ``problem`` set. Sorted
    by number of slices, largest first.
    """
    return _scan(path)[2]


# ---------------------------------------------------------------------------
# Reading


def _describe(s: SeriesInfo) -> str:
    desc = f" '{s.description}'" if s.description else ""
    return (
        f"{s.uid or '<no uid>'}{desc} ({s.modality or '?'}, {s.n_slices} slices, {s.rows}x{s.cols})"
    )


def _nothing_found(p: str, files: list, skipped: Counter) -> DicomSeriesError:
    if not files:
        loops = f" ({skipped[_LOOPS]} {_LOOPS})" if skipped.get(_LOOPS) else ""
        return DicomSeriesError(p, "no files found" + loops)
    parts = ", ".join(f"{n} {what}" for what, n in sorted(skipped.items()) if what != _LOOPS)
    if os.path.isfile(p) and skipped.get("not DICOM"):
        return ImageReadError(p, "not a DICOM file")
    if skipped and set(skipped) <= {"DICOMDIR / directory record"}:
        reason = (
            "no DICOM image series: only a DICOMDIR / directory records, no image files "
            "(pass the folder that holds the images)"
        )
    else:
        reason = "no DICOM image series found"
    return DicomSeriesError(p, f"{reason} ({len(files)} files examined: {parts})")


def read_dicom(path, series_uid: Optional[str] = None) -> RawVolume:
    """Read a DICOM series (a folder or a single file) as a 3D volume.

    Chooses the readable series with the most slices of one geometry (logged
    on the ``neurovfm`` logger), or the series whose SeriesInstanceUID is
    ``series_uid``. Raises :class:`~neurovfm.errors.ImageNotFoundError` for a
    missing path, :class:`~neurovfm.errors.DicomSeriesError` when no usable
    series is found or the series is inconsistent (duplicate slice positions,
    missing positions), :class:`~neurovfm.errors.UnsupportedImageError` for a
    2D image / single slice or colour, and
    :class:`~neurovfm.errors.ImageReadError` for unreadable files; every
    message names the file or folder and the reason.
    """
    p, files, series, skipped = _scan(path)
    if not series:
        raise _nothing_found(p, files, skipped)
    if series_uid is not None:
        cands = [s for s in series if s.uid == series_uid]
        if not cands:
            avail = ", ".join(sorted({repr(s.uid) for s in series}))
            raise DicomSeriesError(
                p, f"no series with SeriesInstanceUID {series_uid!r}; available: {avail}"
            )
    else:
        cands = series
    usable = [s for s in cands if s.usable]
    if not usable:
        worst = cands[0]  # the largest
        if os.path.isfile(p):
            hint = " (to read a series, pass its folder)" if worst._kind == "single slice" else ""
            raise worst._error(p, worst.problem + hint)
        if len(cands) == 1:
            worst._raise()
        kinds = Counter(s._kind for s in cands)
        summary = ", ".join(f"{n} x {k}" for k, n in kinds.most_common())
        raise worst._error(
            p,
            f"no readable 3D series among {len(cands)} series ({summary}); the largest, "
            f"{_describe(worst)} in {worst._where()}: {worst.problem}",
        )
    chosen = usable[0]
    ties = [s for s in usable[1:] if s.n_slices == chosen.n_slices]
    if len(series) > 1:
        others = [s for s in series if s is not chosen]
        msg = "%s: read series %s from %s among %d series (others: %s)%s"
        args = (
            p,
            _describe(chosen),
            chosen.folder,
            len(series),
            "; ".join(_describe(s) for s in others[:8]) + (" ..." if len(others) > 8 else ""),
            "; pass series_uid= to choose another",
        )
        if ties:
            logger.warning(msg + " [several series have %d slices]", *args, chosen.n_slices)
        else:
            logger.info(msg, *args)
    bigger_bad = [s for s in cands if not s.usable and s.n_slices > chosen.n_slices]
    for s in bigger_bad:
        logger.warning("%s: skipped the larger series %s: %s", p, _describe(s), s.problem)
    return read_series(chosen, path=p)


def read_series(series: SeriesInfo, path: Optional[str] = None) -> RawVolume:
    """Read one :class:`SeriesInfo` from :func:`find_series` as a 3D volume."""
    where = path if path is not None else series._where()
    if not series.usable:
        series._raise(series._where())
    _check_geometry(series)
    if series.multiframe:
        vol = _read_sitk_file(series.files[0], series.uid, series.modality)
    elif series.fast_path:
        vol = _read_fast(series)
    else:
        vol = _read_sitk_series(series)
    vol.path = where
    return vol


def _missing_slices(steps: np.ndarray):
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


def _direction(iop) -> tuple:
    """ITK's GDCMImageIO direction: normal, then re-orthogonalised row/column."""
    r = np.array(iop[:3], dtype=np.float64)
    c = np.array(iop[3:], dtype=np.float64)
    s = np.cross(r, c)
    s = s / np.linalg.norm(s)
    r = np.cross(c, s)
    r = r / np.linalg.norm(r)
    c = np.cross(s, r)
    m = np.stack([r, c, s], axis=1)  # columns are the axes
    return tuple(float(v) for v in m.ravel())


def _read_fast(s: SeriesInfo) -> RawVolume:
    hs = list(s._headers)
    h0 = hs[0]
    dtype = h0.output_dtype
    try:
        arr = _core.read_dicom_pixels(list(s.files), hs, dtype, get_num_threads())
    except MemoryError:
        shape = (len(s.files), s.rows, s.cols)
        raise ImageReadError(s.folder, f"not enough memory for a volume of {shape} voxels") from None
    except RuntimeError as exc:
        msg = str(exc)
        bad = next((f for f in s.files if msg.startswith(f + ":")), None)
        if bad is not None:
            raise ImageReadError(bad, msg[len(bad) + 1 :].strip()) from None
        raise ImageReadError(s.folder, msg) from None
    first = np.array(h0.ipp, dtype=np.float64)
    last = np.array(hs[-1].ipp, dtype=np.float64)
    norm = float(np.linalg.norm(last - first))
    z = norm / (len(hs) - 1) if norm > 0 else 1.0
    spacing = (float(h0.pixel_spacing[1]), float(h0.pixel_spacing[0]), z)
    return RawVolume(
        array=arr,
        spacing=spacing,
        origin=tuple(float(v) for v in first),
        direction=_direction(h0.iop),
        path=s.folder,
        series_uid=s.uid,
        modality=s.modality,
        reader="fast",
    )


def _sitk_reason(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith(("ITK ERROR", "Description")) or "ERROR" in ln:
            return "SimpleITK could not read it: " + ln
    return "SimpleITK could not read it: " + (lines[-1] if lines else type(exc).__name__)


def _from_sitk(img, where: str, uid: str, modality: str) -> RawVolume:
    import SimpleITK as sitk

    if img.GetNumberOfComponentsPerPixel() != 1:
        raise UnsupportedImageError(
            where,
            f"colour / multi-component image ({img.GetNumberOfComponentsPerPixel()} components): "
            "not a scalar volume",
        )
    dim = img.GetDimension()
    size = img.GetSize()
    if dim == 4 and size[3] == 1:
        arr = sitk.GetArrayFromImage(img)[0]
        d4 = np.array(img.GetDirection()).reshape(4, 4)
        direction = tuple(float(v) for v in d4[:3, :3].ravel())
        spacing, origin = img.GetSpacing()[:3], img.GetOrigin()[:3]
    elif dim == 3:
        arr = sitk.GetArrayFromImage(img)
        direction, spacing, origin = img.GetDirection(), img.GetSpacing(), img.GetOrigin()
    else:
        raise UnsupportedImageError(where, f"{dim}D image of size {size}: not a 3D volume")
    if arr.shape[0] < 2:
        raise UnsupportedImageError(where, "2D image / single slice: not a 3D volume")
    return RawVolume(
        array=arr,
        spacing=tuple(float(v) for v in spacing),
        origin=tuple(float(v) for v in origin),
        direction=tuple(float(v) for v in direction),
        path=where,
        series_uid=uid,
        modality=modality,
        reader="simpleitk",
    )


class _QuietSitk:
    """Silences SimpleITK's own warnings (we log ours) for the duration."""

    def __enter__(self):
        import SimpleITK as sitk

        self._sitk = sitk
        self._old = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)

    def __exit__(self, *exc):
        self._sitk.ProcessObject.SetGlobalWarningDisplay(self._old)
        return False


def _read_sitk_series(s: SeriesInfo) -> RawVolume:
    import SimpleITK as sitk

    r = sitk.ImageSeriesReader()
    r.SetFileNames(list(s.files))
    try:
        with _QuietSitk():
            img = r.Execute()
    except RuntimeError as exc:
        # Name the file that fails (error path only: reads the files one by one).
        with _QuietSitk():
            for f in s.files:
                try:
                    sitk.ReadImage(f)
                except RuntimeError as exc1:
                    raise ImageReadError(f, _sitk_reason(exc1)) from None
        raise ImageReadError(s.folder, _sitk_reason(exc)) from None
    vol = _from_sitk(img, s.folder, s.uid, s.modality)
    if vol.array.shape != (len(s.files), s.rows, s.cols):
        raise UnsupportedImageError(
            s.folder,
            f"SimpleITK gave an array of shape {vol.array.shape}, expected "
            f"{(len(s.files), s.rows, s.cols)}",
        )
    return vol


def _read_sitk_file(f: str, uid: str, modality: str) -> RawVolume:
    import SimpleITK as sitk

    try:
        with _QuietSitk():
            img = sitk.ReadImage(f)
    except RuntimeError as exc:
        raise ImageReadError(f, _sitk_reason(exc)) from None
    return _from_sitk(img, f, uid, modality)
