"""RawVolume: voxels plus geometry, the currency between the sources (:mod:`neurovfm.data.sources`) and the kernels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from ..errors import ImageReadError, UnsupportedImageError

__all__ = ["RawVolume", "SUPPORTED_PIXEL_IDS", "check_finite", "check_scalar_3d", "squeeze_4d"]


@dataclass
class RawVolume:
    """A 3D scalar volume as read from disk.

    ``array`` is in NumPy axis order ``(z, y, x)``, exactly as
    ``SimpleITK.GetArrayFromImage`` would give it (it may be a read-only view of
    a decoded buffer). ``spacing``, ``origin`` and ``direction`` follow SimpleITK
    (x, y, z order; direction row-major, columns are the image axes).
    """

    array: npt.NDArray[Any]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    path: str = ""
    series_uid: str | None = None
    modality: str = ""
    #: Which reader decoded the voxels: "fast" (neurovfm's own) or "simpleitk".
    reader: str = ""
    # Keeps alive whatever owns the memory behind ``array`` (e.g. a sitk.Image).
    owner: Any = field(default=None, repr=False)

    @classmethod
    def from_image(cls, img: sitk.Image, path: str = "") -> "RawVolume":
        """Wrap a SimpleITK image without copying its voxels."""
        arr = sitk.GetArrayViewFromImage(img)
        return cls(arr, img.GetSpacing(), img.GetOrigin(), img.GetDirection(), str(path), reader="simpleitk", owner=img)

    def to_image(self) -> sitk.Image:
        """A SimpleITK image with this geometry (copies the voxels once)."""
        if isinstance(self.owner, sitk.Image):
            return self.owner
        img = sitk.GetImageFromArray(self.array)
        img.SetSpacing(tuple(float(s) for s in self.spacing))
        img.SetOrigin(tuple(float(o) for o in self.origin))
        img.SetDirection(tuple(float(d) for d in self.direction))
        return img

    to_sitk = to_image


def check_finite(arr: npt.NDArray[Any], path: str) -> None:
    """Raise ImageReadError naming ``path`` for NaN/Inf voxels: the B-spline would spread
    them over their neighbours and the intensity windows would pass them on, so the
    result would be silently wrong.
    (A float64 sum is non-finite exactly when a voxel is, for any float32 volume.)"""
    with np.errstate(invalid="ignore", over="ignore"):
        total = arr.sum(dtype=np.float64)
    if not np.isfinite(total):
        n = int(np.count_nonzero(~np.isfinite(arr)))
        if n == 0:  # finite float64 values whose sum overflows
            return
        raise ImageReadError(
            path, f"{n} non-finite (NaN or Inf) voxels: resampled and normalised values would be undefined"
        )


# SimpleITK pixel ids the kernels accept, with their numpy dtype.
SUPPORTED_PIXEL_IDS: dict[int, np.dtype[Any]] = {
    sitk.sitkUInt8: np.dtype("u1"),
    sitk.sitkInt8: np.dtype("i1"),
    sitk.sitkUInt16: np.dtype("u2"),
    sitk.sitkInt16: np.dtype("i2"),
    sitk.sitkUInt32: np.dtype("u4"),
    sitk.sitkInt32: np.dtype("i4"),
    sitk.sitkFloat32: np.dtype("f4"),
    sitk.sitkFloat64: np.dtype("f8"),
}


def check_scalar_3d(path: str, dimension: int, size: Sequence[int], components: int, pixel_id: int) -> None:
    """Raise the library's error unless this describes a 3D scalar volume."""
    if components != 1:
        raise UnsupportedImageError(
            path, f"colour or multi-component image ({components} components per voxel); a scalar volume is required"
        )
    size = tuple(int(s) for s in size)
    if dimension == 4 and size[3] == 1:
        size = size[:3]
    elif dimension == 4:
        raise UnsupportedImageError(path, f"true 4D image of size {size}; a single 3D volume is required")
    elif dimension > 4:
        raise UnsupportedImageError(path, f"{dimension}D image; a 3D volume is required")
    if dimension == 2:
        raise UnsupportedImageError(path, f"2D image of size {size}; a 3D volume is required")
    if any(s == 1 for s in size):
        raise UnsupportedImageError(path, f"single slice (size {size}); a 3D volume is required")
    if any(s == 0 for s in size):
        raise UnsupportedImageError(path, f"empty image (size {size})")
    if pixel_id not in SUPPORTED_PIXEL_IDS:
        raise UnsupportedImageError(path, f"pixel type {sitk.GetPixelIDValueAsString(pixel_id)} is not supported")


def squeeze_4d(img: sitk.Image) -> sitk.Image:
    if img.GetDimension() == 4:
        size = list(img.GetSize())
        size[3] = 0
        img = sitk.Extract(img, size, [0, 0, 0, 0], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
    return img
