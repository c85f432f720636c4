"""Where a scan's voxels come from, up to a :class:`~neurovfm.data.volume.RawVolume`
(voxels + geometry): :mod:`.nifti` (NIfTI-1, gzip by :mod:`.gzip`), :mod:`.dicom`
(files, series, the compiled and SimpleITK readers), :mod:`.other` (anything else
SimpleITK reads), :mod:`.memory` (arrays and images already in memory) and :mod:`.remote`
(fsspec URLs, staged). :func:`read` is the one dispatch from a source (a path, a URL, a
series :func:`~neurovfm.data.find_series` found, an image in memory) to the reader that
owns it."""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from ...errors import ImageNotFoundError, ImageReadError, InvalidArgumentError, InvalidTypeError
from ..volume import RawVolume
from . import dicom, memory, nifti, other, remote

if TYPE_CHECKING:
    from ..series import SeriesRecord

__all__ = ["check_exists", "read"]


def check_exists(path: str) -> None:
    """ImageNotFoundError for a missing path; ImageReadError for a symbolic link loop."""
    if os.path.exists(path):
        return
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ImageReadError(path, "symbolic link loop (too many levels of symbolic links)") from None
    raise ImageNotFoundError(2, f"{path}: no such file or directory", path)


def read(
    source: str | os.PathLike[str] | SeriesRecord | Any,
    series_uid: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> RawVolume:
    """Read a NIfTI file, DICOM file or series folder, or any SimpleITK format; one series
    :func:`~neurovfm.data.find_series` found (its files, without a second walk); a URL
    (:mod:`.remote`: staged, then read as the local file; ``storage_options`` for its
    filesystem); or take a volume already in memory (:mod:`.memory`: a
    ``SimpleITK.Image``, a nibabel image, a :class:`RawVolume`; a NumPy array needs its
    geometry: ``load_image``)."""
    from ..series import SeriesRecord as _Record

    if isinstance(source, RawVolume):
        return source
    if isinstance(source, sitk.Image):
        return memory.from_sitk(source)
    if memory.is_in_memory(source) and not isinstance(source, np.ndarray):
        return memory.from_nibabel(source)
    if isinstance(source, np.ndarray):
        raise InvalidArgumentError(
            "an array needs its geometry: load_image(array, spacing=(x, y, z), origin=..., direction=...)"
        )
    if isinstance(source, _Record):
        if source._info is not None:
            return dicom.read_series(source._info)
        if remote.is_url(source.path):  # a remote series: its own files, no listing
            with remote.staged(source.path, storage_options, files=source.files or None) as local:
                vol = read(local, source.series_uid or None)
            vol.path = source.path
            return vol
        return read(source.path, source.series_uid or None)
    if remote.is_url(source):
        with remote.staged(source, storage_options) as local:
            vol = read(local, series_uid)
        vol.path = source
        return vol
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidTypeError(
            "expected a path, a SimpleITK or nibabel image, or a NumPy array with its geometry; "
            f"got {type(source).__name__}"
        )
    path = os.fspath(source)
    check_exists(path)
    if not os.access(path, os.R_OK):
        raise ImageReadError(path, "permission denied")
    if nifti.is_nifti(path) and os.path.isfile(path):
        return nifti.read_nifti(path)
    if os.path.isdir(path) or dicom.is_dicom_file(path):
        return dicom.read_dicom(path, series_uid=series_uid)
    if os.path.getsize(path) == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    return other.read_with_sitk(path)
