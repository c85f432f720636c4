"""A reader and writer of PyTorch ``.pt`` tensor files that needs no torch.

The files are exactly what ``torch.save(tensor)`` writes (a ZIP archive of
stored entries, the tensor bytes 64-byte aligned), so
``torch.load(path, weights_only=True, mmap=True)`` reads them; this module
reads them back as zero-copy, read-only NumPy views of a memory map.
"""

from __future__ import annotations

import math
import mmap
import os
import pickle
import struct
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ...errors import InvalidTypeError, PtFormatError

try:  # ISA-L's CRC-32 (PCLMUL folding) is ~4x faster than zlib's; same values
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - isal is a dependency
    _crc32 = zlib.crc32

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "write_tensor",
    "open_tensor",
    "map_file",
    "view_at",
    "crc32",
    "file_crc32",
    "PtFormatError",
    "TORCH_STORAGE",
]

_ALIGN = 64
_PREFIX = "archive/"

#: numpy dtype -> torch storage class name (what torch.save pickles).
TORCH_STORAGE: dict[np.dtype[Any], str] = {
    np.dtype("uint8"): "ByteStorage",
    np.dtype("int8"): "CharStorage",
    np.dtype("int16"): "ShortStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("bool"): "BoolStorage",
}
_STORAGE_DTYPE: dict[str, np.dtype[Any]] = {v: k for k, v in TORCH_STORAGE.items()}


def crc32(data: Buffer, value: int = 0) -> int:
    """CRC-32 (the ZIP/gzip polynomial) of a bytes-like object, continuing from
    ``value`` (the CRC of what came before), as an unsigned int."""
    return _crc32(data, value) & 0xFFFFFFFF


def file_crc32(path: str | os.PathLike[str]) -> int:
    """CRC-32 of a whole file (memory-mapped, no copy)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return 0
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return crc32(mm)


def _pint(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if -(2**31) <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _pstr(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _pickle_tensor(storage: str, numel: int, shape: Sequence[int], strides: Sequence[int]) -> bytes:
    return b"".join(
        [
            b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((",
            _pstr("storage"),
            f"ctorch\n{storage}\n".encode(),
            _pstr("0"),
            _pstr("cpu"),
            _pint(numel),
            b"tQ",
            _pint(0),
            b"(" + b"".join(_pint(int(s)) for s in shape) + b"t",
            b"(" + b"".join(_pint(int(s)) for s in strides) + b"t",
            b"\x89ccollections\nOrderedDict\n)Rt",
            b"R.",
        ]
    )


def write_tensor(path: str | os.PathLike[str], array: npt.NDArray[Any]) -> dict[str, Any]:
    """Write ``array`` (C-contiguous) as a torch-compatible ``.pt`` file.

    Returns ``{"bytes": file size, "crc32": CRC-32 of the tensor bytes,
    "file_crc32": CRC-32 of the whole file, "offset": byte offset of the tensor
    data, "dtype", "shape"}``. The
    caller makes the write atomic (temporary name, then rename).
    """
    a = np.ascontiguousarray(array)
    storage = TORCH_STORAGE.get(a.dtype)
    if storage is None:
        raise InvalidTypeError(
            f"{path}: no torch storage for dtype {a.dtype} (one of {sorted(map(str, TORCH_STORAGE))})"
        )
    # the row-major strides of the shape (numpy reports 0 or any value for axes of size 1,
    # e.g. ``a[None]``; torch and the reader expect the contiguous ones)
    strides = [int(np.prod(a.shape[i + 1 :], dtype=np.int64)) for i in range(a.ndim)]
    payload = a.data.cast("B") if a.size else b""
    entries: list[tuple[str, bytes | memoryview]] = [
        ("data.pkl", _pickle_tensor(storage, a.size, a.shape, strides)),
        (".format_version", b"1"),
        (".storage_alignment", b"64"),
        ("byteorder", b"little"),
        ("data/0", payload),
        ("version", b"3\n"),
    ]
    central = []
    offset = 0
    data_crc = 0
    file_crc = 0
    data_offset = 0
    with open(path, "wb") as f:
        for name, data in entries:
            fname = (_PREFIX + name).encode()
            crc = crc32(data)
            size = len(data) if not isinstance(data, memoryview) else data.nbytes
            # Pad the extra field so that every entry's data is 64-byte aligned.
            start = offset + 30 + len(fname)
            pad = (-(start + 4)) % _ALIGN
            extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
            header = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0x21, crc, size, size, len(fname), len(extra))
            if name == "data/0":
                data_crc = crc
                data_offset = offset + len(header) + len(fname) + len(extra)
            head = header + fname + extra
            f.write(head)
            f.write(data)
            file_crc = crc32(data, crc32(head, file_crc))
            central.append((fname, crc, size, offset))
            offset += len(header) + len(fname) + len(extra) + size
        cd_start = offset
        for fname, crc, size, off in central:
            rec = struct.pack(
                "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0x21, crc, size, size, len(fname), 0, 0, 0, 0, 0, off
            )
            f.write(rec + fname)
            file_crc = crc32(rec + fname, file_crc)
            offset += len(rec) + len(fname)
        end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), offset - cd_start, cd_start, 0)
        f.write(end)
        file_crc = crc32(end, file_crc)
        offset += 22
    return {
        "bytes": offset,
        "crc32": data_crc,
        "file_crc32": file_crc,
        "offset": data_offset,
        "dtype": a.dtype.str,
        "shape": list(a.shape),
    }


class _Meta(pickle.Unpickler):
    """Reads data.pkl without torch: returns (storage name, numel, offset, shape, strides)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return lambda storage, offset, shape, strides, *rest: (storage, offset, tuple(shape), tuple(strides))
        if module == "torch" and name in _STORAGE_DTYPE:
            return name
        if module == "collections" and name == "OrderedDict":
            return dict
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid: Any) -> tuple[Any, Any, int]:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError("unexpected persistent id")
        return (pid[1], pid[2], int(pid[4]))


def _entries(buf: mmap.mmap, path: str) -> dict[str, tuple[int, int, int]]:
    n = len(buf)
    eocd = buf.rfind(b"PK\x05\x06", max(0, n - 65557))
    if eocd < 0 or eocd + 22 > n:
        raise PtFormatError(f"{path}: not a ZIP archive (no end record): truncated or corrupt")
    _, _, _, count, _, cd_size, cd_start, _ = struct.unpack_from("<IHHHHIIH", buf, eocd)
    if cd_start + cd_size > eocd:
        raise PtFormatError(f"{path}: central directory outside the file: truncated or corrupt")
    out: dict[str, tuple[int, int, int]] = {}
    pos = cd_start
    for _ in range(count):
        if pos + 46 > eocd or buf[pos : pos + 4] != b"PK\x01\x02":
            raise PtFormatError(f"{path}: corrupt central directory")
        fields = struct.unpack_from("<IHHHHHHIIIHHHHHII", buf, pos)
        method, crc, csize, usize, nlen, xlen, clen, off = (
            fields[4],
            fields[7],
            fields[8],
            fields[9],
            fields[10],
            fields[11],
            fields[12],
            fields[16],
        )
        name = bytes(buf[pos + 46 : pos + 46 + nlen]).decode(errors="replace")
        if off + 30 > n or buf[off : off + 4] != b"PK\x03\x04":
            raise PtFormatError(f"{path}: corrupt local header for {name}")
        lnlen, lxlen = struct.unpack_from("<HH", buf, off + 26)
        data_off = off + 30 + lnlen + lxlen
        if method != 0 or csize != usize or data_off + usize > n:
            raise PtFormatError(f"{path}: entry {name} is compressed or runs past the end of the file")
        out[name.split("/", 1)[-1]] = (data_off, usize, crc)
        pos += 46 + nlen + xlen + clen
    return out


def open_tensor(path: str | os.PathLike[str], verify: bool = False) -> npt.NDArray[Any]:
    """Zero-copy, read-only view of the tensor in a ``.pt`` file (memory-mapped).

    Structure and sizes are always checked (a truncated file raises
    :class:`PtFormatError`); ``verify=True`` also checks the CRC-32 of the data.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 22:
            raise PtFormatError(f"{path}: {size} bytes: truncated or not a tensor file")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        ents = _entries(mm, path)
        if "data.pkl" not in ents or "data/0" not in ents:
            raise PtFormatError(f"{path}: no tensor in the archive")
        off, n, _ = ents["data.pkl"]
        try:
            storage, offset, shape, strides = _Meta(_BytesView(mm, off, n)).load()
        except Exception as err:
            raise PtFormatError(f"{path}: unreadable tensor header ({err})") from None
        dtype = _STORAGE_DTYPE[storage[0]]
        numel = storage[2]
        doff, dn, dcrc = ents["data/0"]
        if dn != numel * dtype.itemsize or offset != 0 or int(np.prod(shape)) > numel:
            raise PtFormatError(f"{path}: tensor size does not match its data ({dn} bytes)")
        expected = tuple(int(np.prod(shape[i + 1 :])) for i in range(len(shape)))
        if tuple(strides) != expected:
            raise PtFormatError(f"{path}: non-contiguous tensor (strides {strides})")
        if verify and crc32(memoryview(mm)[doff : doff + dn]) != dcrc:
            raise PtFormatError(f"{path}: checksum mismatch: the data is corrupt")
        arr: npt.NDArray[Any] = np.frombuffer(mm, dtype=dtype, count=int(np.prod(shape)), offset=doff).reshape(shape)
        return arr
    except BaseException:
        mm.close()
        raise


class _BytesView:
    """File-like view of part of a buffer, for pickle."""

    def __init__(self, buf: mmap.mmap, off: int, n: int) -> None:
        self._b = memoryview(buf)[off : off + n]
        self._p = 0

    def read(self, k: int = -1) -> bytes:
        if k < 0:
            k = len(self._b) - self._p
        out = bytes(self._b[self._p : self._p + k])
        self._p += len(out)
        return out

    def readline(self) -> bytes:
        rest = bytes(self._b[self._p :])
        i = rest.find(b"\n")
        line = rest if i < 0 else rest[: i + 1]
        self._p += len(line)
        return line

    def readinto(self, b: bytearray | memoryview) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def map_file(path: str | os.PathLike[str], expected_bytes: int) -> tuple[mmap.mmap, os.stat_result]:
    """The whole file memory-mapped read-only, once its size is checked against
    ``expected_bytes`` (recorded at write time), and its ``stat``."""
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if st.st_size != expected_bytes:
            raise PtFormatError(f"{path}: {st.st_size} bytes, expected {expected_bytes}: truncated or replaced")
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)  # the mmap holds its own descriptor
    return mm, st


def view_at(
    mm: mmap.mmap,
    path: str | os.PathLike[str],
    offset: int,
    dtype: npt.DTypeLike,
    shape: Sequence[int],
    crc: int | None = None,
) -> npt.NDArray[Any]:
    """Zero-copy view of a tensor at a known data ``offset`` of a file mapped by
    :func:`map_file` (no archive parsing): the data must lie inside the file and, with
    ``crc`` (the CRC-32 recorded at write time), match it. Closes ``mm`` when it fails."""
    dt = np.dtype(dtype)
    count = math.prod(shape)
    nbytes = count * dt.itemsize
    if offset < 0 or offset + nbytes > len(mm):
        mm.close()
        raise PtFormatError(f"{os.fspath(path)}: tensor data outside the file")
    if crc is not None and crc32(memoryview(mm)[offset : offset + nbytes]) != crc:
        mm.close()
        raise PtFormatError(
            f"{os.fspath(path)}: checksum differs from the recorded one: the data is corrupt or replaced"
        )
    return np.frombuffer(mm, dtype=dt, count=count, offset=offset).reshape(shape)
