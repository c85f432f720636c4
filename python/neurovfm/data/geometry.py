"""Where the model's voxels and tokens lie in the patient, and NIfTI files of them.

The pipeline (``load_image`` then ``prepare_for_inference``) gives arrays ``[D, H, W]``
that are the preprocessed SimpleITK image's array ``(z, y, x)`` transposed by
``view_axes(view)``; no axis is flipped. :class:`OutputGeometry` records that grid
(spacing, origin, direction of the resampled, cropped image) and which image axis each
array axis is, so a voxel or a token maps to patient coordinates (LPS, in mm, as
SimpleITK), and the arrays can be written as NIfTI files that overlay the original scan
(:func:`write_nifti_outputs`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from ._files import TMP_TAG, atomic_write
from ..errors import InvalidArgumentError, InvalidTypeError
from .preprocess import CT_WINDOWS, _check_mode, view_axes

__all__ = [
    "OutputGeometry",
    "output_geometry",
    "grid_geometry",
    "voxel_to_patient",
    "token_to_patient",
    "write_nifti_outputs",
    "TOKEN_SHAPE",
]

#: Token size in voxels of the ``[D, H, W]`` array.
TOKEN_SHAPE = (4, 16, 16)


@dataclass(frozen=True)
class OutputGeometry:
    """The grid of the model-input arrays ``[D, H, W]``.

    ``spacing``, ``origin`` and ``direction`` (9 values, row-major) are those of the
    preprocessed SimpleITK image, in its ``(x, y, z)`` order. ``axes[k]`` is the image's
    index axis (0 = x, 1 = y, 2 = z) that array axis ``k`` (D, H, W) runs along,
    reversed when ``flips[k]`` (never, in this pipeline). ``shape`` is ``(D, H, W)``.
    """

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    axes: tuple[int, int, int]
    shape: tuple[int, int, int]
    flips: tuple[bool, bool, bool] = (False, False, False)

    def __post_init__(self) -> None:
        if sorted(self.axes) != [0, 1, 2]:
            raise InvalidArgumentError(f"axes must be a permutation of (0, 1, 2), got {self.axes!r}")
        if len(self.direction) != 9:
            raise InvalidArgumentError(f"direction must hold 9 values, got {len(self.direction)}")

    @property
    def size(self) -> tuple[int, int, int]:
        """The image's size in SimpleITK ``(x, y, z)`` order."""
        out = [0, 0, 0]
        for k, a in enumerate(self.axes):
            out[a] = self.shape[k]
        return (out[0], out[1], out[2])

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """Tokens per array axis: ``(D/4, H/16, W/16)``."""
        return (
            self.shape[0] // TOKEN_SHAPE[0],
            self.shape[1] // TOKEN_SHAPE[1],
            self.shape[2] // TOKEN_SHAPE[2],
        )

    def to_sitk_order(self, arr: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """A ``[D, H, W]`` array as the image's array ``(z, y, x)`` (a view)."""
        if arr.shape != self.shape:
            raise InvalidArgumentError(f"array of shape {arr.shape} does not match the geometry's {self.shape}")
        flipped = arr[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]
        # NumPy axis n of the image's array is image axis 2 - n.
        out: npt.NDArray[Any] = flipped.transpose([self.axes.index(2 - n) for n in range(3)])
        return out

    def item(
        self,
        start: Sequence[int],
        size: Sequence[int],
        transpose: bool = False,
        flips: Sequence[bool] = (False, False, False),
    ) -> OutputGeometry:
        """The grid of a part of these arrays, as :class:`~neurovfm.datasets.ImageDataset`
        makes an item: the token box ``start``, ``size`` (in tokens along D, H, W; the
        item's ``crop``), then H and W swapped when ``transpose``, then the D, H, W axes
        of the result reversed where ``flips``. Voxel ``(d, h, w)`` of the item's array
        lies where this method's geometry says (:func:`voxel_to_patient`)."""
        try:  # unpacked into plain ints and floats: this runs once per dataset item
            s0, s1, s2 = (int(v) for v in start)
            n0, n1, n2 = (int(v) for v in size)
            f0, f1, f2 = (bool(v) for v in flips)
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                f"start, size and flips need 3 values (d, h, w), got {start!r}, {size!r}, {flips!r}"
            ) from None
        e0, e1, e2 = self.shape
        if not (0 <= s0 < s0 + n0 <= e0 // 4 and 0 <= s1 < s1 + n1 <= e1 // 16 and 0 <= s2 < s2 + n2 <= e2 // 16):
            raise InvalidArgumentError(
                f"token box start {(s0, s1, s2)} size {(n0, n1, n2)} is not inside the {self.token_grid} token grid"
            )
        v0, v1, v2 = 4 * n0, 16 * n1, 16 * n2  # the box in voxels; it starts at 4 s0, 16 s1, 16 s2
        a0, a1, a2 = self.axes
        g0, g1, g2 = self.flips
        # image index (x, y, z) of the box's first voxel, in the image's own order
        index = [0, 0, 0]
        index[a0] = e0 - 4 * s0 - v0 if g0 else 4 * s0
        index[a1] = e1 - 16 * s1 - v1 if g1 else 16 * s1
        index[a2] = e2 - 16 * s2 - v2 if g2 else 16 * s2
        sp, dr, org = self.spacing, self.direction, self.origin
        i0, i1, i2 = sp[0] * index[0], sp[1] * index[1], sp[2] * index[2]
        origin = (
            org[0] + dr[0] * i0 + dr[1] * i1 + dr[2] * i2,
            org[1] + dr[3] * i0 + dr[4] * i1 + dr[5] * i2,
            org[2] + dr[6] * i0 + dr[7] * i1 + dr[8] * i2,
        )
        if transpose:
            a1, a2, v1, v2, g1, g2 = a2, a1, v2, v1, g2, g1
        return OutputGeometry(sp, origin, dr, (a0, a1, a2), (v0, v1, v2), (g0 != f0, g1 != f1, g2 != f2))

    def as_dict(self) -> dict[str, Any]:
        """Plain lists (JSON, ``.npz``): ``spacing``, ``origin``, ``direction``, ``axes``,
        ``shape``, ``flips``; :meth:`from_dict` reads them back."""
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
            "axes": list(self.axes),
            "shape": list(self.shape),
            "flips": list(self.flips),
        }

    @classmethod
    def from_dict(cls, d: Any) -> OutputGeometry:
        """The geometry of :meth:`as_dict`'s keys in a mapping, e.g. a loaded ``neurovfm
        prepare`` output (``np.load(path)``, ``torch.load(path)``), whose ``size`` (the token
        grid) stands in for ``shape``."""

        def vals(key: str, n: int) -> list[float]:
            try:
                v = np.asarray(d[key], np.float64).ravel()
            except KeyError:
                raise InvalidArgumentError(f"no {key!r} in the geometry's mapping") from None
            if v.size != n:
                raise InvalidArgumentError(f"{key!r} must hold {n} values, got {v.size}")
            return [float(x) for x in v]

        if "shape" in d:
            shape = [int(x) for x in vals("shape", 3)]
        elif "size" in d:
            shape = [int(x) * t for x, t in zip(vals("size", 3), TOKEN_SHAPE)]
        else:
            raise InvalidArgumentError("no 'shape' (or token grid 'size') in the geometry's mapping")
        sp, org, ax = vals("spacing", 3), vals("origin", 3), [int(x) for x in vals("axes", 3)]
        fl = [bool(x) for x in vals("flips", 3)] if "flips" in d else [False, False, False]
        return cls(
            spacing=(sp[0], sp[1], sp[2]),
            origin=(org[0], org[1], org[2]),
            direction=tuple(vals("direction", 9)),
            axes=(ax[0], ax[1], ax[2]),
            shape=(shape[0], shape[1], shape[2]),
            flips=(fl[0], fl[1], fl[2]),
        )

    def image(self, arr: npt.NDArray[Any]) -> sitk.Image:
        """A SimpleITK image of a ``[D, H, W]`` array on this grid."""
        img = sitk.GetImageFromArray(np.ascontiguousarray(self.to_sitk_order(arr)))
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img


def output_geometry(img_sitk: sitk.Image, view: int) -> OutputGeometry:
    """The :class:`OutputGeometry` of ``prepare_for_inference(img_sitk, mode)``'s arrays,
    ``img_sitk`` the preprocessed image (``load_image``) and ``view`` the view it returned."""
    if not isinstance(img_sitk, sitk.Image):
        raise InvalidTypeError(f"img_sitk must be a SimpleITK.Image, got {type(img_sitk).__name__}")
    if img_sitk.GetDimension() != 3:
        raise InvalidArgumentError(f"expected a 3D image, got {img_sitk.GetDimension()}D")
    if isinstance(view, bool) or view not in (0, 1, 2):
        raise InvalidArgumentError(f"view must be 0, 1 or 2, got {view!r}")
    zyx = img_sitk.GetSize()[::-1]
    t = view_axes(view)
    shape = (zyx[t[0]], zyx[t[1]], zyx[t[2]])
    return grid_geometry(img_sitk.GetSpacing(), img_sitk.GetOrigin(), img_sitk.GetDirection(), view, shape)


def grid_geometry(
    spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float], view: int, shape: Sequence[int]
) -> OutputGeometry:
    """:func:`output_geometry` from the preprocessed image's spacing, origin and direction
    (its ``(x, y, z)`` order), the ``view`` and the arrays' ``[D, H, W]`` shape, as a cache
    entry's sidecar records them."""
    if isinstance(view, bool) or view not in (0, 1, 2):
        raise InvalidArgumentError(f"view must be 0, 1 or 2, got {view!r}")
    # view_axes(view)[k] is the NumPy axis of array axis k; NumPy axis n is image axis 2 - n.
    t = view_axes(view)
    sp = [float(v) for v in spacing]
    org = [float(v) for v in origin]
    return OutputGeometry(
        spacing=(sp[0], sp[1], sp[2]),
        origin=(org[0], org[1], org[2]),
        direction=tuple(float(d) for d in direction),
        axes=(2 - t[0], 2 - t[1], 2 - t[2]),
        shape=(int(shape[0]), int(shape[1]), int(shape[2])),
    )


def voxel_to_patient(
    geom: OutputGeometry, d: npt.ArrayLike, h: npt.ArrayLike, w: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Patient coordinates (LPS, mm, as SimpleITK) of voxel ``(d, h, w)`` of the ``[D, H, W]``
    array: shape ``(..., 3)`` for broadcastable arrays (``(3,)`` for scalars). Fractional
    indices are continuous indices (0 = the voxel's centre)."""
    dhw = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (d, h, w)))
    index = np.zeros((*dhw[0].shape, 3), np.float64)
    for k, a in enumerate(geom.axes):
        v = dhw[k]
        index[..., a] = (geom.shape[k] - 1) - v if geom.flips[k] else v
    m = np.asarray(geom.direction, np.float64).reshape(3, 3) * np.asarray(geom.spacing, np.float64)[None, :]
    out: npt.NDArray[np.float64] = index @ m.T + np.asarray(geom.origin, np.float64)
    return out


def token_to_patient(
    geom: OutputGeometry, d: npt.ArrayLike, h: npt.ArrayLike, w: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Patient coordinates (LPS, mm) of the centre of token ``(d, h, w)``, the 4x16x16 block
    ``[4d:4d+4, 16h:16h+16, 16w:16w+16]`` of the ``[D, H, W]`` array (token ``n`` of the
    raster order is ``np.unravel_index(n, geom.token_grid)``); vectorised like
    :func:`voxel_to_patient`."""
    centre = [np.asarray(v, dtype=np.float64) * n + (n - 1) / 2.0 for v, n in zip((d, h, w), TOKEN_SHAPE, strict=True)]
    return voxel_to_patient(geom, *centre)


def _atomic_write(img: sitk.Image, path: str) -> None:
    """``sitk.WriteImage`` (compressed) to a temporary name in the same folder, then rename."""
    atomic_write(path, lambda tmp: sitk.WriteImage(img, tmp, True), TMP_TAG + ".nii.gz")


def _volume(arr: npt.ArrayLike, shape: tuple[int, int, int]) -> npt.NDArray[np.float32]:
    a = np.asarray(arr)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.shape != shape:
        raise InvalidArgumentError(f"volume of shape {np.shape(arr)} does not match the geometry's [D, H, W] {shape}")
    if a.dtype == np.uint8:  # prepare_for_inference(quantize=True): u / 255, as the cache loads it
        return (a.astype(np.float32) / np.float32(255)).astype(np.float32)
    return a.astype(np.float32, copy=False)


def write_nifti_outputs(
    arrays: Sequence[npt.ArrayLike],
    token_background: npt.ArrayLike,
    geom: OutputGeometry,
    out_prefix: str | os.PathLike[str],
    mode: str,
) -> list[str]:
    """Write the model-input volumes and the token background mask as ``.nii.gz`` files on
    the preprocessed grid (they overlay the original scan in any NIfTI viewer).

    ``arrays``: ``prepare_for_inference``'s volumes (``[1, D, H, W]`` or ``[D, H, W]``;
    float32, or uint8 from ``quantize=True``, written as ``u / 255``). CT writes
    ``<out_prefix>_brain.nii.gz``, ``_blood``, ``_bone``; MRI ``<out_prefix>.nii.gz``; both
    float32 in ``[0, 1]``. ``token_background`` (``[N]``) is written upsampled to voxels as
    ``<out_prefix>_mask.nii.gz`` (uint8, 1 = background). Each file is written to a
    temporary name in its folder, then renamed. Returns the paths, volumes first, mask last.
    """
    m = _check_mode(mode)
    names = [f"_{name}" for name, _, _ in CT_WINDOWS] if m == "ct" else [""]
    if len(arrays) != len(names):
        raise InvalidArgumentError(f"mode {m!r} has {len(names)} volume(s), got {len(arrays)}")
    vols = [_volume(a, geom.shape) for a in arrays]
    grid = geom.token_grid
    flags = np.asarray(token_background)
    if flags.ndim != 1 or flags.shape[0] != grid[0] * grid[1] * grid[2]:
        raise InvalidArgumentError(
            f"token_background of shape {flags.shape} does not match the {grid} token grid ({grid[0] * grid[1] * grid[2]} tokens)"
        )
    if any(s % t for s, t in zip(geom.shape, TOKEN_SHAPE, strict=True)):
        raise InvalidArgumentError(f"[D, H, W] {geom.shape} is not a whole number of 4x16x16 tokens")
    mask = (flags.reshape(grid) != 0).astype(np.uint8)
    for k, t in enumerate(TOKEN_SHAPE):
        mask = np.repeat(mask, t, axis=k)
    prefix = os.fspath(out_prefix)
    folder = os.path.dirname(prefix)
    if folder:
        os.makedirs(folder, exist_ok=True)
    paths: list[str] = []
    for name, vol in zip(names, vols, strict=True):
        path = f"{prefix}{name}.nii.gz"
        _atomic_write(geom.image(vol), path)
        paths.append(path)
    path = f"{prefix}_mask.nii.gz"
    _atomic_write(geom.image(mask), path)
    paths.append(path)
    return paths
