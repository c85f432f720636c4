"""Compressed DICOM: the compiled decoders against SimpleITK (GDCM) and the uncompressed data.

A real CT series (ct/phantom_head_5mm) is transcoded with GDCM's ``gdcmconv`` into each
compressed transfer syntax; every lossless one must give the uncompressed series' voxels and
the same preprocessed volume, the lossy ones SimpleITK's decode within one grey level. JPEG
Lossless with every predictor, point transforms and restart intervals, RLE with multi-frame
files and frames split over fragments are encoded here (small reference encoders), since
gdcmconv writes only one flavour of each. Corrupt frames must be refused naming the file and
the frame, never crash.
"""

from __future__ import annotations

import logging
import shutil
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import MRImageStorage
from test_dicom import gdcm_files, rand_slices, sitk_series, write_series

from conftest import corpus_dir, is_phantom
from neurovfm import _core, set_num_threads
from neurovfm.data.sources import dicom
from neurovfm.data.io import load_image
from neurovfm.errors import ImageReadError

RLE = "1.2.840.10008.1.2.5"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_LS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
J2K = "1.2.840.10008.1.2.4.90"
J2K_LOSSY = "1.2.840.10008.1.2.4.91"
JPEG_14 = "1.2.840.10008.1.2.4.57"
JPEG_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_EXT = "1.2.840.10008.1.2.4.51"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

# name: (gdcmconv flags, transfer syntax it writes, lossless)
GDCMCONV = {
    "rle": (["--rle"], RLE, True),
    "jpeg_ls": (["--jpegls"], JPEG_LS, True),
    "jpeg_ls_near": (["--jpegls", "--lossy", "-e", "2"], JPEG_LS_NEAR, False),
    "j2k": (["--j2k"], J2K, True),
    "j2k_lossy": (["--j2k", "--lossy", "-q", "50"], J2K_LOSSY, False),
    "jpeg_sv1": (["--jpeg"], JPEG_SV1, True),
    "deflated": (["--deflated"], DEFLATED, True),
}
PHANTOM = "ct/phantom_head_5mm"

pytestmark = pytest.mark.usefixtures("quiet_itk")


def _need_codec(ts: str, bits: int = 12) -> None:
    if ts == DEFLATED:
        return
    name, reason = _core.dicom_codec_status(ts, bits)
    if reason:
        pytest.skip(f"{name}: {reason}")


@pytest.fixture(autouse=True)
def _threads_default():
    yield
    set_num_threads(None)


# --- the real series, transcoded with gdcmconv -----------------------------------------------


@pytest.fixture(scope="module")
def phantom(scan_dir) -> Path:
    """The real skull phantom series (512 x 512), or its phantom stand-in without the corpus."""
    return scan_dir / PHANTOM


@pytest.fixture(scope="module")
def transcode(phantom, tmp_path_factory):
    """name -> folder of the phantom series in that syntax (made once per module)."""
    exe = shutil.which("gdcmconv")
    made: dict[str, Path] = {}

    def get(name: str, flags: list[str] | None = None) -> Path:
        if exe is None:
            pytest.skip("gdcmconv not installed (apt-get install libgdcm-tools)")
        if name not in made:
            out = tmp_path_factory.mktemp(name)
            files = dicom.scan_series(phantom)[0].files
            procs = [subprocess.Popen([exe, *(flags or GDCMCONV[name][0]), f, str(out / Path(f).name)]) for f in files]
            assert all(p.wait() == 0 for p in procs), f"gdcmconv {name} failed"
            made[name] = out
        return made[name]

    return get


@pytest.mark.parametrize("name", sorted(GDCMCONV))
def test_transcoded_series_matches_simpleitk_and_uncompressed(name, transcode, phantom):
    flags, ts, lossless = GDCMCONV[name]
    _need_codec(ts)
    folder = transcode(name)
    assert _core.read_dicom_header(str(next(folder.iterdir()))).transfer_syntax == ts
    (s,) = dicom.scan_series(folder)
    assert s.fast_path
    vol = dicom.read_dicom(folder)
    assert vol.reader == "fast"
    ref = sitk.GetArrayFromImage(sitk_series(gdcm_files(folder)))
    rows = 96 if is_phantom(phantom.parents[1]) else 512  # (the stand-in: tests/phantomcorpus.py)
    assert vol.array.dtype == ref.dtype and vol.array.shape == ref.shape == (28, rows, rows)
    if lossless:
        assert np.array_equal(vol.array, ref)
        raw = dicom.read_dicom(phantom)
        assert np.array_equal(vol.array, raw.array)
        # the whole pipeline gives the uncompressed series' voxels (GDCM takes a JPEG 2000
        # file's pixel type from the codestream: gdcmconv writes 16-bit precision, so
        # SimpleITK and the library read it as int32 after the rescale, not int16)
        a = sitk.GetArrayFromImage(load_image(folder))
        b = sitk.GetArrayFromImage(load_image(phantom))
        assert np.array_equal(a, b)
        assert a.dtype == b.dtype or name == "j2k"
    else:
        diff = np.abs(vol.array.astype(np.int64) - ref.astype(np.int64))
        assert diff.max() <= 1


@pytest.mark.parametrize("name", ["rle", "jpeg_ls", "j2k", "jpeg_sv1"])
def test_transcoded_threads_identical(name, transcode):
    _need_codec(GDCMCONV[name][1])
    folder = transcode(name)
    out = []
    for n in (1, 2, 3):
        set_num_threads(n)
        out.append(dicom.read_dicom(folder).array.tobytes())
    assert out[0] == out[1] == out[2]


def test_transcoded_split_fragments(transcode, phantom, tmp_path):
    # One frame over several fragments (no offset table): joined before decoding.
    _need_codec(JPEG_LS)
    src = transcode("jpeg_ls")
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
        ds.PixelData = encapsulate([frame], fragments_per_frame=3, has_bot=False)
        ds.save_as(tmp_path / f.name)
    vol = dicom.read_dicom(tmp_path)
    assert vol.reader == "fast"
    assert np.array_equal(vol.array, sitk.GetArrayFromImage(sitk_series(gdcm_files(tmp_path))))


def test_lossy_12_bit_jpeg_falls_back_with_a_log_line(transcode, caplog):
    folder = transcode("jpeg_lossy12", ["--jpeg", "--lossy", "-q", "90"])
    assert _core.read_dicom_header(str(next(folder.iterdir()))).transfer_syntax == JPEG_EXT
    with caplog.at_level(logging.INFO, logger="neurovfm"):
        vol = dicom.read_dicom(folder)
    assert vol.reader == "simpleitk"
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "reading it with SimpleITK" in text and JPEG_EXT in text


@pytest.mark.parametrize("quality", [75, 95])
def test_lossy_8_bit_jpeg_within_one_grey_level(tmp_path, quality):
    _need_codec(JPEG_BASELINE, 8)
    exe = shutil.which("gdcmconv")
    if exe is None:
        pytest.skip("gdcmconv not installed (apt-get install libgdcm-tools)")
    arrays = smooth_slices(4, (40, 48), 256, seed=quality)
    paths = write_series(tmp_path / "raw", arrays, ba=8, sop=MRImageStorage)
    out = tmp_path / "jpeg"
    out.mkdir()
    for p in paths:
        subprocess.run([exe, "--jpeg", "--lossy", "-q", str(quality), str(p), str(out / p.name)], check=True)
    assert _core.read_dicom_header(str(out / paths[0].name)).transfer_syntax == JPEG_BASELINE
    vol = dicom.read_dicom(out)
    assert vol.reader == "fast"
    ref = sitk.GetArrayFromImage(sitk_series(gdcm_files(out)))
    assert vol.array.dtype == ref.dtype
    assert np.abs(vol.array.astype(np.int64) - ref.astype(np.int64)).max() <= 1


# --- the nine transfer syntaxes of one slice ---------------------------------------------------


def test_transfer_syntax_slices_identical():
    d = corpus_dir()
    if d is None:
        pytest.skip("real-scan corpus not available: set NEUROVFM_TEST_DATA to its folder")
    folder = d / "edge/dicom/transfer_syntaxes"
    base = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "1.dcm")))
    for i in (1, 2, 4, 5, 6, 7, 8, 9):
        f = str(folder / f"{i}.dcm")
        h = _core.read_dicom_header(f)
        _need_codec(h.transfer_syntax, h.bits_stored) if h.encapsulated else None
        assert h.fast_readable, f
        for threads in (1, 2):
            got = _core.read_dicom_pixels([f], [h], h.output_dtype, threads)
            ref = sitk.GetArrayFromImage(sitk.ReadImage(f))
            assert got.dtype == ref.dtype and np.array_equal(got, ref), f
            assert np.array_equal(got, base), f


# --- reference encoders -----------------------------------------------------------------------


def packbits(b: bytes) -> bytes:
    """PackBits (RLE Lossless segments): replicate runs of 3+, literal runs otherwise."""
    out = bytearray()
    i, n = 0, len(b)
    while i < n:
        j = i
        while j < n and j - i < 128 and b[j] == b[i]:
            j += 1
        if j - i >= 3:
            out += bytes([257 - (j - i), b[i]])
            i = j
            continue
        j = i
        while j < n and j - i < 128 and not (j + 2 < n and b[j] == b[j + 1] == b[j + 2]):
            j += 1
        out += bytes([j - i - 1]) + b[i:j]
        i = j
    if len(out) % 2:
        out += b"\x80"  # no-op
    return bytes(out)


def rle_frame(a: np.ndarray) -> bytes:
    """One RLE Lossless frame of a 2D uint8/uint16/int16 array."""
    nbytes = a.dtype.itemsize
    raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
    segs = [packbits(raw[nbytes - 1 - k :: nbytes]) for k in range(nbytes)]
    offsets, at = [], 64
    for s in segs:
        offsets.append(at)
        at += len(s)
    header = struct.pack("<16I", len(segs), *offsets, *([0] * (15 - len(segs))))
    return header + b"".join(segs)


class _Bits:
    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def put(self, v: int, k: int) -> None:
        self.acc = (self.acc << k) | (v & ((1 << k) - 1))
        self.n += k
        while self.n >= 8:
            byte = (self.acc >> (self.n - 8)) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0)
            self.n -= 8

    def flush(self) -> bytes:
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)
        data = bytes(self.out)
        self.out.clear()
        return data


def jpeg_lossless(a: np.ndarray, precision: int, predictor: int, pt: int = 0, restart_rows: int = 0) -> bytes:
    """JPEG Lossless process 14 (T.81 Annex H), one component, one Huffman table of 17
    five-bit codes (symbols 0..16)."""
    h, w = a.shape
    x = a.astype(np.int64) >> pt
    sof = struct.pack(">BHHB", precision, h, w, 1) + bytes([1, 0x11, 0])
    dht = bytes([0x00]) + bytes([0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17))
    seg = b"\xff\xd8" + b"\xff\xc3" + struct.pack(">H", len(sof) + 2) + sof
    seg += b"\xff\xc4" + struct.pack(">H", len(dht) + 2) + dht
    if restart_rows:
        seg += b"\xff\xdd" + struct.pack(">HH", 4, restart_rows * w)
    sos = bytes([1, 1, 0x00, predictor, 0, pt])
    seg += b"\xff\xda" + struct.pack(">H", len(sos) + 2) + sos
    bits = _Bits()
    first = True
    rst = 0
    for r in range(h):
        if restart_rows and r and r % restart_rows == 0:
            seg_data = bits.flush()
            seg += seg_data + bytes([0xFF, 0xD0 + rst % 8])
            rst += 1
            first = True
        for c in range(w):
            if first:
                px = (1 << (precision - pt - 1)) if c == 0 else x[r, c - 1]
            elif c == 0:
                px = x[r - 1, 0]
            else:
                ra, rb, rc = int(x[r, c - 1]), int(x[r - 1, c]), int(x[r - 1, c - 1])
                px = {
                    1: ra,
                    2: rb,
                    3: rc,
                    4: ra + rb - rc,
                    5: ra + ((rb - rc) >> 1),
                    6: rb + ((ra - rc) >> 1),
                    7: (ra + rb) >> 1,
                }[predictor]
            d = (int(x[r, c]) - int(px)) % 65536
            if d >= 32768:
                d -= 65536
            if d == -32768:
                bits.put(16, 5)
                continue
            s = abs(d).bit_length()
            bits.put(s, 5)
            if s:
                bits.put(d if d > 0 else d - 1, s)
        first = False
    return seg + bits.flush() + b"\xff\xd9"


def recompress(path: Path, frames: list[bytes], ts: str, *, bot: bool = False, per_frame: int = 1) -> None:
    """Rewrites a native file's pixel data as these encapsulated frames."""
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = ts
    ds.PixelData = encapsulate(frames, fragments_per_frame=per_frame, has_bot=bot)
    ds["PixelData"].VR = "OB"
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.save_as(path, enforce_file_format=True)


def smooth_slices(n: int, shape: tuple[int, int], hi: int, seed: int, signed: bool = False) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = []
    for _ in range(n):
        base = (np.sin(xx / 3.0 + rng.uniform(0, 6)) + np.cos(yy / 4.0)) * hi / 5 + hi / 2
        a = np.clip(base + rng.integers(-hi // 20 - 1, hi // 20 + 1, shape), 0, hi - 1)
        if signed:
            a = a - hi // 2
        a[0, 0] = 0 if not signed else -hi // 2  # extremes
        a[-1, -1] = hi - 1 if not signed else hi // 2 - 1
        out.append(a.astype(np.int16 if signed else (np.uint8 if hi <= 256 else np.uint16)))
    return out


# --- JPEG Lossless: every predictor, point transform, restart intervals -----------------------


@pytest.mark.parametrize("predictor", range(1, 8))
@pytest.mark.parametrize(("bits", "pt", "restart"), [(12, 0, 0), (16, 0, 2), (12, 2, 0), (8, 1, 3)])
def test_jpeg_lossless_predictors(tmp_path, predictor, bits, pt, restart):
    hi = 1 << bits
    arrays = smooth_slices(3, (11, 13), hi, seed=predictor * 7 + bits)
    paths = write_series(tmp_path, arrays, ba=8 if bits == 8 else 16, bs=bits)
    for p, a in zip(paths, arrays):
        recompress(p, [jpeg_lossless(a, bits, predictor, pt, restart)], JPEG_14 if predictor > 1 or pt else JPEG_SV1)
    vol = dicom.read_dicom(tmp_path)
    assert vol.reader == "fast"
    expect = np.stack(arrays) >> pt << pt
    assert np.array_equal(vol.array, expect.astype(vol.array.dtype))
    ref = sitk.GetArrayFromImage(sitk_series(gdcm_files(tmp_path)))
    assert vol.array.dtype == ref.dtype and np.array_equal(vol.array, ref)


def test_jpeg_lossless_signed(tmp_path):
    arrays = smooth_slices(3, (9, 10), 4096, seed=3, signed=True)
    paths = write_series(tmp_path, arrays, pr=1, bs=12, intercepts=[-1024] * 3)
    for p, a in zip(paths, arrays):
        recompress(p, [jpeg_lossless(a.astype(np.int64) & 0xFFF, 12, 6)], JPEG_14)
    vol = dicom.read_dicom(tmp_path)
    assert vol.reader == "fast"
    ref = sitk.GetArrayFromImage(sitk_series(gdcm_files(tmp_path)))
    assert vol.array.dtype == ref.dtype and np.array_equal(vol.array, ref)


@pytest.mark.parametrize(
    ("precision", "hi", "bs", "pr", "intercept"),
    [(16, 65536, 12, 0, None), (16, 4096, 12, 0, -1024), (12, 4096, 16, 0, -1024), (16, 65536, 12, 1, -1024)],
)
def test_jpeg_lossless_precision_differs_from_bits_stored(tmp_path, precision, hi, bs, pr, intercept):
    # GDCM lowers BitsStored to a smaller stream precision (the output type follows), and
    # masks to BitsStored when the stream holds more bits: the same pixels and type here.
    rng = np.random.default_rng(precision + bs)
    arrays = [rng.integers(0, hi, (8, 9)).astype(np.uint16) for _ in range(3)]
    stored = [a.view(np.int16) for a in arrays] if pr else arrays
    paths = write_series(tmp_path, stored, bs=bs, pr=pr, intercepts=[intercept] * 3 if intercept else None)
    for p, a in zip(paths, arrays):
        recompress(p, [jpeg_lossless(a, precision, 1)], JPEG_14)
    vol = dicom.read_dicom(tmp_path)
    assert vol.reader == "fast"
    ref = sitk.GetArrayFromImage(sitk_series(gdcm_files(tmp_path)))
    assert vol.array.dtype == ref.dtype and np.array_equal(vol.array, ref)


# --- RLE: 8/16 bit, signed, multi-frame, fragments, offset tables -----------------------------


@pytest.mark.parametrize(("ba", "bs", "pr"), [(8, 8, 0), (16, 12, 0), (16, 16, 1), (16, 12, 1)])
def test_rle_series(tmp_path, ba, bs, pr):
    lo, hi = (-(1 << (bs - 1)), 1 << (bs - 1)) if pr else (0, 1 << bs)
    dt = {(8, 0): np.uint8, (16, 0): np.uint16, (16, 1): np.int16}[(ba, pr)]
    arrays = rand_slices(4, (17, 23), lo, hi, dt, seed=bs)
    arrays[1][:5] = arrays[1][0, 0]  # long runs
    paths = write_series(tmp_path, arrays, ba=ba, bs=bs, pr=pr)
    for p, a in zip(paths, arrays):
        recompress(p, [rle_frame(a)], RLE, per_frame=2 if ba == 16 else 1)
    for threads in (1, 2, 3):
        set_num_threads(threads)
        vol = dicom.read_dicom(tmp_path)
        assert vol.reader == "fast"
        ref = sitk.GetArrayFromImage(sitk_series(gdcm_files(tmp_path)))
        assert vol.array.dtype == ref.dtype and np.array_equal(vol.array, ref)
        assert np.array_equal(vol.array, np.stack(arrays))


@pytest.mark.parametrize(("bot", "per_frame"), [(False, 1), (True, 1), (True, 3)])
def test_rle_multiframe_decoded_in_parallel(tmp_path, bot, per_frame):
    arrays = rand_slices(7, (31, 29), 0, 4096, np.uint16, seed=5)
    (path,) = write_series(tmp_path, arrays[:1], bs=12)
    recompress(path, [rle_frame(a) for a in arrays], RLE, bot=bot, per_frame=per_frame)
    h = _core.read_dicom_header(str(path))
    assert h.encapsulated and h.compressed_readable and h.number_of_frames == 7
    outs = [_core.read_dicom_pixels([str(path)], [h], np.dtype("uint16"), n) for n in (1, 2, 3)]
    for got in outs:
        assert np.array_equal(got, np.stack(arrays))
    if per_frame == 1:  # (GDCM fails on frames split over fragments of an RLE file)
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        assert np.array_equal(outs[0], ref.reshape(outs[0].shape))


def test_rle_multiframe_fragments_without_offset_table_refused(tmp_path):
    arrays = rand_slices(3, (8, 8), 0, 4096, np.uint16, seed=1)
    (path,) = write_series(tmp_path, arrays[:1], bs=12)
    recompress(path, [rle_frame(a) for a in arrays], RLE, per_frame=2)
    h = _core.read_dicom_header(str(path))
    with pytest.raises(ImageReadError, match="cannot tell the 3 frames apart") as info:
        _core.read_dicom_pixels([str(path)], [h], np.dtype("uint16"), 2)
    assert info.value.path == str(path)


# --- corrupt and truncated frames: refused, naming the file and the frame ---------------------


def _one_frame(path: Path) -> bytes:
    ds = pydicom.dcmread(path)
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    return frame


def _corrupt_copy(src: Path, tmp_path: Path, mutate) -> Path:
    files = sorted(src.iterdir())[:3]
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    bad = tmp_path / files[1].name
    ds = pydicom.dcmread(bad)
    ds.PixelData = encapsulate([mutate(_one_frame(bad))])
    ds.save_as(bad)
    return bad


def _flip_rle_header(b: bytes) -> bytes:
    return b[:4] + struct.pack("<I", 0x7FFFFFF0) + b[8:]


def _bad_jls_marker(b: bytes) -> bytes:
    i = b.index(b"\xff\xf7")  # SOF55
    return b[:i] + b"\xff\xf1" + b[i + 2 :]


CORRUPT = {
    "rle_header": ("rle", RLE, _flip_rle_header, "RLE: segment"),
    "rle_segment_count": ("rle", RLE, lambda b: b"\x07" + b[1:], "RLE: 7 segments"),
    "rle_cut": ("rle", RLE, lambda b: b[: len(b) // 2], "RLE: "),
    "jls_marker": ("jpeg_ls", JPEG_LS, _bad_jls_marker, "JPEG-LS"),
    "jls_cut": ("jpeg_ls", JPEG_LS, lambda b: b[: len(b) // 2], "JPEG-LS"),
    "j2k_cut": ("j2k", J2K, lambda b: b[: len(b) // 2], "JPEG 2000"),
    "j2k_header": ("j2k", J2K, lambda b: b[:4] + b"\xff\xff" * 8 + b[20:], "JPEG 2000"),
    "jpeg_cut": ("jpeg_sv1", JPEG_SV1, lambda b: b[: len(b) // 2], "JPEG: "),
    "jpeg_no_soi": ("jpeg_sv1", JPEG_SV1, lambda b: b"\x00" + b[1:], "start-of-image"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_frames_refused(case, transcode, tmp_path):
    name, ts, mutate, match = CORRUPT[case]
    _need_codec(ts)
    bad = _corrupt_copy(transcode(name), tmp_path, mutate)
    with pytest.raises(ImageReadError, match=match) as info:
        dicom.read_dicom(tmp_path)
    assert info.value.path == str(bad)
    assert "frame 0" in info.value.reason


def test_cut_jpeg_ls_frames_refused_quickly(transcode, tmp_path):
    """A JPEG-LS frame cut anywhere in its scan data is refused without the seconds CharLS
    spends reading the missing bytes as zeros (it is handed an end-of-image marker after
    the data): five cuts take less than 50 reads of the intact 3-file series. A frame
    that is whole but lacks its EOI marker still decodes, to the same pixels."""
    _need_codec(JPEG_LS)
    src = transcode("jpeg_ls")
    for d in ("intact", "no_eoi", *(f"cut{k}" for k in range(5))):
        (tmp_path / d).mkdir()
    _corrupt_copy(src, tmp_path / "intact", lambda b: b)
    dicom.read_dicom(tmp_path / "intact")  # warm
    t0 = time.perf_counter()
    want = dicom.read_dicom(tmp_path / "intact").array
    intact = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k, frac in enumerate((0.2, 0.4, 0.6, 0.8, 0.95)):
        d = tmp_path / f"cut{k}"
        bad = _corrupt_copy(src, d, lambda b, frac=frac: b[: int(len(b) * frac)])
        with pytest.raises(ImageReadError, match="JPEG-LS") as info:
            dicom.read_dicom(d)
        assert info.value.path == str(bad)
    assert time.perf_counter() - t0 < 50 * intact + 0.5
    no_eoi = tmp_path / "no_eoi"
    _corrupt_copy(src, no_eoi, lambda b: b[: b.rindex(b"\xff\xd9")])
    assert np.array_equal(dicom.read_dicom(no_eoi).array, want)


def test_truncated_file_refused(transcode, tmp_path):
    # the file cut inside its pixel data: the fragment runs past the end
    src = sorted(transcode("rle").iterdir())[:3]
    for f in src:
        shutil.copy(f, tmp_path / f.name)
    bad = tmp_path / src[2].name
    bad.write_bytes(bad.read_bytes()[:-3000])
    with pytest.raises(ImageReadError, match="truncated") as info:
        dicom.read_dicom(tmp_path)
    assert info.value.path == str(bad)


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_truncated_deflated_file_refused(transcode, tmp_path, cut):
    src = sorted(transcode("deflated").iterdir())[:3]
    for f in src:
        shutil.copy(f, tmp_path / f.name)
    bad = tmp_path / src[1].name
    data = bad.read_bytes()
    bad.write_bytes(data[: int(len(data) * cut)])
    assert "deflated dataset is truncated" in _core.read_dicom_header(str(bad)).error
    # an unreadable header: the file is left out of the series (as any unreadable file)
    assert all(str(bad) not in s.files for s in dicom.scan_series(tmp_path))


# --- fuzz: any mutation of a valid frame decodes or raises ImageReadError ----------------------


@pytest.fixture(scope="module")
def fuzz_frames(tmp_path_factory) -> dict[str, tuple[Path, bytes]]:
    """One small valid file per codec the build has: (path, its frame)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    a = smooth_slices(1, (12, 9), 4096, seed=9)[0]
    frames = {RLE: rle_frame(a), JPEG_14: jpeg_lossless(a, 12, 4, 1, 4)}
    out = {}
    for ts, frame in frames.items():
        (p,) = write_series(tmp / ts, [a], bs=12)
        recompress(p, [frame], ts)
        out[ts] = (p, frame)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    which=st.sampled_from([RLE, JPEG_14]),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 10_000)),
    threads=st.sampled_from([1, 2]),
)
def test_fuzz_compressed_frames(fuzz_frames, tmp_path_factory, which, flips, cut, threads):
    path, frame = fuzz_frames[which]
    b = bytearray(frame)
    for at, v in flips:
        b[at % len(b)] = v
    if cut is not None:
        b = b[: cut % (len(b) + 1)]
    b += b"\x00" * (2 - len(b) if len(b) < 2 else len(b) % 2)  # an item holds an even length
    out = tmp_path_factory.mktemp("case") / "x.dcm"
    shutil.copy(path, out)
    ds = pydicom.dcmread(out)
    ds.PixelData = encapsulate([bytes(b)])
    ds.save_as(out)
    h = _core.read_dicom_header(str(out))
    try:
        got = _core.read_dicom_pixels([str(out)], [h], np.dtype("uint16"), threads)
    except ImageReadError as e:
        assert e.path == str(out) and "frame 0" in e.reason
    else:
        assert got.shape == (1, 12, 9)
