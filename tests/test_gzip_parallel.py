"""Parallel inflate (rapidgzip, optional) gives ISA-L's bytes and checks the CRC and length
trailer just as strictly; without rapidgzip the library falls back to ISA-L. And the
resampling kernel's chunked first passes give the bytes of one whole-volume pass."""

from __future__ import annotations

import gzip as stdlib_gzip
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import neurovfm
from neurovfm import _core
from neurovfm.data import io, load_image, preprocess_image
from neurovfm.data.sources import gzip as G
from neurovfm.data.sources import nifti
from neurovfm.errors import ImageReadError

CRC = r"corrupt compressed data: CRC checksum mismatch \(CRC check failed \d+ != \d+\)"
LENGTH = r"corrupt compressed data: the gzip length trailer does not match \(Incorrect length of data produced\)"


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    neurovfm.set_num_threads(None)


@pytest.fixture(scope="module")
def thin_ct(tmp_path_factory):
    """A CT stored along an axis other than its slice axis (decoded whole, not streamed:
    docs/numbers.md, "Resampling order"), a few MiB of gzip so that rapidgzip splits it
    into several chunks."""
    rng = np.random.default_rng(3)
    arr = rng.integers(-1024, 2000, size=(256, 224, 48)).astype(np.int16)
    arr[:40] = -1024  # some compressible air
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 0.45, 0.45))  # slice axis x (SimpleITK), storage axis z
    p = tmp_path_factory.mktemp("gz") / "thin.nii.gz"
    sitk.WriteImage(img, str(p), useCompression=True)
    return str(p)


def _flip(src: str, dst, offset: int, mask: int) -> str:
    b = bytearray(Path(src).read_bytes())
    b[offset] ^= mask
    dst.write_bytes(bytes(b))
    return str(dst)


def test_open_gzip_picks_the_decoder(thin_ct):
    with G.open_gzip(thin_ct, 1) as f:
        assert type(f).__module__.startswith("isal")
    with G.open_gzip(thin_ct, G.PARALLEL_MIN_THREADS - 1) as f:
        assert type(f).__module__.startswith("isal")
    if G.parallel_inflate_available():
        with G.open_gzip(thin_ct, G.PARALLEL_MIN_THREADS) as f:
            assert type(f).__module__.startswith("rapidgzip")


def test_fallback_without_rapidgzip(thin_ct, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rapidgzip", None)  # import rapidgzip -> ImportError
    assert not G.parallel_inflate_available()
    with G.open_gzip(thin_ct, 16) as f:
        assert type(f).__module__.startswith("isal")
    a = nifti.read_nifti(thin_ct, threads=16).array
    assert np.array_equal(a, nifti.read_nifti(thin_ct, threads=1).array)
    bad = _flip(thin_ct, tmp_path / "crc.nii.gz", -8, 0xFF)
    with pytest.raises(ImageReadError, match=CRC):
        nifti.read_nifti(bad, threads=16)


@pytest.mark.parametrize("threads", [1, 2, 4, 7])
def test_parallel_inflate_same_voxels(thin_ct, threads):
    pytest.importorskip("rapidgzip")
    one = nifti.read_nifti(thin_ct, threads=1).array
    many = nifti.read_nifti(thin_ct, threads=threads, keep_buffer=False).array
    assert np.array_equal(one, many)
    with stdlib_gzip.open(thin_ct, "rb") as f:
        f.read(352)
        assert many.tobytes() == f.read()


def test_load_image_same_bytes_any_decoder(thin_ct):
    """The whole-read path at 1 thread (ISA-L) and at 4 (rapidgzip) gives the bytes of
    preprocess_image on SimpleITK's own read."""
    neurovfm.set_num_threads(1)
    assert io._stream_plan(nifti.nifti_layout(thin_ct)) is None  # decoded whole
    want = sitk.GetArrayFromImage(preprocess_image(sitk.ReadImage(thin_ct)))
    for threads in (1, 2, G.PARALLEL_MIN_THREADS):
        neurovfm.set_num_threads(threads)
        got = sitk.GetArrayFromImage(load_image(thin_ct))
        assert got.tobytes() == want.tobytes(), threads


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize(
    ("offset", "mask", "message"),
    [(-8, 0xFF, CRC), (-5, 0x10, CRC), (-3, 0x01, LENGTH), ("middle", 0x55, None)],
)
def test_corrupt_stream_any_decoder(thin_ct, tmp_path, threads, offset, mask, message):
    """A bad CRC, a bad ISIZE, or a flipped byte inside the deflate data: the library's
    error naming the file, whichever decoder runs (rapidgzip's own CRC check included)."""
    if threads >= G.PARALLEL_MIN_THREADS:
        pytest.importorskip("rapidgzip")
    size = os.path.getsize(thin_ct)
    bad = _flip(thin_ct, tmp_path / "bad.nii.gz", size // 2 if offset == "middle" else offset, mask)
    with pytest.raises(ImageReadError, match=message or "corrupt") as e:
        nifti.read_nifti(bad, threads=threads)
    assert bad in str(e.value)
    # check_gzip (the SimpleITK fallback's check) and the raw reader agree.
    with pytest.raises(ImageReadError, match=message or "corrupt"):
        with G.open_gzip(bad, threads) as f:
            G.check_trailer(f, bad)
    neurovfm.set_num_threads(threads)
    with pytest.raises(ImageReadError, match=message or "corrupt"):
        load_image(bad)


def test_gzip_reason_speaks_isal():
    crc = ValueError("Mismatching CRC32 (0x2183042c <-> stored: 0x218304d3)!")
    assert G.gzip_reason(crc) == (
        f"corrupt compressed data: CRC checksum mismatch (CRC check failed {0x218304D3} != {0x2183042C})"
    )
    size = RuntimeError("Mismatching size (20000000 <-> footer: 19999744) for gzip stream!")
    assert G.gzip_reason(size).startswith("corrupt compressed data: the gzip length trailer does not match")


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_chunked_first_passes_equal_slabs(threads):
    """first_two_passes cuts the volume into chunks along its third axis (several here);
    StreamResampler pushes other slabs of it: the same bytes, every thread count."""
    rng = np.random.default_rng(11)
    vol = rng.integers(-1024, 3000, size=(72, 320, 240)).astype(np.int16)
    n_out, start, t, s = [16, 144, 112], [1, 3, 2], [4.0, 1.0, 1.0], [1.0, 0.45, 0.45]
    assert _core.resample_order(vol.shape, n_out) == [0, 1, 2]
    whole = _core.resample_bspline(vol, n_out, start, t, s, threads)
    sr = _core.StreamResampler(vol.dtype, vol.shape, 2, n_out, start, t, s)
    for x0 in range(0, 240, 37):
        sr.push(vol[:, :, x0 : x0 + 37], x0, threads)
    assert sr.finish(threads).tobytes() == whole.tobytes()
    flipped = _core.resample_bspline(vol[:, ::-1, ::-1], n_out, start, t, s, threads)
    sr = _core.StreamResampler(vol.dtype, vol.shape, 2, n_out, start, t, s)
    for x0 in range(0, 240, 61):
        sr.push(vol[:, ::-1, ::-1][:, :, x0 : x0 + 61], x0, threads)
    assert sr.finish(threads).tobytes() == flipped.tobytes()


@pytest.mark.parametrize(("offset", "message"), [(-8, CRC), (-3, LENGTH)])
def test_small_stream_checked_early(tmp_path, offset, message):
    """rapidgzip checks a short stream's trailer as soon as it decodes it (here while the
    header is skipped): the same error, every entry point."""
    pytest.importorskip("rapidgzip")
    # Past ISA-L's first read of the header (which would see the trailer of a tinier one).
    arr = np.random.default_rng(5).integers(-1000, 1500, (40, 64, 48)).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.5, 1.0))
    good = tmp_path / "small.nii.gz"
    sitk.WriteImage(img, str(good), useCompression=True)
    bad = _flip(str(good), tmp_path / "bad.nii.gz", offset, 0x01)
    neurovfm.set_num_threads(G.PARALLEL_MIN_THREADS)
    for call in (lambda: nifti.read_nifti(bad), lambda: load_image(bad), lambda: load_image(bad, preprocess=False)):
        with pytest.raises(ImageReadError, match=message) as e:
            call()
        assert bad in str(e.value)
