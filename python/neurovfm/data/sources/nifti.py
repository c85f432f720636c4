"""NIfTI-1 files (``.nii``, ``.nii.gz``): the header checked against the file, the voxel
layout, and the voxels decoded straight into the kernels' buffers (gzip by ISA-L, the
CRC checked on every path: :mod:`.gzip`), whole or slab by slab for the streaming
resampler (:mod:`neurovfm.data.io`). A layout the fast path does not decode (scaled,
big-endian, ...) is read by SimpleITK (:mod:`.other`).

Geometry always comes from SimpleITK's own header parsing, so it is exactly the
reference's; the fast path only replaces the decoding of the voxels.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import SimpleITK as sitk

from ... import _core
from ..._threads import get_num_threads
from ...errors import ImageReadError
from ..volume import SUPPORTED_PIXEL_IDS, RawVolume, check_scalar_3d
from .gzip import DECODE_ERRORS, gzip_isize, gzip_problem, gzip_reason, open_gzip, stream_errors
from .gzip import check_trailer as check_trailer
from .other import explain_nifti_error, read_with_sitk

if TYPE_CHECKING:
    import io

__all__ = [
    "NiftiLayout",
    "check_nifti_header",
    "check_trailer",
    "is_nifti",
    "nifti_layout",
    "open_voxels",
    "read_exactly",
    "read_nifti",
]

#: Largest deflate expansion (about 1032:1), with slack for tiny files.
_GZIP_MAX_RATIO, _GZIP_SLACK = 1032, 1 << 16


# NIfTI-1 datatype codes -> numpy dtype (little-endian).
_NIFTI_DTYPES: dict[int, np.dtype[Any]] = {
    2: np.dtype("u1"),
    4: np.dtype("<i2"),
    8: np.dtype("<i4"),
    16: np.dtype("<f4"),
    64: np.dtype("<f8"),
    256: np.dtype("i1"),
    512: np.dtype("<u2"),
    768: np.dtype("<u4"),
}


def is_nifti(path: str) -> bool:
    p = path.lower()
    return p.endswith(".nii") or p.endswith(".nii.gz")


# Bytes per voxel of every NIfTI-1 datatype code (SimpleITK reads some the kernels do not).
_NIFTI_CODE_BYTES = {
    1: 0, 2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4,
    1024: 8, 1280: 8, 1536: 16, 1792: 16, 2048: 32, 2304: 4,
}  # fmt: skip


def check_nifti_header(path: str) -> bytes:
    """Check a NIfTI file against its own header before SimpleITK or the kernels see it;
    returns the header's first 352 bytes (fewer for a short file).

    Refuses, with the library's error naming the file: an empty file, a gzip stream that
    ends inside the header, dimensions that are negative or zero, an unknown datatype
    code, a voxel offset past the end of the file, and voxel data larger than the file
    can hold (the decompressed size of a ``.gz`` is bounded by deflate's maximum ratio),
    so that a hostile header never causes a large allocation. NIfTI-2 and files that
    are not NIfTI-1 at all are left to SimpleITK's own error.
    """
    size = os.path.getsize(path)
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    gz = path.lower().endswith(".gz")
    try:
        hdr = _read_nifti_header(path, gz)
    except EOFError:
        raise ImageReadError(path, "truncated: the compressed stream ends inside the NIfTI header") from None
    except (OSError, ValueError) as err:
        raise ImageReadError(path, f"not a valid gzip file: {err}") from None
    if len(hdr) < 4:
        raise ImageReadError(path, f"truncated: {len(hdr)} bytes, shorter than a NIfTI header")
    for end in "<>":
        if struct.unpack_from(end + "i", hdr, 0)[0] == 348:
            break
    else:
        return hdr
    if len(hdr) < 348:
        raise ImageReadError(path, f"truncated: the NIfTI header is cut short ({len(hdr)} of 348 bytes)")
    dim = struct.unpack_from(end + "8h", hdr, 40)
    if not 1 <= dim[0] <= 7:
        raise ImageReadError(path, f"invalid dimension count dim[0]={dim[0]} in the NIfTI header")
    bad = [(i, d) for i, d in enumerate(dim[1 : dim[0] + 1], 1) if d < 1]
    if bad:
        i, d = bad[0]
        raise ImageReadError(path, f"invalid dimension dim[{i}]={d} in the NIfTI header (must be >= 1)")
    datatype = struct.unpack_from(end + "h", hdr, 70)[0]
    if datatype not in _NIFTI_CODE_BYTES:
        raise ImageReadError(path, f"unknown NIfTI datatype code {datatype}")
    vox_offset = max(352, int(struct.unpack_from(end + "f", hdr, 108)[0]))
    nbytes = int(np.prod([int(d) for d in dim[1 : dim[0] + 1]], dtype=object)) * _NIFTI_CODE_BYTES[datatype]
    shape = "x".join(str(d) for d in dim[1 : dim[0] + 1])
    if gz:
        bound = size * _GZIP_MAX_RATIO + _GZIP_SLACK
        if vox_offset + nbytes > bound:
            raise ImageReadError(
                path,
                f"header claims {shape} voxels of datatype {datatype} ({nbytes} bytes from offset "
                f"{vox_offset}), more than {size} compressed bytes can hold: bad dimensions or truncated file",
            )
        # ISIZE is the decoded length mod 2**32 for a one-member gzip (0 after bgzip's
        # empty last member): when it disagrees, decode once to see why (truncated,
        # corrupt, or shorter than the header claims) before anything is allocated.
        isize = gzip_isize(path)
        if isize != 0 and isize != (vox_offset + nbytes) % (1 << 32):
            problem = gzip_problem(path, vox_offset + nbytes, vox_offset)
            if problem is not None:
                raise ImageReadError(path, problem)
    elif vox_offset > size:
        raise ImageReadError(path, f"voxel offset {vox_offset} is past the end of the file ({size} bytes)")
    elif vox_offset + nbytes > size:
        raise ImageReadError(
            path,
            f"truncated or bad dimensions: header claims {shape} voxels of datatype {datatype} "
            f"({nbytes} bytes from offset {vox_offset}), the file holds {size} bytes",
        )
    return hdr


def _read_nifti_header(path: str, gz: bool) -> bytes:
    if gz:
        with open_gzip(path) as gf:
            return gf.read(352)
    with open(path, "rb") as f:
        return f.read(352)


@dataclass
class NiftiLayout:
    """What SimpleITK's header parsing says of a NIfTI file, plus where its voxels are.

    ``direct`` is true when the voxels can be decoded without SimpleITK: the
    stored datatype is the pixel type SimpleITK reports (no intensity scaling)
    and little-endian.
    """

    path: str
    gz: bool
    shape: tuple[int, ...]  # numpy order (z, y, x)
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    dtype: np.dtype[Any] | None  # set whenever ``direct``
    vox_offset: int
    direct: bool

    @property
    def nbytes(self) -> int:
        # Only asked of direct layouts, which have a dtype.
        return int(np.prod(self.shape)) * cast("np.dtype[Any]", self.dtype).itemsize


def nifti_layout(path: str) -> NiftiLayout:
    """Parse a NIfTI header (geometry by SimpleITK) and check it is a 3D scalar volume."""
    hdr = check_nifti_header(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise explain_nifti_error(path, err) from None
    dim = reader.GetDimension()
    size = reader.GetSize()
    check_scalar_3d(path, dim, size, reader.GetNumberOfComponents(), reader.GetPixelID())
    gz = path.lower().endswith(".gz")
    direction = reader.GetDirection()
    if dim == 4:
        direction = tuple(direction[r * 4 + c] for r in range(3) for c in range(3))
    dtype: np.dtype[Any] | None = None
    vox_offset, direct = 0, False
    if len(hdr) >= 348 and struct.unpack_from("<i", hdr, 0)[0] == 348:
        datatype = struct.unpack_from("<h", hdr, 70)[0]
        vox_offset = int(struct.unpack_from("<f", hdr, 108)[0])
        slope, inter = struct.unpack_from("<ff", hdr, 112)
        dtype = _NIFTI_DTYPES.get(datatype)
        expected = SUPPORTED_PIXEL_IDS.get(reader.GetPixelID())
        unscaled = slope == 0.0 or (slope == 1.0 and inter == 0.0)
        direct = (
            dtype is not None
            and expected is not None
            and dtype == expected.newbyteorder("<")
            and unscaled
            and np.little_endian
            and vox_offset >= 348
        )
    return NiftiLayout(
        path,
        gz,
        tuple(int(x) for x in size[:3])[::-1],
        tuple(reader.GetSpacing()[:3]),
        tuple(reader.GetOrigin()[:3]),
        tuple(direction),
        dtype,
        vox_offset,
        direct,
    )


def open_voxels(layout: NiftiLayout, threads: int = 1) -> io.BufferedIOBase:
    """A binary file object positioned at the first voxel (gzip decoded by ISA-L, or on
    ``threads`` threads where that is faster: :func:`.gzip.open_gzip`)."""
    f: io.BufferedIOBase
    if layout.gz:
        f = open_gzip(layout.path, threads)
    else:
        f = open(layout.path, "rb")
    try:
        skip = layout.vox_offset
        while skip > 0:
            got = f.read(min(skip, 1 << 16))
            if not got:
                raise EOFError(f"voxel offset {layout.vox_offset} is past the end of the (decompressed) data")
            skip -= len(got)
    except BaseException:
        f.close()
        raise
    return f


def read_exactly(f: io.BufferedIOBase, out: memoryview, path: str, expected_total: int) -> None:
    """Fill ``out`` from ``f`` or raise ImageReadError for a truncated/corrupt file."""
    got = 0
    n = out.nbytes
    with stream_errors(path):
        while got < n:
            k = f.readinto(out[got : min(n, got + (1 << 20))])
            if not k:
                raise ImageReadError(
                    path, f"truncated: header promises {expected_total} bytes of voxels, the file ends early"
                )
            got += k


def read_nifti(
    path: str, layout: NiftiLayout | None = None, threads: int | None = None, *, keep_buffer: bool = True
) -> RawVolume:
    """Read a NIfTI-1 file; voxels decoded directly when the layout allows.

    The header is parsed by SimpleITK (geometry identical to ``sitk.ReadImage``).
    When the stored datatype is the pixel type SimpleITK reports (no intensity
    scaling) and little-endian, the voxels are read (gzip decoded with ISA-L, or in
    parallel with ``threads`` (default :func:`neurovfm.get_num_threads`) where that is
    faster) into one buffer; otherwise SimpleITK reads the whole file. The buffer
    comes from the kernels' allocator, which keeps it for the next volume once freed;
    ``keep_buffer=False`` takes plain memory instead, given back to the system as soon
    as the volume is dropped (a volume only resampled, then freed).
    """
    if layout is None:
        layout = nifti_layout(path)
    if not layout.direct:
        return read_with_sitk(path)
    dtype = cast("np.dtype[Any]", layout.dtype)  # direct: a dtype
    try:
        arr = _core.empty(dtype, layout.shape) if keep_buffer else np.empty(layout.shape, dtype)
    except MemoryError:
        raise ImageReadError(path, f"not enough memory for {layout.nbytes} bytes of voxels {layout.shape}") from None
    try:
        with open_voxels(layout, get_num_threads() if threads is None else threads) as f:
            read_exactly(f, arr.data.cast("B"), path, layout.nbytes)
            if layout.gz:
                check_trailer(f, path)
    except DECODE_ERRORS as err:
        if isinstance(err, ImageReadError):
            raise
        if layout.gz and not isinstance(err, EOFError):
            # A decoder that checks a short stream's trailer early (rapidgzip, while the
            # header is skipped): the same words as on every other path.
            raise ImageReadError(path, gzip_reason(err)) from None
        raise ImageReadError(path, f"corrupt or truncated file: {err}") from None
    return RawVolume(arr, layout.spacing, layout.origin, layout.direction, path, reader="fast")
