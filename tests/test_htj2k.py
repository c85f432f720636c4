"""HTJ2K DICOM (1.2.840.10008.1.2.4.201, .202, .203): the compiled reader against SimpleITK
and the uncompressed series.

Real series from the corpus are transcoded here: each slice is encoded with OpenJPH's
``ojph_compress`` (Debian ``openjph-tools``) and wrapped with pydicom as encapsulated pixel
data under the HTJ2K transfer syntax. Lossless frames must give SimpleITK's pixels and the
uncompressed series' volume exactly; lossy ones SimpleITK's within a tested bound. Corrupt
and truncated frames raise :class:`ImageReadError` naming the file, never crash or hang.

``ojph_compress`` 0.9 reads raw samples as unsigned: it cannot write a signed codestream
holding negative values. Signed CT (ct/head_tilt_ge) is therefore encoded as its 16-bit
two's-complement pattern in an unsigned codestream (GDCM, and this reader, keep the
header's signedness when only that differs); the signed codestream path is exercised with
an MR series (no negative values) whose header is marked signed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.encaps import encapsulate, generate_frames
from test_dicom import gdcm_files, rand_slices, sitk_series, write_series

from conftest import corpus_dir
from neurovfm import _core, set_num_threads
from neurovfm.data.sources import dicom
from neurovfm.data.io import load_image
from neurovfm.errors import ImageReadError

HTJ2K = "1.2.840.10008.1.2.4.201"
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K_ANY = "1.2.840.10008.1.2.4.203"

pytestmark = pytest.mark.usefixtures("quiet_itk")


@pytest.fixture(autouse=True)
def _threads_default():
    yield
    set_num_threads(None)


def _need_htj2k() -> None:
    name, reason = _core.dicom_codec_status(HTJ2K, 16)
    if reason:
        pytest.skip(f"{name}: {reason}")


def _ojph() -> str:
    exe = shutil.which("ojph_compress")
    if exe is None:
        pytest.skip("ojph_compress not installed (apt-get install openjph-tools)")
    return exe


def _corpus(rel: str) -> Path:
    d = corpus_dir()
    if d is None:
        pytest.skip("real-scan corpus not available: set NEUROVFM_TEST_DATA to its folder")
    return d / rel


def encode(a: np.ndarray, tmp: Path, *, bits: int, signed: bool, ts: str, lossy: bool = False) -> bytes:
    """One HTJ2K codestream of a 2D 16-bit array with ojph_compress (raw input: the
    samples' 16-bit pattern, little endian)."""
    raw, out = tmp / "frame.raw", tmp / "frame.j2c"
    a.astype(a.dtype.newbyteorder("<")).tofile(raw)
    h, w = a.shape
    cmd = [_ojph(), "-i", str(raw), "-o", str(out), "-dims", f"{{{w},{h}}}", "-num_comps", "1"]
    cmd += ["-signed", "true" if signed else "false", "-bit_depth", str(bits), "-downsamp", "{1,1}"]
    cmd += ["-reversible", "false", "-qstep", "0.002"] if lossy else ["-reversible", "true"]
    if ts == HTJ2K_RPCL:
        cmd += ["-prog_order", "RPCL"]
    subprocess.run(cmd, check=True, capture_output=True)
    return out.read_bytes()


def transcode(
    src: Path, out: Path, *, ts: str, bits: int, signed: bool = False, lossy: bool = False, mark_signed: bool = False
) -> Path:
    """The series in `src` as HTJ2K files in `out` (and, with mark_signed, the native copy
    with PixelRepresentation 1 beside it, in out/../native)."""
    out.mkdir(parents=True)
    work = out.parent / "work"
    work.mkdir()
    (series,) = dicom.scan_series(src)
    for f in series.files:
        ds = pydicom.dcmread(f)
        if mark_signed:
            ds.PixelRepresentation = 1
            (out.parent / "native").mkdir(exist_ok=True)
            ds.save_as(out.parent / "native" / Path(f).name)
        a = ds.pixel_array
        pattern = a.astype(np.int16).view(np.uint16) if a.dtype == np.int16 and not signed else a
        ds.PixelData = encapsulate([encode(pattern, work, bits=bits, signed=signed, ts=ts, lossy=lossy)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = ts
        ds.save_as(out / Path(f).name, enforce_file_format=True)
    shutil.rmtree(work)
    return out


# (corpus series, transfer syntax, codestream bit depth, signed codestream, header marked signed)
LOSSLESS = {
    "ct_tilt_201": ("ct/head_tilt_ge", HTJ2K, 16, False, False),
    "ct_tilt_202": ("ct/head_tilt_ge", HTJ2K_RPCL, 16, False, False),
    "ct_phantom_12bit_203": ("ct/phantom_head_5mm", HTJ2K_ANY, 12, False, False),
    "ct_phantom_16bit_201": ("ct/phantom_head_5mm", HTJ2K, 16, False, False),
    "mr_12bit_201": ("mr/sag_t1_2d_thick", HTJ2K, 12, False, False),
    "mr_signed_201": ("mr/sag_t1_2d_thick", HTJ2K, 16, True, True),
}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """case -> folder of HTJ2K files (made once per module)."""
    cache: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in cache:
            rel, ts, bits, signed, mark = LOSSLESS[case]
            src = _corpus(rel)
            _ojph()
            cache[case] = transcode(
                src, tmp_path_factory.mktemp(case) / "htj2k", ts=ts, bits=bits, signed=signed, mark_signed=mark
            )
        return cache[case]

    return get


@pytest.mark.parametrize("case", sorted(LOSSLESS))
def test_lossless_series_exact(case, made):
    _need_htj2k()
    rel, ts, *_ = LOSSLESS[case]
    folder = made(case)
    native = folder.parent / "native" if LOSSLESS[case][4] else _corpus(rel)
    assert _core.read_dicom_header(str(sorted(folder.iterdir())[0])).transfer_syntax == ts
    (s,) = dicom.scan_series(folder)
    assert s.fast_path
    vol = dicom.read_dicom(folder)
    assert vol.reader == "fast"
    ref = sitk.GetArrayFromImage(sitk_series(gdcm_files(folder)))
    assert vol.array.dtype == ref.dtype and vol.array.shape == ref.shape
    assert np.array_equal(vol.array, ref)  # SimpleITK's pixels, and its output type
    raw = dicom.read_dicom(native)
    assert np.array_equal(vol.array, raw.array)  # the uncompressed series' voxels
    a = sitk.GetArrayFromImage(load_image(folder, preprocess=False))
    b = sitk.GetArrayFromImage(load_image(native, preprocess=False))
    assert np.array_equal(a, b)
    # a 16-bit codestream of 12-bit data: GDCM (so SimpleITK) takes the stream's precision,
    # uint16 after the rescale is int32, as for gdcmconv's JPEG 2000
    assert a.dtype == b.dtype or case == "ct_phantom_16bit_201"


def test_threads_identical(made):
    _need_htj2k()
    folder = made("ct_tilt_201")
    out = []
    for n in (1, 2, 3):
        set_num_threads(n)
        out.append(dicom.read_dicom(folder).array.tobytes())
    assert out[0] == out[1] == out[2]


def test_lossy_within_bound_of_simpleitk(tmp_path):
    _need_htj2k()
    src = _corpus("ct/phantom_head_5mm")
    folder = transcode(src, tmp_path / "lossy", ts=HTJ2K_ANY, bits=12, lossy=True)
    vol = dicom.read_dicom(folder)
    assert vol.reader == "fast"
    ref = sitk.GetArrayFromImage(sitk_series(gdcm_files(folder)))
    assert vol.array.dtype == ref.dtype
    diff = np.abs(vol.array.astype(np.int64) - ref.astype(np.int64))
    assert diff.max() <= 1
    # and it is lossy: close to the uncompressed series, not equal
    raw = dicom.read_dicom(src).array.astype(np.int64)
    err = np.abs(vol.array.astype(np.int64) - raw)
    assert 0 < err.max() <= 64 and err.mean() < 4


def test_codecs_report_htj2k():
    c = _core.codecs()
    assert set(c) == {"rle", "jpeg_lossless", "jpeg_ls", "jpeg2000", "jpeg_lossy", "htj2k"}
    assert all(isinstance(v, bool) for v in c.values())
    for ts in (HTJ2K, HTJ2K_RPCL, HTJ2K_ANY):
        name, reason = _core.dicom_codec_status(ts, 16)
        assert name.startswith("HTJ2K") and (reason == "") == c["htj2k"]
    lib = _core.codec_libraries()["htj2k"]
    assert (lib in ("OpenJPEG", "OpenJPH")) == c["htj2k"]


# --- corrupt and truncated frames -------------------------------------------------------------


def _frame(path: Path) -> bytes:
    (frame,) = generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1)
    return frame


def _with_frame(src: Path, dst: Path, frame: bytes) -> Path:
    shutil.copy(src, dst)
    ds = pydicom.dcmread(dst)
    ds.PixelData = encapsulate([frame + b"\x00" * (len(frame) % 2)])
    ds.save_as(dst)
    return dst


def _siz_tile_offset(b: bytes) -> bytes:
    # YTOsiz (the tile grid's y offset) past the image offset: impossible (T.800 A.5.1);
    # OpenJPH 0.9 loops forever on it
    return b[:39] + b"\x42" + b[40:]


CORRUPT = {
    "cut_half": (lambda b: b[: len(b) // 2], "HTJ2K"),
    "cut_tail": (lambda b: b[:-40], "HTJ2K"),
    "cut_header": (lambda b: b[:30], "HTJ2K"),
    "no_soc": (lambda b: b"\x00" + b[1:], "HTJ2K"),
    "siz_tile_offset": (_siz_tile_offset, "HTJ2K"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_frame_refused(case, made, tmp_path):
    _need_htj2k()
    mutate, match = CORRUPT[case]
    files = sorted(made("ct_tilt_201").iterdir())[:3]
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    bad = _with_frame(files[1], tmp_path / files[1].name, mutate(_frame(files[1])))
    with pytest.raises(ImageReadError, match=match) as info:
        dicom.read_dicom(tmp_path)
    assert info.value.path == str(bad)
    assert "frame 0" in info.value.reason


@pytest.fixture(scope="module")
def small_frame(tmp_path_factory) -> tuple[Path, bytes]:
    """A 40 x 48 crop of a real CT slice as one HTJ2K file (for the fuzz)."""
    _need_htj2k()
    src = _corpus("ct/head_tilt_ge")
    tmp = tmp_path_factory.mktemp("small")
    ds = pydicom.dcmread(sorted(src.iterdir())[14])
    a = ds.pixel_array[200:240, 230:278].copy()
    ds.Rows, ds.Columns = a.shape
    frame = encode(a.view(np.uint16), tmp, bits=16, signed=False, ts=HTJ2K)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = HTJ2K
    path = tmp / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    got = _core.read_dicom_pixels([str(path)], [_core.read_dicom_header(str(path))], np.dtype("int16"), 1)
    assert np.array_equal(got[0], a)
    return path, frame


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    flips=st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 255)), min_size=1, max_size=6),
    head=st.booleans(),
    cut=st.one_of(st.none(), st.integers(0, 100_000)),
    threads=st.sampled_from([1, 2]),
)
def test_fuzz_frames_decode_or_raise(small_frame, tmp_path_factory, flips, head, cut, threads):
    path, frame = small_frame
    b = bytearray(frame)
    for at, v in flips:
        b[at % (200 if head else len(b)) % len(b)] = v
    if cut is not None:
        b = b[: cut % (len(b) + 1)]
    if len(b) < 2:
        b += b"\x00" * (2 - len(b))
    out = _with_frame(path, tmp_path_factory.mktemp("case") / "x.dcm", bytes(b))
    h = _core.read_dicom_header(str(out))
    try:
        got = _core.read_dicom_pixels([str(out)], [h], np.dtype("int16"), threads)
    except ImageReadError as e:
        assert e.path == str(out) and "frame 0" in e.reason
    else:
        assert got.shape == (1, 40, 48)


def test_frames_outside_the_openjph_subset_decoded_by_openjpeg(tmp_path):
    # a classic JPEG 2000 codestream (no CAP marker, no HT code-blocks) under the HTJ2K
    # syntax that allows any: the OpenJPH build hands it to OpenJPEG, with SimpleITK's pixels
    _need_htj2k()
    exe = shutil.which("gdcmconv")
    if exe is None:
        pytest.skip("gdcmconv not installed (apt-get install libgdcm-tools)")
    if not _core.codecs()["jpeg2000"]:
        pytest.skip("this build has no OpenJPEG")
    src = _corpus("ct/phantom_head_5mm")
    (series,) = dicom.scan_series(src)
    out = tmp_path / "j2k"
    out.mkdir()
    for f in series.files[:4]:
        subprocess.run([exe, "--j2k", f, str(out / Path(f).name)], check=True)
        ds = pydicom.dcmread(out / Path(f).name)
        ds.file_meta.TransferSyntaxUID = HTJ2K_ANY
        ds.save_as(out / Path(f).name, enforce_file_format=True)
    vol = dicom.read_dicom(out)
    assert vol.reader == "fast"
    ref = sitk.GetArrayFromImage(sitk_series(gdcm_files(out)))
    assert vol.array.dtype == ref.dtype and np.array_equal(vol.array, ref)


@pytest.mark.parametrize(("ba", "bs", "shape"), [(8, 8, (13, 17)), (16, 12, (31, 7)), (16, 16, (2, 41))])
def test_synthetic_bit_depths_and_awkward_shapes(tmp_path, ba, bs, shape):
    _need_htj2k()
    dt = np.uint8 if ba == 8 else np.uint16
    arrays = rand_slices(3, shape, 0, 1 << bs, dt, seed=bs)
    paths = write_series(tmp_path / "s", arrays, ba=ba, bs=bs)
    for p, a in zip(paths, arrays):
        ds = pydicom.dcmread(p)
        ds.PixelData = encapsulate([encode(a, tmp_path, bits=bs, signed=False, ts=HTJ2K)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = HTJ2K
        ds.save_as(p, enforce_file_format=True)
    for threads in (1, 2):
        set_num_threads(threads)
        vol = dicom.read_dicom(tmp_path / "s")
        assert vol.reader == "fast"
        assert np.array_equal(vol.array, np.stack(arrays).astype(vol.array.dtype))
    ref = sitk.GetArrayFromImage(sitk_series(gdcm_files(tmp_path / "s")))
    assert vol.array.dtype == ref.dtype and np.array_equal(vol.array, ref)
