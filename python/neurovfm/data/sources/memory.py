"""Volumes already in memory: a NumPy array with its geometry, a ``SimpleITK.Image`` or a
nibabel image, as a :class:`~neurovfm.data.volume.RawVolume` (no file written, no copy of
an array the kernels can read as it is).

The array's axes are SimpleITK's NumPy order ``[z, y, x]`` (``SimpleITK.GetArrayFromImage``;
the slowest axis is the image's third axis), and the geometry is SimpleITK's: ``spacing``
and ``origin`` in ``(x, y, z)`` order (mm, LPS), ``direction`` the 3x3 matrix whose columns
are the image axes, row-major. A nibabel image is read exactly as its NIfTI file would be
(its header and voxels, through the library's NIfTI reader), so the result is the file's.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from ...errors import InvalidArgumentError, InvalidTypeError
from ..volume import SUPPORTED_PIXEL_IDS, RawVolume, check_scalar_3d, squeeze_4d

__all__ = ["ARRAY_NAME", "from_array", "from_nibabel", "from_sitk", "is_in_memory"]

#: What errors and outputs call an in-memory volume (it has no path).
ARRAY_NAME = "<in-memory array>"
_DTYPES = frozenset(SUPPORTED_PIXEL_IDS.values())
#: Orthonormality tolerance of a direction matrix (SimpleITK's own check is about 1e-6
#: relative; a matrix off by more is a shear or a typo, never rounding).
_ORTHO_TOL = 1e-4


def _is_nibabel(obj: object) -> bool:
    return type(obj).__module__.startswith("nibabel.") and hasattr(obj, "to_bytes") and hasattr(obj, "header")


def is_in_memory(obj: object) -> bool:
    """True for what :func:`neurovfm.data.load_image` takes as an in-memory volume."""
    return isinstance(obj, (np.ndarray, sitk.Image, RawVolume)) or _is_nibabel(obj)


def _triple(value: object, name: str, positive: bool) -> tuple[float, float, float]:
    try:
        v = tuple(float(x) for x in np.asarray(value, dtype=np.float64).ravel())
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be 3 numbers (x, y, z), got {value!r}") from None
    if len(v) != 3 or isinstance(value, (str, bytes)):
        raise InvalidArgumentError(f"{name} must be 3 numbers (x, y, z), got {value!r}")
    if not all(math.isfinite(x) for x in v) or (positive and min(v) <= 0):
        what = "positive finite" if positive else "finite"
        raise InvalidArgumentError(f"{name} must be 3 {what} numbers (x, y, z), got {v}")
    return v[0], v[1], v[2]


def _direction(value: object) -> tuple[float, ...]:
    if value is None:
        return (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"direction must be 9 numbers (a 3x3 matrix, row-major), got {value!r}") from None
    if m.size != 9 or m.ndim not in (1, 2) or (m.ndim == 2 and m.shape != (3, 3)):
        raise InvalidArgumentError(f"direction must be 9 numbers (a 3x3 matrix, row-major), got shape {m.shape}")
    m = m.reshape(3, 3)
    if not np.all(np.isfinite(m)) or not np.allclose(m.T @ m, np.eye(3), atol=_ORTHO_TOL):
        raise InvalidArgumentError(
            "direction must be orthonormal (a rotation, possibly with flips: columns of length 1 at right "
            f"angles); got {m.tolist()}"
        )
    return tuple(float(x) for x in m.ravel())


def from_array(
    array: npt.NDArray[Any],
    spacing: Sequence[float] | None,
    origin: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    name: str = ARRAY_NAME,
) -> RawVolume:
    """A NumPy ``[z, y, x]`` volume with SimpleITK's geometry (``spacing`` is required;
    ``origin`` defaults to 0, ``direction`` to the identity). The array is used as it is
    (any strides; not copied); its dtype must be one the kernels read (8, 16 or 32-bit
    integers, float32, float64, native byte order)."""
    if not isinstance(array, np.ndarray):
        raise InvalidTypeError(f"expected a NumPy array, got {type(array).__name__}")
    if array.ndim != 3:
        raise InvalidArgumentError(
            f"{name}: expected a 3D array [z, y, x] (SimpleITK's NumPy order), got {array.ndim}D of shape {array.shape}"
        )
    if array.dtype not in _DTYPES:
        hint = " (use .astype(np.dtype(...).newbyteorder('=')))" if not array.dtype.isnative else ""
        raise InvalidArgumentError(
            f"{name}: dtype {array.dtype} is not supported: use uint8, int8, uint16, int16, uint32, int32, "
            f"float32 or float64{hint}"
        )
    if spacing is None:
        raise InvalidArgumentError(
            f"{name}: spacing=(x, y, z) in mm is required with an array (it decides the slice axis and the grid)"
        )
    sp = _triple(spacing, "spacing", positive=True)
    org = _triple(origin if origin is not None else (0.0, 0.0, 0.0), "origin", positive=False)
    size = tuple(int(s) for s in reversed(array.shape))
    check_scalar_3d(name, 3, size, 1, next(k for k, v in SUPPORTED_PIXEL_IDS.items() if v == array.dtype))
    return RawVolume(array, sp, org, _direction(direction), name, reader="memory")


def from_sitk(img: sitk.Image, name: str = "<in-memory SimpleITK image>") -> RawVolume:
    """A ``SimpleITK.Image`` (3D scalar, or 4D with a last axis of 1) without copying it."""
    check_scalar_3d(name, img.GetDimension(), img.GetSize(), img.GetNumberOfComponentsPerPixel(), img.GetPixelID())
    return RawVolume.from_image(squeeze_4d(img), name)


def _nifti_bytes(img: Any) -> bytes:
    """The single-file NIfTI bytes of a nibabel image. An image whose voxels are still
    those of its file (an array proxy) is written with its own header and its stored
    values (its scaling, datatype and byte order kept, extensions dropped), so the
    result is its file's; an image built from an array is written as nibabel writes it."""
    proxy = img.dataobj  # nibabel's ArrayProxy (the file's voxels), or an array
    if not hasattr(proxy, "get_unscaled") or int(img.header.sizeof_hdr) != 348:
        return cast(bytes, img.to_bytes())
    hdr = img.header.copy()
    hdr.set_data_offset(352)
    hdr["magic"] = b"n+1"
    # nibabel moves a file's scaling from the image's header into the proxy: put it back
    hdr.set_slope_inter(getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0))
    raw = np.asarray(proxy.get_unscaled()).astype(hdr.get_data_dtype(), copy=False)
    return cast(bytes, hdr.binaryblock) + b"\0\0\0\0" + raw.tobytes(order="F")


def from_nibabel(img: Any) -> RawVolume:
    """A nibabel NIfTI image, read exactly as its file would be: its bytes (header and
    voxels) through the library's NIfTI reader, from a temporary file that is removed at
    once (SimpleITK parses NIfTI headers from files only). The result is ``load_image`` of
    the file the image came from."""
    from .nifti import read_nifti

    header = getattr(img, "header", None)
    sizeof = getattr(header, "sizeof_hdr", None) if header is not None else None
    if sizeof not in (348, 540):
        raise InvalidTypeError(f"expected a nibabel NIfTI image (Nifti1Image or Nifti2Image), got {type(img).__name__}")
    fd, tmp = tempfile.mkstemp(prefix=".neurovfm-nibabel.", suffix=".nii")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_nifti_bytes(img))
        vol = read_nifti(tmp)  # the voxels are decoded into memory: the file can go
        vol.path = "<in-memory nibabel image>"
        return vol
    finally:
        os.unlink(tmp)
