"""Finding DICOM files and reading their headers.

A folder is walked recursively (symbolic links followed, loops not) and every
file's header is parsed by the compiled parser (pydicom when that parser gives
up before the pixel data). Non-DICOM files, DICOMDIR / directory records,
non-image objects and localizers are skipped and counted; what is left is
grouped into series by :mod:`.series`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

from .... import _core

if TYPE_CHECKING:
    import numpy as np
    from pydicom import Dataset

logger = logging.getLogger("neurovfm")

#: Media Storage Directory Storage (DICOMDIR and other directory records).
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

_LOOPS = "symbolic links not followed (a loop or a missing target)"


def _walk(root: str, loops: Optional[list[str]] = None) -> list[str]:
    """Regular files under root, recursively; symlinks followed, loops not (the
    symbolic links that loop or lead nowhere are appended to ``loops``)."""
    out: list[str] = []
    seen: set[tuple[int, int]] = set()
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
        subdirs: list[str] = []
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

    def __init__(self, ds: Dataset, has_pixels: bool) -> None:
        def get(name: str, default: Any) -> Any:
            v = ds.get(name, default)
            return default if v is None or v == "" else v

        def floats(name: str, n: int) -> Optional[tuple[float, ...]]:
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
        try:
            self.series_number = int(get("SeriesNumber", 0))
            self.has_series_number = "SeriesNumber" in ds
        except (TypeError, ValueError):
            self.series_number, self.has_series_number = 0, False
        self.has_pixel_data = has_pixels
        self.output_dtype: Optional[np.dtype[Any]] = None
        self.stored_dtype: Optional[np.dtype[Any]] = None


#: A file's header: the compiled parser's, or pydicom's when that parser gives up.
Header = Union[_core.DicomHeader, _PyHeader]


def _pydicom_header(path: str) -> Optional[_PyHeader]:
    try:
        import pydicom

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, defer_size=1024)
            return _PyHeader(ds, "PixelData" in ds)
    except Exception:  # pydicom raises many types on broken files
        return None


def _is_localizer(h: Header) -> bool:
    it = h.image_type.upper()
    return "LOCALIZER" in it and any(t.strip() == "LOCALIZER" for t in it.split("\\"))


def _scan_files(
    files: list[str], threads: int, others: list[tuple[str, Header, str]] | None = None
) -> tuple[list[tuple[str, Header]], Counter[str]]:
    """Headers of the image files, and counts of what was skipped and why (the files of
    localizers and non-image objects are also appended to ``others`` when given, with
    their header and ``"localizer"`` or ``"non-image"``)."""
    headers = _core.read_dicom_headers(files, threads)
    kept: list[tuple[str, Header]] = []
    skipped: Counter[str] = Counter()
    unreadable: list[tuple[str, str]] = []
    h: Header
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
            if others is not None:
                others.append((f, h, "non-image"))
            continue
        if _is_localizer(h):
            skipped["localizer"] += 1
            if others is not None:
                others.append((f, h, "localizer"))
            continue
        kept.append((f, h))
    for f, err in unreadable:
        logger.warning("skipping unreadable DICOM file %s: %s", f, err)
    return kept, skipped


def _common_folder(files: Sequence[str]) -> str:
    dirs = {os.path.dirname(f) for f in files}
    if len(dirs) == 1:
        return dirs.pop()
    try:
        return os.path.commonpath(list(dirs))
    except ValueError:
        return sorted(dirs)[0]
