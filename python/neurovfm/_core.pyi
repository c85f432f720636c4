"""Type stubs of ``neurovfm._core``, the compiled kernels (private; use the package).

Keep in sync with ``cpp/bindings/*.cpp``: ``tests/test_stubs.py`` checks that every
attribute of the built module is declared here and the other way round, with the
same parameter names and the same parameters having defaults.

Volumes are 3-D NumPy arrays of uint8, int8, uint16, int16, uint32, int32, float32
or float64 (bool is read as uint8), in native byte order; they may be strided views
but are never copied. ``threads`` is the number of threads a kernel may use (below 1:
one, but make_item refuses it; capped at ``max(64, 4 * hardware_threads())``); the
result is the same for any count.

Errors (``cpp/bindings/bind_errors.cpp``, the one place that maps the kernels' C++
exceptions): a file the readers cannot use raises
:class:`neurovfm.errors.ImageReadError` ``(path, reason)``; arguments or a call order
a kernel refuses raise :class:`KernelError` (an ``InvalidArgumentError``: a ``NeuroVFMError`` and a
``ValueError``);
the bindings' own checks raise ``ValueError`` / ``TypeError``.

Token background flags (uint8 ``[N]``, 1 = the 4x16x16 token holds a background
voxel) are what ``token_flags=True`` asks for, what :func:`token_background` computes
from a voxel ``foreground`` mask, and what :func:`make_item` takes as ``flags``.
"""

from collections.abc import Sequence
from typing import Optional, SupportsFloat, SupportsIndex, SupportsInt, Union

import numpy as np
import numpy.typing as npt

from neurovfm.errors import InvalidArgumentError

_Int = Union[SupportsInt, SupportsIndex]
_Float = Union[SupportsFloat, SupportsIndex]
_Int3 = Sequence[_Int]  # exactly 3 values
_Float3 = Sequence[_Float]  # exactly 3 values
_DType = npt.DTypeLike

# --- bind_errors.cpp -------------------------------------------------------------------------

class KernelError(InvalidArgumentError):
    """A kernel refused its arguments or the order of calls (a NeuroVFMError and a ValueError)."""

# --- bind_runtime.cpp ------------------------------------------------------------------------

def hardware_threads() -> int:
    """std::thread::hardware_concurrency() (at least 1)."""

def isa() -> str:
    """Instruction-set variant of every kernel: ``'avx2'`` or ``'baseline'`` (the same bytes).
    Chosen once per process: ``'avx2'`` when the build has the AVX2 paths, the CPU has AVX2
    and ``NEUROVFM_DISABLE_AVX2`` is unset, empty or ``0``."""

def resample_isa() -> str:
    """The same as :func:`isa` (kept for existing callers)."""

# --- bind_memory.cpp -------------------------------------------------------------------------

def empty(dtype: _DType, shape: Sequence[_Int]) -> npt.NDArray[np.generic]:
    """Uninitialised C-contiguous array for a large volume (huge pages where available).
    Volume dtypes only (``TypeError`` otherwise); ``ValueError`` for a negative side or a
    size beyond this machine's memory."""

def release_cached_buffers() -> None:
    """Free the large buffers the kernels keep for reuse between volumes."""

# --- bind_resample.cpp ----------------------------------------------------------------------

def resample_bspline(
    volume: npt.NDArray[np.generic],
    n_out: _Int3,
    start: _Int3,
    out_spacing: _Float3,
    in_spacing: _Float3,
    threads: _Int = 1,
    last_axis: _Int = -1,
) -> npt.NDArray[np.generic]:
    """Cubic B-spline resampling of a 3-D array (NumPy axis order) onto a cropped grid, one
    axis after the other in :func:`resample_order`'s order (``last_axis`` 0..2: that axis
    last, the others by shrink: the pipeline passes the slice axis; -1: all by shrink).
    ``ValueError`` for negative sizes or starts, spacings that are not positive and finite,
    or an output (or intermediate) beyond this machine's memory."""

def resample_order(shape: _Int3, n_out: _Int3, last_axis: _Int = -1) -> list[int]:
    """The order of the resampling passes (NumPy axes) for an input ``shape`` and output
    ``n_out``: the axis that shrinks the data most first (ties by axis index), ``last_axis``
    (when 0..2) last."""

class StreamResampler:
    """B-spline resampling of a volume pushed in slabs along one axis."""

    def __init__(
        self,
        dtype: _DType,
        shape: _Int3,
        stream_axis: _Int,
        n_out: _Int3,
        start: _Int3,
        out_spacing: _Float3,
        in_spacing: _Float3,
    ) -> None: ...
    def push(self, slab: npt.NDArray[np.generic], i0: _Int, threads: _Int = 1) -> None:
        """Resample the slab whose first index along the stream axis is ``i0``."""

    def submit(self, slab: npt.NDArray[np.generic], i0: _Int, threads: _Int = 1) -> int:
        """Queue a push on a background thread; returns its ticket. Do not modify ``slab``
        before :meth:`wait` of that ticket."""

    def wait(self, ticket: _Int) -> None:
        """Wait for every push up to ``ticket``; re-raises the first error (a slab the
        resampler refuses: :class:`KernelError`; ``ValueError`` for a ticket never issued)."""

    def close(self) -> None:
        """Drain and stop the background thread."""

    def finish(self, threads: _Int = 1) -> npt.NDArray[np.generic]:
        """The resampled volume, once every slice was pushed (``ValueError`` otherwise, and
        on a second call: the resampler is spent)."""

# --- bind_orient.cpp -------------------------------------------------------------------------

def copy_contiguous(volume: npt.NDArray[np.generic], threads: _Int = 1) -> npt.NDArray[np.generic]:
    """C-contiguous copy of a strided 3-D view (applies a reorientation)."""

# --- bind_tokens.cpp -------------------------------------------------------------------------

def tokenize(
    volume: npt.NDArray[np.generic], threads: _Int = 1
) -> tuple[npt.NDArray[np.generic], npt.NDArray[np.int32]]:
    """``[D, H, W]`` -> (``[N, 1024]`` tokens of the volume's dtype, ``[N, 3]`` int32 coords)."""

def token_background(foreground: npt.NDArray[np.generic], threads: _Int = 1) -> npt.NDArray[np.uint8]:
    """Token background flags (uint8 ``[N]``, 1 = the token holds a background voxel) from a
    bool/uint8 voxel foreground mask ``[D, H, W]`` (True = foreground)."""

# --- bind_intensity.cpp ---------------------------------------------------------------------

def ct_windows(
    volume: npt.NDArray[np.generic],
    windows: Sequence[Sequence[_Float]],
    fg_threshold: _Float,
    token_flags: bool = True,
    voxel_mask: bool = False,
    threads: _Int = 1,
    quantize: bool = False,
) -> tuple[list[npt.NDArray[np.generic]], Optional[npt.NDArray[np.uint8]], Optional[npt.NDArray[np.bool_]]]:
    """CT windows ``[(width, level), ...]`` (at most 8; width positive and finite, level
    finite) -> (float32 ``[1, D, H, W]`` per window, or
    uint8 ``v * 255`` truncated from the float64 value with ``quantize``; token background
    flags ``[N]`` (when ``token_flags``) or None; voxel foreground mask (when ``voxel_mask``)
    or None)."""

def percentiles(
    volume: npt.NDArray[np.generic], q: Sequence[_Float], threads: _Int = 1
) -> tuple[list[float], float, float]:
    """Exact NumPy-linear percentiles (``q`` in percent) -> (values, min, max)."""

def mri_normalise(
    volume: npt.NDArray[np.generic],
    lo: _Float,
    hi: _Float,
    vmin: _Float,
    vmax: _Float,
    fg_threshold: _Float,
    token_flags: bool = True,
    voxel_mask: bool = False,
    threads: _Int = 1,
    quantize: bool = False,
) -> tuple[npt.NDArray[np.generic], Optional[npt.NDArray[np.uint8]], Optional[npt.NDArray[np.bool_]]]:
    """MRI clip + min-max normalisation -> (float32 ``[1, D, H, W]`` or, with ``quantize``,
    uint8 ``v * 255`` truncated from the float64 value; token background flags ``[N]`` (when
    ``token_flags``) or None; voxel foreground mask (when ``voxel_mask``) or None)."""

def dequantize_u8(values: npt.NDArray[np.uint8], threads: _Int = 1) -> npt.NDArray[np.float32]:
    """``float32(v) / 255`` (C-contiguous input)."""

# --- bind_dicom.cpp -------------------------------------------------------------------------

class DicomHeader:
    """Header fields of one DICOM file, as read by the fast parser (no constructor:
    made by :func:`read_dicom_header` and :func:`read_dicom_headers`)."""

    @property
    def is_dicom(self) -> bool: ...
    @property
    def error(self) -> str: ...
    @property
    def transfer_syntax(self) -> str: ...
    @property
    def media_storage_sop_class_uid(self) -> str: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def series_uid(self) -> str: ...
    @property
    def modality(self) -> str: ...
    @property
    def image_type(self) -> str: ...
    @property
    def series_description(self) -> str: ...
    @property
    def photometric(self) -> str: ...
    @property
    def rows(self) -> int: ...
    @property
    def cols(self) -> int: ...
    @property
    def samples_per_pixel(self) -> int: ...
    @property
    def bits_allocated(self) -> int: ...
    @property
    def bits_stored(self) -> int: ...
    @property
    def high_bit(self) -> int: ...
    @property
    def pixel_representation(self) -> int: ...
    @property
    def number_of_frames(self) -> int: ...
    @property
    def has_series_number(self) -> bool: ...
    @property
    def series_number(self) -> int: ...
    @property
    def has_instance_number(self) -> bool: ...
    @property
    def instance_number(self) -> int: ...
    @property
    def has_ipp(self) -> bool: ...
    @property
    def has_iop(self) -> bool: ...
    @property
    def has_pixel_spacing(self) -> bool: ...
    @property
    def ipp(self) -> tuple[float, float, float]: ...
    @property
    def iop(self) -> tuple[float, float, float, float, float, float]: ...
    @property
    def pixel_spacing(self) -> tuple[float, float]: ...
    @property
    def has_rescale(self) -> bool: ...
    @property
    def slope(self) -> float: ...
    @property
    def intercept(self) -> float: ...
    @property
    def has_preamble(self) -> bool: ...
    @property
    def explicit_vr(self) -> bool: ...
    @property
    def file_size(self) -> int: ...
    @property
    def has_pixel_data(self) -> bool: ...
    @property
    def float_pixel_data(self) -> bool: ...
    @property
    def pixel_offset(self) -> int: ...
    @property
    def pixel_length(self) -> int: ...
    @property
    def encapsulated(self) -> bool: ...
    @property
    def little_endian(self) -> bool: ...
    @property
    def uncompressed_native(self) -> bool: ...
    @property
    def stored_dtype(self) -> Optional[np.dtype]:
        """NumPy dtype of the stored pixels, or None when the fast path cannot read them."""

    @property
    def output_dtype(self) -> Optional[np.dtype]:
        """NumPy dtype GDCM/SimpleITK give this file after rescaling, or None."""

    @property
    def compressed_readable(self) -> bool:
        """True when the pixel data is compressed in a transfer syntax the compiled reader
        decodes itself."""

    @property
    def fast_readable(self) -> bool:
        """True when the compiled reader can read this file exactly as SimpleITK would."""

def codecs() -> dict[str, bool]:
    """``{codec: True when this build decodes its compressed DICOM frames itself}`` for
    ``rle``, ``jpeg_lossless``, ``jpeg_ls``, ``jpeg2000``, ``jpeg_lossy`` and ``htj2k``; a
    missing one falls back to SimpleITK."""

def codec_libraries() -> dict[str, str]:
    """``{codec: the library that decodes it in this build}`` ('' when none; ``jpeg_ls``:
    ``'CharLS'`` and the version linked, e.g. ``'CharLS 2.4.2'``; ``htj2k``:
    ``'OpenJPH'``, with OpenJPEG for frames outside its checked subset, or ``'OpenJPEG'``
    (>= 2.5) without it), keys as :func:`codecs`."""

def dicom_codec_status(transfer_syntax: str, bits_stored: _Int) -> tuple[str, str]:
    """``(name, reason)``: the compressed transfer syntax's short name ('' when it is not
    one) and why the compiled reader does not decode it ('' when it does)."""

def read_dicom_header(path: str) -> DicomHeader:
    """Parse the header of one DICOM file up to its pixel data (never raises for a bad
    file: see ``.error``)."""

def read_dicom_headers(paths: Sequence[str], threads: _Int) -> list[DicomHeader]:
    """Parse many DICOM headers in parallel (never raises for a bad file)."""

def read_dicom_pixels(
    paths: Sequence[str], headers: Sequence[DicomHeader], dtype: _DType, threads: _Int
) -> npt.NDArray[np.generic]:
    """Read uncompressed little-endian or compressed frames (each frame a task, GIL
    released) into a new ``(frames, rows, cols)`` array, rescaled as GDCM does and converted to ``dtype``. A file it cannot use raises
    :class:`neurovfm.errors.ImageReadError` with that file's ``path`` and the ``reason``."""

# --- bind_items.cpp -------------------------------------------------------------------------

def make_item(
    volume: npt.NDArray[np.uint8],
    flags: Optional[npt.NDArray[np.uint8]] = None,
    crop_start: Optional[_Int3] = None,
    crop_size: Optional[_Int3] = None,
    transpose_hw: bool = False,
    flips: Sequence[bool] = (False, False, False),
    dtype: str = "float32",
    tokens: bool = True,
    threads: _Int = 1,
) -> tuple[npt.NDArray[np.generic], npt.NDArray[np.int32], npt.NDArray[np.uint8], npt.NDArray[np.int32]]:
    """One training item from a uint8 volume ``[D, H, W]`` or ``[1, D, H, W]`` and its token
    background flags ``flags`` ``[D/4, H/16, W/16]``: crop (token box), swap H/W, flip, convert
    (float32 ``x / 255`` or uint8) and tokenise in one pass -> (img ``[N, 1024]`` or
    ``[1, D', H', W']``, coords int32 ``[N, 3]``, token background flags uint8 ``[N]`` (0 without
    ``flags``), grid int32 ``[3]``)."""

# --- bind_concat.cpp ------------------------------------------------------------------------

def concat_rows(parts: Sequence[npt.NDArray[np.generic]], out: npt.NDArray[np.generic], threads: _Int = 1) -> None:
    """The rows of ``parts`` (C-contiguous arrays of ``out``'s dtype and row shape), in order,
    written into ``out`` (C-contiguous, writeable, their total rows, not overlapping them); large
    outputs with non-temporal stores. The GIL is released; the same bytes for any thread count."""
