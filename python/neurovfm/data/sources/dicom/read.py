"""DICOM series discovery, choice, ordering and reading.

A folder (walked recursively) or a single file is scanned with the compiled
header parser; files are grouped by SeriesInstanceUID (by folder when the UID
is blank), each group is split by geometry (orientation, rows, columns, pixel
spacing), and the slices of each group are ordered along the slice normal as
GDCM/SimpleITK order them. :func:`read_dicom` picks the series with the most
slices (or the one named by ``series_uid=``) and reads it:

- single-frame series stored uncompressed little endian, or compressed in RLE
  Lossless, JPEG Lossless (process 14), JPEG-LS, JPEG 2000 or 8-bit lossy JPEG,
  are read by the compiled reader (multithreaded, one file or frame a task, GIL
  released; the libraries a syntax needs are those the build found); voxels,
  pixel type and geometry are exactly those of ``SimpleITK.ImageSeriesReader`` on
  the same file list (lossless syntaxes bit for bit, lossy within one grey level);
- anything else (other compressions, big endian, deflate, enhanced multi-frame,
  exotic pixel layouts) is read by SimpleITK, with its errors turned into the
  library's; a compressed series that goes this way is named in a log line.

Nothing is ever picked or stacked silently when that would be wrong: a single
slice, colour images, slices stacked at the same position or a series whose
files cannot be read raise the library's exceptions naming the path and reason.

Finding the files and reading their headers is :mod:`.discovery`; grouping, ordering
and checking the series is :mod:`.series`. This module chooses a series and reads it.
Which series of a study count, and why not, is :func:`neurovfm.data.find_series`.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Optional, cast

import numpy as np

from .... import _core
from ...._threads import get_num_threads
from ....errors import (
    DicomSeriesError,
    StackedSliceError,
    ImageReadError,
    UnsupportedImageError,
)
from ...volume import RawVolume
from .discovery import _LOOPS
from .series import SeriesInfo, _check_geometry, _scan, is_derived

if TYPE_CHECKING:
    import SimpleITK as sitk

__all__ = [
    "RawVolume",
    "SeriesInfo",
    "StackedSliceError",
    "is_dicom_file",
    "read_dicom",
    "read_series",
]

logger = logging.getLogger("neurovfm")

_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())


# ---------------------------------------------------------------------------
# Cheap detection


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` looks like a DICOM file by content (not by name).

    Checks "DICM" at byte 128, or a plausible dataset start without preamble
    (a first element in group 0x0002 or 0x0008 whose length fits in the file).
    Reads at most 132 bytes; never raises.
    """
    length: int
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
# Reading


def _describe(s: SeriesInfo) -> str:
    desc = f" '{s.description}'" if s.description else ""
    return f"{s.uid or '<no uid>'}{desc} ({s.modality or '?'}, {s.n_slices} slices, {s.rows}x{s.cols})"


def _nothing_found(p: str, files: list[str], skipped: Counter[str]) -> ImageReadError:
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


def read_dicom(path: str | os.PathLike[str], series_uid: Optional[str] = None) -> RawVolume:
    """Read a DICOM series (a folder or a single file) as a 3D volume.

    Chooses the readable series with the most slices of one geometry, an acquisition
    before any derived/secondary series (the ``derived='auto'`` rule of
    :func:`~neurovfm.data.find_series`; logged on the ``neurovfm`` logger), or the
    series whose SeriesInstanceUID is ``series_uid``. Raises :class:`~neurovfm.errors.ImageNotFoundError` for a
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
            raise DicomSeriesError(p, f"no series with SeriesInstanceUID {series_uid!r}; available: {avail}")
    else:
        cands = series
    # the derived policy's default ('auto'): an acquisition before any derived/secondary series
    usable = sorted((s for s in cands if s.usable), key=_derived_info)
    if not usable:
        worst = cands[0]  # the largest
        if os.path.isfile(p):
            hint = " (to read a series, pass its folder)" if worst._kind == "single slice" else ""
            raise worst._error(p, cast(str, worst.problem) + hint)  # not usable: a problem
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


def _derived_info(s: SeriesInfo) -> bool:
    return bool(s._headers) and is_derived(str(getattr(s._headers[0], "image_type", "") or ""))


def read_series(series: SeriesInfo, path: Optional[str] = None) -> RawVolume:
    """Read one :class:`SeriesInfo` from :func:`~.series.scan_series` (or a :class:`~neurovfm.data.SeriesRecord`) as a 3D volume."""
    where = path if path is not None else series._where()
    if not series.usable:
        series._raise(series._where())
    _check_geometry(series)
    if series.multiframe:
        vol = _read_sitk_file(series.files[0], series.uid, series.modality)
    elif series.fast_path:
        vol = _read_fast(series)
    else:
        why = _not_decoded(series)
        if why:
            logger.info("%s: %s; reading it with SimpleITK", where, why)
        vol = _read_sitk_series(series)
    vol.path = where
    return vol


def _not_decoded(s: SeriesInfo) -> Optional[str]:
    """Why the compiled reader leaves a compressed series to SimpleITK (None when the
    series is not compressed, or is left to it for another reason)."""
    for h in s._headers:
        ts = h.transfer_syntax
        if ts in _NATIVE_SYNTAXES or not (h.encapsulated or ts == _DEFLATED):
            continue
        if isinstance(h, _core.DicomHeader) and h.compressed_readable:
            continue
        name, reason = _core.dicom_codec_status(ts, h.bits_stored)
        if ts == _DEFLATED:
            name, reason = "Deflated Explicit VR Little Endian", "not decoded by the compiled reader"
        return f"compressed pixel data ({name or ts}, transfer syntax {ts}): {reason}"
    return None


_NATIVE_SYNTAXES = frozenset({"", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})
_DEFLATED = "1.2.840.10008.1.2.1.99"


def _direction(iop: Sequence[float]) -> tuple[float, ...]:
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
    # A fast series: every header is the compiled parser's, with an output dtype.
    hs = cast("list[_core.DicomHeader]", list(s._headers))
    h0 = hs[0]
    dtype = cast("np.dtype[Any]", h0.output_dtype)
    # A file the reader cannot use raises ImageReadError(that file, reason) from the
    # bindings themselves (cpp/bindings/bind_errors.cpp maps the kernels' exceptions).
    try:
        arr = _core.read_dicom_pixels(list(s.files), hs, dtype, get_num_threads())
    except MemoryError:
        shape = (len(s.files), s.rows, s.cols)
        raise ImageReadError(s.folder, f"not enough memory for a volume of {shape} voxels") from None
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


def _from_sitk(img: sitk.Image, where: str, uid: str, modality: str) -> RawVolume:
    import SimpleITK as sitk

    if img.GetNumberOfComponentsPerPixel() != 1:
        raise UnsupportedImageError(
            where,
            f"colour / multi-component image ({img.GetNumberOfComponentsPerPixel()} components): not a scalar volume",
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

    def __enter__(self) -> None:
        import SimpleITK as sitk

        self._sitk = sitk
        self._old = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)

    def __exit__(self, *exc: object) -> Literal[False]:
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
            f"SimpleITK gave an array of shape {vol.array.shape}, expected {(len(s.files), s.rows, s.cols)}",
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
