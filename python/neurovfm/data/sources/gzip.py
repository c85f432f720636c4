"""gzip streams, decoded by ISA-L: open one, check its CRC-32 and length trailer, and say
in plain words what is wrong with a corrupt or truncated one (every gzip path of the
library goes through here: NIfTI streaming and whole reads, SimpleITK's fallback)."""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

from ...errors import ImageReadError

if TYPE_CHECKING:
    import io

    from isal.igzip import IGzipFile

__all__ = ["check_gzip", "check_trailer", "gzip_isize", "gzip_problem", "gzip_reason", "open_gzip", "stream_errors"]


def open_gzip(path: str) -> IGzipFile:
    """ISA-L's gzip decoder reading ``path`` (binary; isal imported on first use)."""
    from isal import igzip

    f: IGzipFile = igzip.open(path, "rb")  # type: ignore[no-untyped-call]  # isal's igzip.open is unannotated
    return f


def gzip_reason(err: Exception) -> str:
    """What a decoder exception (ISA-L's or zlib's) says is wrong with the stream."""
    if isinstance(err, EOFError):
        return f"truncated: the compressed stream ends early ({err})"
    low = str(err).lower()
    if "crc" in low:
        return f"corrupt compressed data: CRC checksum mismatch ({err})"
    if "length" in low:
        return f"corrupt compressed data: the gzip length trailer does not match ({err})"
    return f"corrupt or truncated compressed data: {err}"


@contextlib.contextmanager
def stream_errors(path: str) -> Iterator[None]:
    """Turn the decoder's exceptions into ImageReadError naming the file and why."""
    try:
        yield
    except ImageReadError:
        raise
    except (OSError, EOFError, ValueError) as err:
        raise ImageReadError(path, gzip_reason(err)) from None


def gzip_problem(path: str, need: int, vox_offset: int = 0) -> str | None:
    """Why the gzip stream of ``path`` does not decode to at least ``need`` bytes and
    then end cleanly (CRC and length trailer checked); None when it does. Decodes at
    most about ``need`` bytes plus 64 MB (bounded time)."""
    got = 0
    try:
        with open_gzip(path) as f:
            while got <= need + (64 << 20):
                k = len(f.read(1 << 20))
                if not k:
                    break
                got += k
    except (OSError, EOFError, ValueError) as err:
        return gzip_reason(err) + (f" (after {got} decoded bytes)" if got else "")
    if got < vox_offset:
        return f"voxel offset {vox_offset} is past the end of the decoded data ({got} bytes)"
    if got < need:
        return f"truncated or bad dimensions: the header needs {need} bytes, the stream decodes to {got}"
    return None


def gzip_isize(path: str) -> int:
    """The gzip trailer's ISIZE (decoded length mod 2**32 of the last member)."""
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        return cast(int, struct.unpack("<I", f.read(4))[0])


def check_trailer(f: io.BufferedIOBase, path: str) -> None:
    """After the voxels of a ``.gz``: decode what is left, to the end of the stream, so
    that the CRC-32 and length trailer of every member are checked."""
    buf = bytearray(1 << 20)
    with stream_errors(path):
        while f.readinto(buf):
            pass


def check_gzip(path: str) -> None:
    """Decode the whole gzip stream of ``path`` (ISA-L, into one reused buffer): raise
    ImageReadError naming the file unless every member's CRC-32 and length trailer match."""
    try:
        f = open_gzip(path)
    except OSError as err:
        raise ImageReadError(path, gzip_reason(err)) from None
    with f:
        check_trailer(f, path)
