"""load_image: read a scan, reorient it to RPI, resample to 1x1x4 mm, crop.

All voxel work runs in the C++ kernels; SimpleITK parses headers and builds
the returned image. The reorientation is never materialised: the resampling
kernel reads the decoded buffer through a permuted/flipped strided view.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from .. import _core
from .._threads import get_num_threads
from ..errors import ImageReadError, ImageTooSmallError, InvalidArgumentError, InvalidTypeError
from . import sources
from .sources import nifti
from .volume import SUPPORTED_PIXEL_IDS, RawVolume, check_finite

if TYPE_CHECKING:
    from .series import SeriesRecord

__all__ = [
    "load_image",
    "read_volume",
    "preprocess_image",
    "preprocess_volume",
    "reorient_rpi",
    "slice_axis",
    "TARGET_SPACING",
]

log = logging.getLogger("neurovfm")

#: Target spacing (mm) in-plane and along the slice axis.
TARGET_SPACING = (1.0, 4.0)
#: Crop multiples: in-plane, slice axis (the token is 4x16x16).
CROP_MULTIPLE = (16, 4)

# Physical axis (LPS) and sign towards which each letter points, as ITK's
# DICOMOrientation names them: L = +x, R = -x, P = +y, A = -y, S = +z, I = -z.
_LETTERS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}
_TARGET = "RPI"


@dataclass(frozen=True)
class Orientation:
    """Axis permutation and flips taking an image to RPI.

    New (SimpleITK) axis ``j`` is old axis ``perm[j]``, reversed when ``flip[j]``.
    """

    perm: tuple[int, ...]
    flip: tuple[bool, ...]

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flip)


def _orientation_to_rpi(direction: Sequence[float]) -> Orientation:
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines([float(d) for d in direction])
    current = [_LETTERS[c] for c in code]
    perm: list[int] = []
    flip: list[bool] = []
    for letter in _TARGET:
        axis, sign = _LETTERS[letter]
        j = next(i for i, (a, _) in enumerate(current) if a == axis)
        perm.append(j)
        flip.append(current[j][1] != sign)
    return Orientation(tuple(perm), tuple(flip))


def _reoriented_geometry(
    shape: Sequence[int],
    spacing_in: Sequence[float],
    origin_in: Sequence[float],
    direction_in: Sequence[float],
    o: Orientation,
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], tuple[int, ...]]:
    """Spacing, origin, direction and size after the permutation and flips,
    computed as ITK's PermuteAxesImageFilter followed by FlipImageFilter.
    ``shape`` is in numpy order, the rest in SimpleITK order."""
    size_in = tuple(shape)[::-1]
    d = np.asarray(direction_in, dtype=np.float64).reshape(3, 3)
    spacing = tuple(float(spacing_in[p]) for p in o.perm)
    size = tuple(int(size_in[p]) for p in o.perm)
    dperm = d[:, list(o.perm)]
    # Flip: origin moves to the physical point of the new first voxel.
    index = [(size[j] - 1) if o.flip[j] else 0 for j in range(3)]
    origin = []
    for i in range(3):
        acc = float(origin_in[i])
        for j in range(3):
            acc += (dperm[i, j] * spacing[j]) * index[j]
        origin.append(acc)
    direction = dperm * np.where(o.flip, -1.0, 1.0)[None, :]
    return spacing, tuple(origin), tuple(float(x) for x in direction.ravel()), size


def _reoriented_view(arr: npt.NDArray[Any], o: Orientation) -> npt.NDArray[Any]:
    """The RPI array (numpy z, y, x order) as a strided view of ``arr``."""
    # numpy axis of sitk axis k is 2 - k.
    view = arr.transpose([2 - o.perm[2], 2 - o.perm[1], 2 - o.perm[0]])
    slices = tuple(slice(None, None, -1) if o.flip[2 - a] else slice(None) for a in range(3))
    out: npt.NDArray[Any] = view[slices]
    return out


def reorient_rpi(img: sitk.Image) -> sitk.Image:
    """Reorient to RPI exactly as ``sitk.DICOMOrient(img, "RPI")`` (C++ kernel copy)."""
    vol = RawVolume.from_image(img)
    o = _orientation_to_rpi(vol.direction)
    spacing, origin, direction, _ = _reoriented_geometry(vol.array.shape, vol.spacing, vol.origin, vol.direction, o)
    arr = _core.copy_contiguous(_reoriented_view(vol.array, o), get_num_threads())
    out = sitk.GetImageFromArray(arr)
    out.SetSpacing(spacing)
    out.SetOrigin(origin)
    out.SetDirection(direction)
    return out


def slice_axis(spacing: Sequence[float], size: Sequence[int]) -> int:
    """Slice axis (SimpleITK order) of a reoriented image (docs/numbers.md, section 2)."""
    spacing = [float(s) for s in spacing]
    size = [int(n) for n in size]
    if spacing[0] == spacing[1] == spacing[2]:
        return 2
    unique = [n for n in size if size.count(n) == 1]
    if unique:
        return size.index(min(unique))
    return int(np.argmax(spacing))


def _crop(m: int, k: int) -> tuple[int, int]:
    """Centred crop of length m to a multiple of k: (start, length)."""
    if m < k:
        return 0, m
    return (m % k) // 2, (m // k) * k


@dataclass
class _Plan:
    """Everything needed to resample one volume, derived from its geometry."""

    orientation: Orientation
    spacing: tuple[float, ...]  # reoriented input spacing (x, y, z)
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    size: tuple[int, ...]  # reoriented input size (x, y, z)
    target: tuple[float, ...]  # output spacing (x, y, z)
    crops: tuple[tuple[int, int], ...]  # (start, length) per axis (x, y, z)
    z: int  # the slice axis (SimpleITK order): the one resampled to 4 mm

    @property
    def last_pass(self) -> int:
        """The kernel's last pass (numpy order): the slice axis, always (docs/numbers.md,
        "Resampling order")."""
        return 2 - self.z

    def kernel_args(self) -> tuple[list[int], list[int], list[float], list[float]]:
        """(n_out, start, out_spacing, in_spacing) in numpy (z, y, x) order."""
        return (
            [c[1] for c in self.crops][::-1],
            [c[0] for c in self.crops][::-1],
            list(self.target)[::-1],
            list(self.spacing)[::-1],
        )

    def image(self, out: npt.NDArray[Any]) -> sitk.Image:
        """Wrap the kernel's output with the cropped grid's geometry."""
        img = sitk.GetImageFromArray(out)
        img.SetSpacing(self.target)
        img.SetDirection(self.direction)
        # Origin of the cropped grid: the resampled grid's physical point at the crop start.
        d = np.asarray(self.direction).reshape(3, 3)
        start = [c[0] for c in self.crops]
        t = self.target
        img.SetOrigin(tuple(self.origin[i] + sum((d[i, j] * t[j]) * start[j] for j in range(3)) for i in range(3)))
        return img


def _plan(
    shape: Sequence[int], spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float], path: str
) -> _Plan:
    o = _orientation_to_rpi(direction)
    s, org, dirn, n = _reoriented_geometry(shape, spacing, origin, direction, o)
    z = slice_axis(s, n)
    t = [TARGET_SPACING[0]] * 3
    t[z] = TARGET_SPACING[1]
    m = [int(n[i] * (s[i] / t[i])) for i in range(3)]
    if min(m) == 0:
        raise ImageTooSmallError(
            path,
            f"volume of size {tuple(n)} and spacing {tuple(round(x, 4) for x in s)} mm resamples to "
            f"{tuple(m)} voxels at {tuple(t)} mm",
        )
    crops = tuple(_crop(m[i], CROP_MULTIPLE[1] if i == z else CROP_MULTIPLE[0]) for i in range(3))
    return _Plan(o, s, org, dirn, n, tuple(t), crops, z)


def _storage_axis(o: Orientation) -> tuple[int, bool]:
    """Where the input's storage axis (its slowest: numpy axis 0, SimpleITK axis 2, along
    which a file streams in) lies in the reoriented numpy order, and whether the
    reorientation reverses it."""
    j = o.perm.index(2)  # new sitk axis fed by old sitk axis 2
    return 2 - j, o.flip[j]


def preprocess_volume(vol: RawVolume) -> sitk.Image:
    """Reorient ``vol`` to RPI, resample to 1x1x4 mm (B-spline) and crop."""
    path = vol.path or "<in-memory image>"
    if vol.array.ndim != 3:
        raise ImageReadError(path, f"expected a 3D volume, got {vol.array.ndim}D")
    if vol.array.dtype.kind == "f":
        check_finite(vol.array, path)
    plan = _plan(vol.array.shape, vol.spacing, vol.origin, vol.direction, path)
    view = _reoriented_view(vol.array, plan.orientation)
    # One pass order (docs/numbers.md, "Resampling order"): the slice axis last, the
    # same for every entry point, so the bytes never depend on how the scan came in.
    out = _core.resample_bspline(view, *plan.kernel_args(), get_num_threads(), plan.last_pass)
    return plan.image(out)


#: Slices decoded per slab when streaming a compressed file (about 4 MB).
_SLAB_BYTES = 4 << 20


#: What :func:`_stream_plan` returns: (plan, reoriented shape, stream axis, flipped).
_StreamPlan = tuple[_Plan, tuple[int, ...], int, bool]


def _stream_plan(layout: nifti.NiftiLayout) -> _StreamPlan | None:
    """(plan, reoriented shape, stream axis, flipped) when the file can be streamed: its
    storage axis is the slice axis, the last pass (docs/numbers.md, "Resampling order"),
    so resampling the other two axes slab by slab gives the whole-volume bytes; None
    otherwise (a file stored along another axis is decoded whole, then resampled in
    that order)."""
    plan = _plan(layout.shape, layout.spacing, layout.origin, layout.direction, layout.path)
    stream_axis, flipped = _storage_axis(plan.orientation)
    # Shape of the reoriented volume (a zero-byte broadcast view stands in for it).
    rshape = _reoriented_view(np.broadcast_to(np.uint8(0), layout.shape), plan.orientation).shape
    if plan.last_pass != stream_axis:
        return None
    return plan, rshape, stream_axis, flipped


def _preprocess_nifti_streaming(layout: nifti.NiftiLayout, stream: _StreamPlan) -> sitk.Image:
    """Decode a NIfTI file slab by slab while a background thread resamples the
    two other axes of the slabs already decoded; the file's storage axis is
    resampled last. Never holds the whole decoded volume."""
    path = layout.path
    plan, rshape, stream_axis, flipped = stream
    o = plan.orientation
    threads = get_num_threads()
    nz, ny, nx = layout.shape
    dtype = cast("np.dtype[Any]", layout.dtype)  # streamed layouts are direct: they have one
    sr = _core.StreamResampler(dtype, rshape, stream_axis, *plan.kernel_args())
    per = max(1, _SLAB_BYTES // (ny * nx * dtype.itemsize))
    # Ring buffers from the kernels' allocator: reused from one file to the next.
    ring = [_core.empty(dtype, (min(per, nz), ny, nx)) for _ in range(3)]
    tickets = [0] * len(ring)
    # One thread decodes (here), the rest resample slabs as they arrive.
    push_threads = max(1, threads - 1)
    try:
        with nifti.open_voxels(layout) as f:
            for i, k0 in enumerate(range(0, nz, per)):
                kn = min(per, nz - k0)
                r = i % len(ring)
                if threads > 1:
                    sr.wait(tickets[r])
                buf = ring[r][:kn]
                nifti.read_exactly(f, buf.data.cast("B"), path, layout.nbytes)
                if dtype.kind == "f":
                    check_finite(buf, path)
                view = _reoriented_view(buf, o)
                i0 = nz - k0 - kn if flipped else k0
                if threads > 1:
                    # The decoder is idle after the last slab: give it all threads.
                    last = k0 + kn >= nz
                    tickets[r] = sr.submit(view, i0, threads if last else push_threads)
                else:
                    sr.push(view, i0, 1)
            if layout.gz:
                nifti.check_trailer(f, path)
        out = sr.finish(threads)
    except (OSError, EOFError) as err:
        raise ImageReadError(path, f"corrupt or truncated file: {err}") from None
    finally:
        sr.close()
    return plan.image(out)


def _preprocess_nifti_whole(layout: nifti.NiftiLayout) -> sitk.Image:
    """A NIfTI file that does not stream (its storage axis is not the slice axis): decoded
    whole (in parallel where that is faster: :func:`.sources.gzip.open_gzip`) into plain
    memory, its first two passes resampled, then the inflated copy given back before the
    last pass. Peak memory: one inflated copy plus the kernel's intermediates. The bytes
    of :func:`preprocess_volume` (the same pass order, the same kernels)."""
    threads = get_num_threads()
    vol = nifti.read_nifti(layout.path, layout, threads, keep_buffer=False)
    if vol.array.dtype.kind == "f":
        check_finite(vol.array, layout.path)
    plan = _plan(vol.array.shape, vol.spacing, vol.origin, vol.direction, layout.path)
    view = _reoriented_view(vol.array, plan.orientation)
    args = plan.kernel_args()
    # One "slab" covering the whole volume along the last pass's axis: push runs the
    # first two passes (resample_bspline's), finish the last.
    sr = _core.StreamResampler(view.dtype, view.shape, plan.last_pass, *args)
    try:
        sr.push(view, 0, threads)
        del view, vol
        out = sr.finish(threads)
    finally:
        sr.close()
    return plan.image(out)


def preprocess_image(img: sitk.Image) -> sitk.Image:
    """:func:`load_image`'s preprocessing applied to an in-memory SimpleITK image. Unlike
    ``load_image(img)``, which refuses what it would refuse in a file (a single slice,
    say), any 3D scalar image of a supported pixel type is resampled."""
    if not isinstance(img, sitk.Image):
        raise InvalidTypeError(f"expected a SimpleITK.Image, got {type(img).__name__}")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError("<in-memory image>", "colour or multi-component image; a scalar volume is required")
    if img.GetDimension() != 3:
        raise ImageReadError("<in-memory image>", f"expected a 3D image, got {img.GetDimension()}D")
    if img.GetPixelID() not in SUPPORTED_PIXEL_IDS:
        raise ImageReadError("<in-memory image>", f"pixel type {img.GetPixelIDTypeAsString()} is not supported")
    return preprocess_volume(RawVolume.from_image(img))


def read_volume(path: str | os.PathLike[str] | SeriesRecord | Any, series_uid: str | None = None) -> RawVolume:
    """Read a NIfTI file, DICOM file or series folder, or any SimpleITK format; one series
    :func:`~neurovfm.data.find_series` found; or take a SimpleITK or nibabel image, or a
    :class:`RawVolume`, as it is (:func:`neurovfm.data.sources.read`)."""
    return sources.read(path, series_uid)


def load_image(
    path: str | os.PathLike[str] | npt.NDArray[Any] | sitk.Image | Any,
    preprocess: bool = True,
    series_uid: str | None = None,
    *,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> sitk.Image:
    """Load a CT or MR scan as a SimpleITK image.

    Parameters
    ----------
    path
        A ``.nii``/``.nii.gz`` file, a DICOM file (also multi-frame), a folder
        holding a DICOM series (searched recursively; files need no extension),
        or any other format SimpleITK reads; or the URL of one of these
        (``s3://``, ``gs://``, ``https://``, any fsspec URL: a file, or a prefix holding
        a DICOM series; :mod:`neurovfm.data.sources.remote`), staged and read as the
        local file, with its bytes. Or a volume already in memory
        (:mod:`neurovfm.data.sources.memory`): a NumPy array in SimpleITK's NumPy axis
        order ``[z, y, x]`` (as ``SimpleITK.GetArrayFromImage`` gives it) with
        ``spacing`` (required), ``origin`` and ``direction`` in SimpleITK's ``(x, y, z)``
        order; a ``SimpleITK.Image``; or a nibabel NIfTI image. Each gives the bytes the
        file it came from gives.
    preprocess
        When true (default): reorient to RPI, resample with a cubic B-spline to
        1 mm in-plane and 4 mm along the slice axis, and centre-crop to multiples
        of 16 (in-plane) and 4 (slice axis), exactly as the reference NeuroVFM
        pipeline. When false: the volume as read.
    series_uid
        For a DICOM folder with several series: the SeriesInstanceUID to read.
        By default the series with the most slices of one geometry is chosen
        (and the choice is logged).
    spacing, origin, direction
        Only with an array: mm per voxel ``(x, y, z)``, the first voxel's centre
        ``(x, y, z)`` in LPS mm (default 0), the 3x3 direction matrix, row-major, its
        columns the image axes (default the identity). Checked, with errors naming the
        argument.
    storage_options
        Only with a URL: options for its fsspec filesystem (credentials, endpoint);
        by default the backend's standard environment (for S3 the AWS variables,
        ``AWS_ENDPOINT_URL`` included).

    Raises
    ------
    FileNotFoundError
        (:class:`neurovfm.errors.ImageNotFoundError`) when ``path`` does not exist.
    ValueError
        (:class:`neurovfm.errors.ImageReadError` and subclasses) when the file is
        unreadable or not a 3D scalar volume; the message names the file and why.
    """
    if isinstance(path, np.ndarray) or any(v is not None for v in (spacing, origin, direction)):
        if not isinstance(path, np.ndarray):
            raise InvalidArgumentError(
                f"spacing, origin and direction are for an array; got them with a {type(path).__name__}"
            )
        vol = sources.memory.from_array(path, spacing, origin, direction)
        return preprocess_volume(vol) if preprocess else vol.to_image()
    if sources.remote.is_url(path):
        with sources.remote.staged(path, storage_options) as local:
            return load_image(local, preprocess, series_uid)  # the image is in memory
    if storage_options:
        raise InvalidArgumentError(f"storage_options are for a URL; got them with {path!r}")
    if not preprocess:
        return read_volume(path, series_uid=series_uid).to_image()
    if not isinstance(path, (str, os.PathLike)):  # an image in memory, a series record
        return preprocess_volume(read_volume(path, series_uid=series_uid))
    # A readable NIfTI file has its header parsed once and is streamed when its storage
    # axis is the last pass anyway (with one thread it simply alternates decoding and
    # resampling), else decoded whole: the same bytes either way (docs/numbers.md,
    # "Resampling order"). Any other input is read whole, then resampled.
    path = os.fspath(path)
    if nifti.is_nifti(path) and os.path.isfile(path) and os.access(path, os.R_OK):
        layout = nifti.nifti_layout(path)
        stream = _stream_plan(layout) if layout.direct else None
        if stream is not None:
            return _preprocess_nifti_streaming(layout, stream)
        if layout.direct:
            return _preprocess_nifti_whole(layout)
        vol = nifti.read_nifti(path, layout)
    else:
        vol = read_volume(path, series_uid=series_uid)
    return preprocess_volume(vol)
