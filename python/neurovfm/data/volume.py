"""RawVolume: voxels plus geometry, the currency between readers and kernels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from ..errors import ImageReadError

__all__ = ["RawVolume", "check_finite"]


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
