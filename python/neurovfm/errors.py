"""The library's exception types.

Each derives from the builtin exception users already catch, so
``except ValueError`` and ``except FileNotFoundError`` keep working.
"""

from __future__ import annotations

import os

__all__ = [
    "NeuroVFMError",
    "ImageNotFoundError",
    "ImageReadError",
    "UnsupportedImageError",
    "DicomSeriesError",
    "ImageTooSmallError",
    "StackedSliceError",
]


class NeuroVFMError(Exception):
    """Base class of every error raised by neurovfm."""


class ImageNotFoundError(NeuroVFMError, FileNotFoundError):
    """The path does not exist."""


class ImageReadError(NeuroVFMError, ValueError):
    """The file exists but cannot be read as an image."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnsupportedImageError(ImageReadError):
    """The file is an image, but not a 3D scalar volume (colour, 2D, 4D, sheared...)."""


class DicomSeriesError(ImageReadError):
    """A DICOM folder holds no usable series, or the chosen series is inconsistent."""


class ImageTooSmallError(ImageReadError):
    """The volume is too small to resample to the target grid."""


class StackedSliceError(DicomSeriesError, UnsupportedImageError):
    """Every file of a DICOM series holds the same slice (one position, several copies).

    Both a broken series (:class:`DicomSeriesError`) and a 2D image rather than a
    volume (:class:`UnsupportedImageError`).
    """
