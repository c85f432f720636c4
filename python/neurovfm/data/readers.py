"""File readers: NIfTI (with a fast gzip path) and anything else SimpleITK reads.

Geometry always comes from SimpleITK's own header parsing, so it is exactly the
reference's; the fast path only replaces the decoding of the voxels.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import SimpleITK as sitk

from .. import _core
from ..errors import ImageReadError, UnsupportedImageError
from .volume import RawVolume

if TYPE_CHECKING:
    import io

    from isal.igzip import IGzipFile

__all__ = [
    "read_nifti",
    "read_with_sitk",
    "check_scalar_3d",
    "check_gzip",
    "is_nifti",
    "nifti_layout",
    "NiftiLayout",
]

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


def is_nifti(path: str) -> bool:
    p = path.lower()
    return p.endswith(".nii") or p.endswith(".nii.gz")


def _explain_sitk_error(path: str, err: Exception) -> ImageReadError:
    msg = str(err)
    low = msg.lower()
    if "orthonormal" in low:
        return UnsupportedImageError(
            path, "non-orthonormal (sheared) direction cosines; only rigid orientations are supported"
        )
    if "unable to determine imageio reader" in low or "could not create io object" in low:
        return ImageReadError(path, "not a readable image format (SimpleITK found no reader for it)")
    # Keep the first informative line of ITK's message.
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    detail = next((ln for ln in lines if "description" in ln.lower()), lines[-1] if lines else msg)
    detail = detail.split("Description:", 1)[-1].strip()
    return ImageReadError(path, f"SimpleITK could not read it: {detail}")


def _explain_nifti_error(path: str, err: Exception) -> ImageReadError:
    """SimpleITK refused a NIfTI file: for a ``.gz``, say what is wrong with the stream."""
    if path.lower().endswith(".gz"):
        problem = _gzip_problem(path, 0)
        if problem is not None:
            return ImageReadError(path, problem)
    return _explain_sitk_error(path, err)


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


def _squeeze_4d(img: sitk.Image) -> sitk.Image:
    if img.GetDimension() == 4:
        size = list(img.GetSize())
        size[3] = 0
        img = sitk.Extract(img, size, [0, 0, 0, 0], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
    return img


def read_with_sitk(path: str) -> RawVolume:
    """Read any file SimpleITK supports, checked to be a 3D scalar volume.

    A gzip file (``.gz``) is decoded once in full first so that its CRC-32 and length
    trailer are checked: SimpleITK's reader stops at the last voxel and never reads the
    trailer of a file larger than its read buffer, so it would accept a corrupt one."""
    if path.lower().endswith(".gz"):
        check_gzip(path)
    try:
        img = sitk.ReadImage(path)
    except RuntimeError as err:
        raise (_explain_nifti_error if is_nifti(path) else _explain_sitk_error)(path, err) from None
    check_scalar_3d(path, img.GetDimension(), img.GetSize(), img.GetNumberOfComponentsPerPixel(), img.GetPixelID())
    return RawVolume.from_image(_squeeze_4d(img), path)


# Bytes per voxel of every NIfTI-1 datatype code (SimpleITK reads some the kernels do not).
_NIFTI_CODE_BYTES = {
    1: 0, 2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4,
    1024: 8, 1280: 8, 1536: 16, 1792: 16, 2048: 32, 2304: 4,
}  # fmt: skip
#: Largest deflate expansion (about 1032:1), with slack for tiny files.
_GZIP_MAX_RATIO, _GZIP_SLACK = 1032, 1 << 16


def _igzip_open(path: str) -> IGzipFile:
    """ISA-L's gzip decoder reading ``path`` (binary; isal imported on first use)."""
    from isal import igzip

    f: IGzipFile = igzip.open(path, "rb")  # type: ignore[no-untyped-call]  # isal's igzip.open is unannotated
    return f


def _gzip_problem(path: str, need: int, vox_offset: int = 0) -> str | None:
    """Why the gzip stream of ``path`` does not decode to at least ``need`` bytes and
    then end cleanly (CRC and length trailer checked); None when it does. Decodes at
    most about ``need`` bytes plus 64 MB (bounded time)."""
    got = 0
    try:
        with _igzip_open(path) as f:
            while got <= need + (64 << 20):
                k = len(f.read(1 << 20))
                if not k:
                    break
                got += k
    except (OSError, EOFError, ValueError) as err:
        return _gzip_reason(err) + (f" (after {got} decoded bytes)" if got else "")
    if got < vox_offset:
        return f"voxel offset {vox_offset} is past the end of the decoded data ({got} bytes)"
    if got < need:
        return f"truncated or bad dimensions: the header needs {need} bytes, the stream decodes to {got}"
    return None


def _gzip_isize(path: str) -> int:
    """The gzip trailer's ISIZE (decoded length mod 2**32 of the last member)."""
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        return cast(int, struct.unpack("<I", f.read(4))[0])


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
        isize = _gzip_isize(path)
        if isize != 0 and isize != (vox_offset + nbytes) % (1 << 32):
            problem = _gzip_problem(path, vox_offset + nbytes, vox_offset)
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
        with _igzip_open(path) as gf:
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
        raise _explain_nifti_error(path, err) from None
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


def open_voxels(layout: NiftiLayout) -> io.BufferedIOBase:
    """A binary file object positioned at the first voxel (gzip decoded by ISA-L)."""
    f: io.BufferedIOBase
    if layout.gz:
        f = _igzip_open(layout.path)
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


@contextlib.contextmanager
def _stream_errors(path: str) -> Iterator[None]:
    """Turn the decoder's exceptions into ImageReadError naming the file and why."""
    try:
        yield
    except ImageReadError:
        raise
    except (OSError, EOFError, ValueError) as err:
        raise ImageReadError(path, _gzip_reason(err)) from None


def read_exactly(f: io.BufferedIOBase, out: memoryview, path: str, expected_total: int) -> None:
    """Fill ``out`` from ``f`` or raise ImageReadError for a truncated/corrupt file."""
    got = 0
    n = out.nbytes
    with _stream_errors(path):
        while got < n:
            k = f.readinto(out[got : min(n, got + (1 << 20))])
            if not k:
                raise ImageReadError(
                    path, f"truncated: header promises {expected_total} bytes of voxels, the file ends early"
                )
            got += k


def _gzip_reason(err: Exception) -> str:
    """What a decoder exception (ISA-L's or zlib's) says is wrong with the stream."""
    if isinstance(err, EOFError):
        return f"truncated: the compressed stream ends early ({err})"
    low = str(err).lower()
    if "crc" in low:
        return f"corrupt compressed data: CRC checksum mismatch ({err})"
    if "length" in low:
        return f"corrupt compressed data: the gzip length trailer does not match ({err})"
    return f"corrupt or truncated compressed data: {err}"


def check_trailer(f: io.BufferedIOBase, path: str) -> None:
    """After the voxels of a ``.gz``: decode what is left, to the end of the stream, so
    that the CRC-32 and length trailer of every member are checked."""
    buf = bytearray(1 << 20)
    with _stream_errors(path):
        while f.readinto(buf):
            pass


def check_gzip(path: str) -> None:
    """Decode the whole gzip stream of ``path`` (ISA-L, into one reused buffer): raise
    ImageReadError naming the file unless every member's CRC-32 and length trailer match."""
    try:
        f = _igzip_open(path)
    except OSError as err:
        raise ImageReadError(path, _gzip_reason(err)) from None
    with f:
        check_trailer(f, path)


def read_nifti(path: str, layout: NiftiLayout | None = None) -> RawVolume:
    """Read a NIfTI-1 file; voxels decoded directly when the layout allows.

    The header is parsed by SimpleITK (geometry identical to ``sitk.ReadImage``).
    When the stored datatype is the pixel type SimpleITK reports (no intensity
    scaling) and little-endian, the voxels are read (gzip decoded with ISA-L)
    into one buffer; otherwise SimpleITK reads the whole file.
    """
    if layout is None:
        layout = nifti_layout(path)
    if not layout.direct:
        return read_with_sitk(path)
    try:
        arr = _core.empty(cast("np.dtype[Any]", layout.dtype), layout.shape)  # direct: a dtype
    except MemoryError:
        raise ImageReadError(path, f"not enough memory for {layout.nbytes} bytes of voxels {layout.shape}") from None
    try:
        with open_voxels(layout) as f:
            read_exactly(f, arr.data.cast("B"), path, layout.nbytes)
            if layout.gz:
                check_trailer(f, path)
    except (OSError, EOFError, ValueError) as err:
        if isinstance(err, ImageReadError):
            raise
        raise ImageReadError(path, f"corrupt or truncated file: {err}") from None
    return RawVolume(arr, layout.spacing, layout.origin, layout.direction, path, reader="fast")
