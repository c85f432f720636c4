"""A built-in synthetic head phantom, for demos, tests and benchmarks.

The anatomy is one analytic model in patient space (millimetres, LPS: +x left,
+y posterior, +z superior): scalp (skin, fat, galea), a skull with outer and
inner tables around a diploe, subarachnoid CSF, a folded cortex over white
matter, deep grey nuclei, the ventricles, the interhemispheric fissure and
falx, a small haemorrhage with an oedema rim, and a neck with a vertebra.
Each modality paints it with its own tissue values, with partial-volume edges
about one voxel wide, and adds its own noise:

- :func:`make_ct_phantom`: an axial CT in HU (int16, LPS direction);
- :func:`make_mri_phantom`: a sagittal T1-like MR (uint16, Rician noise, a
  mild bias field, a non-identity, slightly oblique direction).

The voxels are computed from the physical position of each voxel, so a
phantom can be made at any size, spacing and direction (the benchmark makes a
512x512x300 CT from the same model). Everything is seeded: the same arguments
give the same image, bit for bit. Only NumPy, SimpleITK and pydicom are used.

:func:`write_phantoms` writes the CT as NIfTI and as a DICOM series, and the MR
as NIfTI, so that every reading path of :func:`neurovfm.data.load_image` runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

# The head model lives in _phantom_anatomy; _render calls it through this module's
# name _anatomy (tests replace neurovfm.phantom._anatomy). The DICOM writer is _phantom_io.
from ._phantom_anatomy import _HEAD, _anatomy
from ._phantom_io import write_dicom_series
from .errors import InvalidArgumentError

__all__ = [
    "CT_TISSUES",
    "MRI_TISSUES",
    "PHANTOM_FILES",
    "make_ct_phantom",
    "make_mri_phantom",
    "write_dicom_series",
    "write_phantoms",
]

#: CT tissue values (HU).
CT_TISSUES = {
    "air": -1000.0,
    "skin": 45.0,
    "fat": -90.0,
    "muscle": 50.0,
    "table": 1500.0,  # cortical bone of the skull tables
    "diploe": 700.0,
    "csf": 5.0,
    "gm": 38.0,
    "wm": 27.0,
    "deep": 35.0,
    "falx": 55.0,
    "blood": 70.0,
    "oedema": 16.0,
    "vertebra": 1200.0,
    "marrow": 350.0,
    "cord": 32.0,
}

#: T1-like MR tissue values (arbitrary units, 12-bit range).
MRI_TISSUES = {
    "air": 0.0,
    "skin": 520.0,
    "fat": 980.0,
    "muscle": 360.0,
    "table": 40.0,
    "diploe": 620.0,
    "csf": 130.0,
    "gm": 470.0,
    "wm": 720.0,
    "deep": 560.0,
    "falx": 220.0,
    "blood": 600.0,
    "oedema": 380.0,
    "vertebra": 60.0,
    "marrow": 560.0,
    "cord": 450.0,
}

# Voxels per generation slab (bounds the temporary float32 arrays).
_SLAB_VOXELS = 1 << 21

_F32 = npt.NDArray[np.float32]
#: ``finish(values, rng, slab_physical)``: a modality's noise, in place; returns the stored-type slab.
_Finish = Callable[[_F32, np.random.Generator, Sequence[_F32]], npt.NDArray[Any]]
#: Checked (size, spacing, direction, origin) of a phantom.
_Geometry = tuple[tuple[int, ...], tuple[float, ...], npt.NDArray[np.float64], tuple[float, ...]]


def _axis_matrix(code: str) -> np.ndarray:
    """Direction matrix (columns = image axes) from an orientation code such as 'PIR'."""
    vec = {"L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
    m = np.zeros((3, 3))
    for col, letter in enumerate(code):
        row, sign = vec[letter]
        m[row, col] = sign
    return m


def _rotation_x(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _geometry(
    shape: Sequence[int], spacing: Sequence[float], direction: npt.ArrayLike, centre: Sequence[float]
) -> _Geometry:
    """Checked (size, spacing, direction, origin) with the field of view centred on ``centre``."""
    size = tuple(int(n) for n in shape)
    sp = tuple(float(s) for s in spacing)
    if len(size) != 3 or min(size) < 2:
        raise InvalidArgumentError(f"shape must be three sizes >= 2 (x, y, z), got {shape!r}")
    if len(sp) != 3 or min(sp) <= 0:
        raise InvalidArgumentError(f"spacing must be three positive values (x, y, z) in mm, got {spacing!r}")
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-9):
        raise InvalidArgumentError("direction must be an orthonormal 3x3 matrix")
    half = d @ ((np.asarray(size) - 1) * np.asarray(sp) / 2.0)
    # Round the origin to 1/64 mm: exact in float32 (NIfTI) and in a short decimal (DICOM DS).
    origin = tuple(float(v) for v in np.round((np.asarray(centre, float) - half) * 64.0) / 64.0)
    return size, sp, d, origin


def _fit_scale(size: Sequence[int], spacing: Sequence[float], d: npt.NDArray[np.float64]) -> float:
    """Uniform scale (<= 1) so that the head fits the field of view left-right and
    front-back; the superior-inferior extent may be cut, as in a real scan."""
    extent = np.abs(d) @ ((np.asarray(size) - 1) * np.asarray(spacing))  # per patient axis
    return float(min(1.0, 0.92 * extent[0] / (2 * _HEAD[0]), 0.92 * extent[1] / (2 * _HEAD[1])))


def _render(
    size: Sequence[int],
    spacing: Sequence[float],
    d: npt.NDArray[np.float64],
    origin: Sequence[float],
    centre: Sequence[float],
    scale: float,
    tissues: Mapping[str, float],
    seed: int,
    finish: _Finish,
) -> npt.NDArray[Any]:
    """Voxels (numpy z, y, x order) slab by slab; ``finish(values, rng, slab_physical)``
    adds the modality's noise in place and returns the stored-type slab."""
    nx, ny, nz = size
    sx, sy, sz = spacing
    rng = np.random.default_rng(seed)
    out: npt.NDArray[Any] | None = None
    per = max(1, _SLAB_VOXELS // (nx * ny))
    o = np.asarray(origin) - np.asarray(centre, float)
    i = np.arange(nx, dtype=np.float64) * sx
    j = np.arange(ny, dtype=np.float64) * sy
    w = float(np.mean(spacing)) / scale  # partial-volume width in anatomical mm
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], float)
    for k0 in range(0, nz, per):
        k1 = min(nz, k0 + per)
        k = np.arange(k0, k1, dtype=np.float64) * sz

        def box(
            lo: npt.NDArray[np.float64], hi: npt.NDArray[np.float64], k0: int = k0, k1: int = k1
        ) -> tuple[slice, ...] | None:
            # Index range (x, y, z) of the anatomical box [lo, hi], clipped to the slab.
            lo, hi = np.maximum(lo, -1e4), np.minimum(hi, 1e4)
            q = lo + corners * (hi - lo)
            idx = (q * scale - o) @ d / np.asarray(spacing)  # continuous indices, one row per corner
            a = np.maximum(np.floor(idx.min(0)).astype(int) - 1, (0, 0, k0))
            b = np.minimum(np.ceil(idx.max(0)).astype(int) + 2, (nx, ny, k1))
            if np.any(b <= a):
                return None
            return (slice(a[2] - k0, b[2] - k0), slice(a[1], b[1]), slice(a[0], b[0]))

        coords: list[_F32] = []
        for row in range(3):
            p = (
                (d[row, 2] * k + o[row])[:, None, None]
                + (d[row, 1] * j)[None, :, None]
                + (d[row, 0] * i)[None, None, :]
            )
            coords.append((p / scale).astype(np.float32))
        vals = _anatomy(coords[0], coords[1], coords[2], tissues, w, box)
        slab = finish(vals, rng, [c * np.float32(scale) for c in coords])
        if out is None:
            out = np.empty((nz, ny, nx), slab.dtype)
        out[k0:k1] = slab
    return cast("npt.NDArray[Any]", out)  # set: nz >= 2, so the loop ran


def _to_image(
    arr: npt.NDArray[Any], spacing: Sequence[float], d: npt.NDArray[np.float64], origin: Sequence[float]
) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(tuple(float(x) for x in d.ravel()))
    return img


def make_ct_phantom(
    shape: Sequence[int] = (256, 256, 120),
    spacing: Sequence[float] = (0.8, 0.8, 1.5),
    *,
    seed: int = 0,
    noise: float = 6.0,
    direction: npt.ArrayLike | None = None,
    centre: Sequence[float] = (0.0, 12.0, -140.0),
) -> sitk.Image:
    """A synthetic axial head CT in Hounsfield units.

    Parameters
    ----------
    shape
        Size in SimpleITK order ``(x, y, z)``; default 256x256x120 (a quick volume).
    spacing
        Voxel spacing in mm, ``(x, y, z)``; default 0.8 x 0.8 x 1.5 mm.
    seed
        Seed of the noise; the same arguments always give the same image.
    noise
        Standard deviation of the Gaussian noise in HU.
    direction
        3x3 direction matrix (columns are the image axes); default identity, i.e.
        an axial acquisition in LPS (x to the left, y posterior, z superior).
    centre
        Physical point (mm) at the centre of the field of view, where the head is.

    Returns
    -------
    SimpleITK.Image, int16 HU: air -1000 (clipped to -1024..3071 as scanners store
    it), soft tissue ~45, fat ~-90, skull 700-1500, grey matter ~38, white matter ~27,
    CSF ~5, a haemorrhage ~70. The head is scaled down uniformly when the field of
    view is too small for it.
    """
    d = np.eye(3) if direction is None else np.asarray(direction, float).reshape(3, 3)
    size, sp, d, origin = _geometry(shape, spacing, d, centre)
    scale = _fit_scale(size, sp, d)

    def finish(vals: _F32, rng: np.random.Generator, _phys: Sequence[_F32]) -> npt.NDArray[np.int16]:
        vals += rng.standard_normal(vals.shape, dtype=np.float32) * np.float32(noise)
        np.rint(vals, out=vals)
        np.clip(vals, -1024, 3071, out=vals)
        return vals.astype(np.int16)

    arr = _render(size, sp, d, origin, centre, scale, CT_TISSUES, seed, finish)
    return _to_image(arr, sp, d, origin)


def make_mri_phantom(
    shape: Sequence[int] = (192, 192, 140),
    spacing: Sequence[float] = (1.0, 1.0, 1.2),
    *,
    seed: int = 1,
    noise: float = 12.0,
    orientation: str = "PIR",
    tilt_deg: float = 6.0,
    centre: Sequence[float] = (2.0, -8.0, 35.0),
) -> sitk.Image:
    """A synthetic T1-weighted head MR, acquired sagittally by default.

    Parameters
    ----------
    shape, spacing
        SimpleITK order ``(x, y, z)``. Default: sagittal slices of 192x192 at 1 mm,
        140 of them 1.2 mm apart.
    seed
        Seed of the noise.
    noise
        Standard deviation of each Gaussian channel of the Rician noise.
    orientation
        Orientation code of the image axes before the tilt (as SimpleITK's
        ``DICOMOrientImageFilter`` names them); ``'PIR'`` is a sagittal
        acquisition (columns posterior, rows inferior, slices towards the right),
        ``'LPS'`` an axial one.
    tilt_deg
        Rotation of the acquisition about the left-right axis (an oblique scan).

    Returns
    -------
    SimpleITK.Image, uint16: background ~0 with Rician noise, WM ~720 > GM ~470 >
    CSF ~130, bright fat, dark cortical bone, with a mild bias field.
    """
    d = _rotation_x(tilt_deg) @ _axis_matrix(orientation.upper())
    size, sp, d, origin = _geometry(shape, spacing, d, centre)
    scale = _fit_scale(size, sp, d)

    def finish(vals: _F32, rng: np.random.Generator, phys: Sequence[_F32]) -> npt.NDArray[np.uint16]:
        x, y, z = phys  # mm from the centre of the field of view
        # Smooth multiplicative bias field (receive-coil shading).
        bias = np.float32(0.0008) * x
        bias -= np.float32(0.0006) * y
        bias += np.float32(0.0005) * z
        bias += np.float32(1.0)
        vals *= bias
        n1 = rng.standard_normal(vals.shape, dtype=np.float32) * np.float32(noise)
        n2 = rng.standard_normal(vals.shape, dtype=np.float32) * np.float32(noise)
        vals += n1
        np.hypot(vals, n2, out=vals)
        np.rint(vals, out=vals)
        np.clip(vals, 0, 65535, out=vals)
        return vals.astype(np.uint16)

    arr = _render(size, sp, d, origin, centre, scale, MRI_TISSUES, seed, finish)
    return _to_image(arr, sp, d, origin)


#: What :func:`write_phantoms` writes, by name.
PHANTOM_FILES = {
    "ct_nifti": "ct_phantom.nii.gz",
    "ct_dicom": "ct_phantom_dicom",
    "mri_nifti": "mri_phantom.nii.gz",
}


def write_phantoms(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    ct: sitk.Image | None = None,
    mri: sitk.Image | None = None,
    names: Iterable[str] | None = None,
) -> dict[str, Path]:
    """Write the phantoms into ``out_dir`` (created if needed).

    Returns a dict of paths (:class:`pathlib.Path`) by name:

    - ``"ct_nifti"``: the CT as ``ct_phantom.nii.gz``;
    - ``"ct_dicom"``: the same CT as a DICOM series in the folder ``ct_phantom_dicom/``;
    - ``"mri_nifti"``: the sagittal MR as ``mri_phantom.nii.gz``.

    ``ct`` and ``mri`` replace the default phantoms (e.g. smaller ones in tests);
    ``names`` writes only some of them.
    """
    names = list(PHANTOM_FILES) if names is None else list(names)
    unknown = [n for n in names if n not in PHANTOM_FILES]
    if unknown:
        raise InvalidArgumentError(f"unknown phantom name(s) {unknown}; choose from {list(PHANTOM_FILES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {n: out / PHANTOM_FILES[n] for n in names}
    if "ct_nifti" in paths or "ct_dicom" in paths:
        ct = make_ct_phantom(seed=seed) if ct is None else ct
        if "ct_nifti" in paths:
            sitk.WriteImage(ct, os.fspath(paths["ct_nifti"]), useCompression=True)
        if "ct_dicom" in paths:
            write_dicom_series(ct, paths["ct_dicom"], seed=seed)
    if "mri_nifti" in paths:
        mri = make_mri_phantom(seed=seed + 1) if mri is None else mri
        sitk.WriteImage(mri, os.fspath(paths["mri_nifti"]), useCompression=True)
    return paths
