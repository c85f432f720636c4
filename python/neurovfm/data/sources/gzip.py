"""gzip streams, decoded by ISA-L: open one, check its CRC-32 and length trailer, and say
in plain words what is wrong with a corrupt or truncated one (every gzip path of the
library goes through here: NIfTI streaming and whole reads, SimpleITK's fallback).

With ``threads >= PARALLEL_MIN_THREADS`` and the optional ``rapidgzip`` installed
(``pip install neurovfm[gzip]``), :func:`open_gzip` inflates one stream on several
threads instead. rapidgzip checks every member's CRC-32 and length trailer too (it
raises on a mismatch; tests/test_gzip_parallel.py corrupts files to prove it). It needs
about 3.5 times ISA-L's CPU time per byte (bench/bench_gzip.py: it speculates where
deflate blocks start and decodes without the window), so it only wins with several
threads: at 2 it is slower than ISA-L on one.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

from ...errors import ImageReadError

if TYPE_CHECKING:
    import io

__all__ = [
    "PARALLEL_MIN_THREADS",
    "check_gzip",
    "check_trailer",
    "gzip_isize",
    "gzip_problem",
    "gzip_reason",
    "open_gzip",
    "parallel_inflate_available",
    "stream_errors",
]

#: The fewest threads at which :func:`open_gzip` inflates with rapidgzip: its speculative
#: decoding costs about 3.5x ISA-L's CPU per byte (measured at 1 and 2 threads on the
#: 1 mm head CT, bench/bench_gzip.py), so it needs 4 threads to break even.
PARALLEL_MIN_THREADS = 4
#: rapidgzip's chunk (compressed bytes one thread speculates on): its default, 4 MiB, but
#: at least two chunks per thread where the file allows, down to 1 MiB.
_CHUNK_MAX, _CHUNK_MIN = 4 << 20, 1 << 20


def parallel_inflate_available() -> bool:
    """True when the optional ``rapidgzip`` is importable."""
    try:
        import rapidgzip  # noqa: F401
    except ImportError:
        return False
    return True


def open_gzip(path: str, threads: int = 1) -> io.BufferedIOBase:
    """A binary reader of the gzip stream of ``path``: rapidgzip on ``threads`` threads
    when there are at least :data:`PARALLEL_MIN_THREADS` of them and it is installed,
    else ISA-L on one (isal imported on first use). Either checks the CRC-32 and length
    trailer of every member once the stream is read to its end."""
    if threads >= PARALLEL_MIN_THREADS:
        try:
            import rapidgzip
        except ImportError:
            pass
        else:
            size = os.path.getsize(path)
            chunk = max(_CHUNK_MIN, min(_CHUNK_MAX, size // (2 * threads)))
            return cast("io.BufferedIOBase", rapidgzip.RapidgzipFile(path, parallelization=threads, chunk_size=chunk))
    from isal import igzip

    return cast("io.BufferedIOBase", igzip.open(path, "rb"))  # type: ignore[no-untyped-call]  # unannotated


# rapidgzip's words for a bad trailer, put as ISA-L puts them (one message whichever
# decoder ran): "Mismatching CRC32 (0x<computed> <-> stored: 0x<stored>)!" and
# "Mismatching size (<decoded> <-> footer: <stored>) for gzip stream!".
_RAPIDGZIP_CRC = re.compile(r"Mismatching CRC32 \(0x([0-9a-fA-F]+) <-> stored: 0x([0-9a-fA-F]+)\)")
_RAPIDGZIP_SIZE = re.compile(r"Mismatching size \(\d+ <-> footer: \d+\)")


def gzip_reason(err: Exception) -> str:
    """What a decoder exception (ISA-L's, zlib's or rapidgzip's) says is wrong with the stream."""
    if isinstance(err, EOFError):
        return f"truncated: the compressed stream ends early ({err})"
    m = _RAPIDGZIP_CRC.search(str(err))
    if m:
        err = ValueError(f"CRC check failed {int(m.group(2), 16)} != {int(m.group(1), 16)}")
    elif _RAPIDGZIP_SIZE.search(str(err)):
        err = ValueError("Incorrect length of data produced")
    low = str(err).lower()
    if "crc" in low:
        return f"corrupt compressed data: CRC checksum mismatch ({err})"
    if "length" in low:
        return f"corrupt compressed data: the gzip length trailer does not match ({err})"
    return f"corrupt or truncated compressed data: {err}"


#: What the decoders raise on a bad stream (rapidgzip: RuntimeError for a length mismatch).
DECODE_ERRORS = (OSError, EOFError, ValueError, RuntimeError)


@contextlib.contextmanager
def stream_errors(path: str) -> Iterator[None]:
    """Turn the decoder's exceptions into ImageReadError naming the file and why."""
    try:
        yield
    except ImageReadError:
        raise
    except DECODE_ERRORS as err:
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
