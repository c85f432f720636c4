"""DICOM discovery and reading: the fast reader against SimpleITK's series reader.

The reference is short and obvious: ``SimpleITK.ImageSeriesReader`` on the file
list ``GetGDCMSeriesFileNames`` gives, and ``GetArrayFromImage``. Corpus tests
need ``NEUROVFM_TEST_DATA`` (the shared real-scan folder) and skip without it;
synthetic series are written with pydicom into ``tmp_path``.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import is_phantom, scan_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from neurovfm import _core
from neurovfm._threads import set_num_threads
from neurovfm.data.sources.dicom import read as dicom
from neurovfm.data.sources.dicom.series import scan_series
from neurovfm.errors import (
    DicomSeriesError,
    ImageNotFoundError,
    ImageReadError,
    NeuroVFMError,
    UnsupportedImageError,
)
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

# ---------------------------------------------------------------------------
# Reference and helpers


def sitk_series(files) -> sitk.Image:
    r = sitk.ImageSeriesReader()
    r.SetFileNames([str(f) for f in files])
    return r.Execute()


def gdcm_files(folder, uid=None) -> list:
    folder = str(folder)
    if uid is None:
        return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder))
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))


def assert_matches_sitk(vol: dicom.RawVolume, img: sitk.Image) -> None:
    ref = sitk.GetArrayFromImage(img)
    assert vol.array.dtype == ref.dtype
    assert vol.array.shape == ref.shape
    assert np.array_equal(vol.array, ref)
    np.testing.assert_allclose(vol.spacing, img.GetSpacing(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(vol.origin, img.GetOrigin(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(vol.direction, img.GetDirection(), rtol=0, atol=1e-9)


@pytest.fixture(autouse=True)
def _default_threads():
    yield
    set_num_threads(None)


@pytest.fixture(scope="session")
def corpus() -> Path:
    root = os.environ.get("NEUROVFM_TEST_DATA")
    if not root:
        pytest.skip("NEUROVFM_TEST_DATA is not set: no real-scan corpus")
    path = Path(root)
    if not (path / "ct").is_dir():
        pytest.skip(f"NEUROVFM_TEST_DATA={root} does not hold the corpus")
    return path


_DIR = DICOMDIR_REL = "edge/dicom/dicomdir"
CT5N_UID = "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6"
CT2_UID = "1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.2"
MR700_UID = "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.118"


def write_series(
    folder,
    arrays,
    *,
    sop=CTImageStorage,
    ba=16,
    bs=None,
    pr=0,
    slopes=None,
    intercepts=None,
    ts=ExplicitVRLittleEndian,
    iop=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    spacing=(0.5, 0.7),
    z=None,
    uid=None,
    names=None,
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    extra=None,
) -> list:
    """Writes one slice per array; slice i at z[i] (default 2.5 * i) along the normal."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid() if uid is None else uid
    bs = bs or ba
    r, c = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(r, c)
    dt = {
        (8, 0): np.uint8,
        (8, 1): np.int8,
        (16, 0): np.uint16,
        (16, 1): np.int16,
        (32, 0): np.uint32,
        (32, 1): np.int32,
    }[(ba, pr)]
    paths = []
    for i, a in enumerate(arrays):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ts
        ds.file_meta.MediaStorageSOPClassUID = sop
        inst = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = inst
        ds.SOPClassUID, ds.SOPInstanceUID = sop, inst
        ds.Modality = "CT" if sop == CTImageStorage else "MR"
        ds.SeriesInstanceUID, ds.StudyInstanceUID = uid, "1.2.3.4"
        ds.SeriesDescription = "synthetic"
        ds.InstanceNumber = i + 1
        ds.ImageType = list(image_type)
        zz = z[i] if z is not None else 2.5 * i
        ds.ImagePositionPatient = [float(v) for v in np.array([-10.0, -20.0, 3.0]) + zz * normal]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.PixelSpacing = list(spacing)
        ds.Rows, ds.Columns = a.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = ba, bs, bs - 1, pr
        if slopes is not None:
            ds.RescaleSlope = slopes[i]
        if intercepts is not None:
            ds.RescaleIntercept = intercepts[i]
        if extra is not None:
            extra(ds, i)
        ds.PixelData = np.ascontiguousarray(a.astype(dt)).tobytes()
        p = folder / (names[i] if names else f"s{i:03d}.dcm")
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def rand_slices(n=4, shape=(6, 5), lo=0, hi=4096, dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(lo, hi, shape).astype(dtype) for _ in range(n)]


# ---------------------------------------------------------------------------
# Real corpus: every series against SimpleITK


CORPUS_SERIES = [
    ("ct/head_tilt_ge", "fast", "int16", 28),
    ("ct/phantom_head_5mm", "fast", "int16", 28),
    ("ct/body_j2k", "fast", "int16", 20),  # JPEG 2000 lossless: the compiled decoder
    ("mr/sag_mprage_peds", "fast", "uint16", 192),
    ("mr/sag_t1_2d_thick", "fast", "uint16", 35),
    ("edge/dicom/dicomdir/98892001/CT5N", "fast", "int32", 5),
]
# (edge/dicom/dicomdir/77654033/CT2 has 161 slices missing: refused, see below.)


#: What differs in the phantom stand-ins (tests/phantomcorpus.py): (dtype, slices). gdcmconv
#: writes JPEG 2000 with 16-bit precision, which GDCM reads as int32 after the rescale.
STANDIN_SERIES = {"ct/body_j2k": ("int32", 20), "mr/sag_mprage_peds": ("uint16", 64)}


@pytest.mark.parametrize(("rel", "reader", "dtype", "n"), CORPUS_SERIES)
def test_corpus_series_match_simpleitk(scan_dir, rel, reader, dtype, n):
    folder = scan_path(scan_dir, rel)
    if is_phantom(scan_dir):
        dtype, n = STANDIN_SERIES.get(rel, (dtype, n))
    vol = dicom.read_dicom(folder)
    (series,) = [s for s in scan_series(folder) if s.usable]
    assert vol.reader == reader
    assert series.fast_path == (reader == "fast")
    assert vol.array.dtype == np.dtype(dtype)
    assert vol.array.shape[0] == n == series.n_slices
    assert vol.series_uid == series.uid
    assert vol.path == str(folder)
    # Same files in the same order as GDCM's series helper gives them.
    assert list(series.files) == gdcm_files(folder, series.uid)
    assert_matches_sitk(vol, sitk_series(series.files))


def test_corpus_tilt_and_slab_warnings(corpus, caplog):
    with caplog.at_level(logging.WARNING, logger="neurovfm"):
        dicom.read_dicom(corpus / "ct/head_tilt_ge")
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "18.5 degrees off their normal" in text and "not uniform" in text


def test_corpus_enhanced_multiframe(corpus):
    path = corpus / "mr/enhanced_multiframe_t1.dcm"
    vol = dicom.read_dicom(path)
    img = sitk.ReadImage(str(path))
    if img.GetDimension() == 4:  # some SimpleITK versions add a last axis of 1
        assert img.GetSize()[3] == 1
        img = img[:, :, :, 0]
    assert vol.reader == "simpleitk"
    assert vol.array.shape == (96, 128, 128)
    assert_matches_sitk(vol, img)
    (s,) = scan_series(path)
    assert s.multiframe and s.n_slices == 96 and not s.fast_path


def test_corpus_phantom_skips_directory_record(corpus):
    folder = corpus / "ct/phantom_head_5mm"
    (s,) = scan_series(folder)
    assert len(s.files) == 28
    assert not any(f.endswith("DIRFILE") for f in s.files)
    assert s.fast_path and s.modality == "CT" and (s.rows, s.cols) == (512, 512)


def test_corpus_dicomdir_choice_is_logged(corpus, caplog):
    with caplog.at_level(logging.INFO, logger="neurovfm"):
        vol = dicom.read_dicom(corpus / DICOMDIR_REL)
    assert vol.series_uid == CT5N_UID
    assert vol.array.shape == (5, 16, 16)
    assert any(CT5N_UID in r.getMessage() and "series_uid=" in r.getMessage() for r in caplog.records)
    assert_matches_sitk(vol, sitk_series(gdcm_files(corpus / DICOMDIR_REL / "98892001/CT5N")))


def test_corpus_dicomdir_discovery(corpus):
    series = scan_series(corpus / DICOMDIR_REL)
    files = [f for s in series for f in s.files]
    assert not any("DICOMDIR" in os.path.basename(f) for f in files)
    assert not any("TINY_ALPHA" in f for f in files)  # records without pixel data
    assert not any(f.endswith(("6293", "6924")) for f in files)  # CT localizers
    assert series[0].uid == CT5N_UID and series[0].usable
    assert {s.uid for s in series if s.usable} == {CT5N_UID, CT2_UID}
    mr700 = [s for s in series if s.uid == MR700_UID]
    assert len(mr700) == 7 and all(s.n_slices == 1 and not s.usable for s in mr700)


def test_corpus_dicomdir_series_uid(corpus):
    # CT2's 4 slices are 1.25 mm apart but for one gap of 202.5 mm: 161 slices missing.
    with pytest.raises(DicomSeriesError, match=r"CT2.*missing slices: a gap of 202.5 mm.*161 slices missing"):
        dicom.read_dicom(corpus / DICOMDIR_REL, series_uid=CT2_UID)
    with pytest.raises(
        DicomSeriesError,
        match=r"no series with SeriesInstanceUID 'bogus'.*available.*" + CT5N_UID.replace(".", r"\."),
    ):
        dicom.read_dicom(corpus / DICOMDIR_REL, series_uid="bogus")
    # A tiny series whose 7 images each have their own orientation.
    with pytest.raises(UnsupportedImageError, match=r"single slice.*7 images in 7 different"):
        dicom.read_dicom(corpus / DICOMDIR_REL, series_uid=MR700_UID)


BAD_CORPUS = [
    ("edge/dicom/color_jpeg_not_ct.dcm", UnsupportedImageError, r"colour"),
    ("ct/head_single_slice/693_UNCI.dcm", UnsupportedImageError, r"2D image / single slice"),
    ("ct/head_single_slice/693_J2KR.dcm", UnsupportedImageError, r"2D image / single slice"),
    ("ct/head_single_slice", UnsupportedImageError, r"single slice"),
    ("edge/dicom/transfer_syntaxes", DicomSeriesError, r"duplicate slice positions.*9 files"),
    ("edge/dicom/transfer_syntaxes/3.dcm", UnsupportedImageError, r"single slice"),
    ("edge/dicom/dicomdir/DICOMDIR", DicomSeriesError, r"only a DICOMDIR.*pass the folder"),
    ("edge/dicom/dicomdir/98892003/MR700", UnsupportedImageError, r"single slice"),
    ("edge/dicom/dicomdir/98892003", UnsupportedImageError, r"no readable 3D series"),
    ("edge/dicom/dicomdir/TINY_ALPHA", DicomSeriesError, r"no DICOM image series.*non-image"),
    ("edge/nifti", DicomSeriesError, r"no DICOM image series.*not DICOM"),
    ("ct/phantom_head_1mm.nii.gz", ImageReadError, r"not a DICOM file"),
    ("edge/dicom/dicomdir/README.txt", ImageReadError, r"not a DICOM file"),
]


@pytest.mark.parametrize(("rel", "exc", "pattern"), BAD_CORPUS)
def test_corpus_bad_inputs(scan_dir, rel, exc, pattern):
    path = scan_path(scan_dir, rel)  # the colour, single-slice and non-DICOM ones have phantom stand-ins
    with pytest.raises(exc, match=pattern) as info:
        dicom.read_dicom(path)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)


def test_corpus_stacked_slices_is_both_errors(corpus):
    path = corpus / "edge/dicom/transfer_syntaxes"
    with pytest.raises(
        dicom.StackedSliceError, match="^" + re.escape(str(path)) + r": duplicate slice positions"
    ) as info:
        dicom.read_dicom(path)
    assert isinstance(info.value, DicomSeriesError)
    assert isinstance(info.value, UnsupportedImageError)


@pytest.mark.parametrize("rel", ["mr/sag_mprage_peds", "ct/phantom_head_5mm"])
def test_corpus_thread_counts_give_identical_bytes(scan_dir, rel):
    out = []
    for n in (1, 2, 7):
        set_num_threads(n)
        out.append(dicom.read_dicom(scan_dir / rel).array)
    assert all(a.tobytes() == out[0].tobytes() for a in out[1:])


def test_corpus_is_dicom_file(corpus):
    assert dicom.is_dicom_file(corpus / "ct/phantom_head_5mm/I10")
    assert dicom.is_dicom_file(corpus / "ct/phantom_head_5mm/DIRFILE")
    assert dicom.is_dicom_file(corpus / "mr/enhanced_multiframe_t1.dcm")
    assert not dicom.is_dicom_file(corpus / "ct/phantom_head_1mm.nii.gz")
    assert not dicom.is_dicom_file(corpus / "edge/nifti/anatomical.nii")
    assert not dicom.is_dicom_file(corpus / "edge/dicom/dicomdir/README.txt")
    assert not dicom.is_dicom_file(corpus / "ct")  # a folder
    assert not dicom.is_dicom_file(corpus / "no_such_file")


def test_corpus_headers_never_fail_on_any_file(scan_dir):
    files = [str(p) for p in scan_dir.rglob("*") if p.is_file()]
    headers = _core.read_dicom_headers(files, 2)
    assert len(headers) == len(files)
    for f, h in zip(files, headers):
        if f.endswith((".nii", ".nii.gz", ".md", ".txt")):
            assert not h.is_dicom


# ---------------------------------------------------------------------------
# Synthetic series


def test_shuffled_extensionless_with_junk(tmp_path):
    arrays = rand_slices(6)
    order = [3, 0, 5, 1, 4, 2]  # file names do not follow the positions
    write_series(
        tmp_path,
        [arrays[i] for i in order],
        z=[2.5 * i for i in order],
        names=[f"IM{k}" for k in range(6)],
    )
    (tmp_path / "notes.txt").write_text("not a dicom file\n")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "junk.bin").write_bytes(os.urandom(5000))
    vol = dicom.read_dicom(tmp_path)
    assert vol.reader == "fast"
    assert np.array_equal(vol.array, np.stack(arrays))
    (s,) = scan_series(tmp_path)
    assert list(s.files) == gdcm_files(tmp_path)
    assert_matches_sitk(vol, sitk_series(s.files))


def _sign_extend(a, bits):
    a = a.astype(np.int64) & ((1 << bits) - 1)
    return np.where(a >= 1 << (bits - 1), a - (1 << bits), a)


LAYOUTS = [
    # ba, bs, pr, slope, intercept, expected dtype
    (16, 16, 0, None, None, "uint16"),
    (16, 16, 1, None, None, "int16"),
    (16, 12, 0, None, None, "uint16"),
    (16, 12, 1, None, None, "int16"),
    (16, 12, 0, 1, -1024, "int16"),
    (16, 16, 0, 1, -1024, "int32"),
    (16, 16, 1, 1, -1024, "int32"),
    (16, 12, 0, 0.5, -3, "float64"),
    (16, 12, 1, 2.5, 0.25, "float64"),
    (16, 16, 0, 2, 5, "uint32"),
    (16, 12, 0, -1, 0, "int16"),
    (16, 8, 0, None, None, "uint16"),
    (16, 8, 1, 2, 0, "int16"),
    (8, 8, 0, None, None, "uint8"),
    (8, 8, 1, None, None, "int8"),
    (8, 8, 0, 1, -100, "int16"),
    (32, 32, 0, None, None, "uint32"),
    (32, 32, 1, None, None, "int32"),
]


@pytest.mark.parametrize(("ba", "bs", "pr", "slope", "intercept", "dtype"), LAYOUTS)
def test_pixel_layouts_and_rescale(tmp_path, ba, bs, pr, slope, intercept, dtype):
    # Full-width random words: unused high bits hold garbage that must be
    # masked (unsigned) or replaced by the sign of BitsStored (signed).
    rng = np.random.default_rng(ba * 100 + bs + pr)
    big = {8: 1 << 8, 16: 1 << 16, 32: 1 << 31}[ba]
    arrays = [rng.integers(0, big, (7, 5)).astype(np.uint64) for _ in range(3)]
    n = 3
    write_series(
        tmp_path,
        arrays,
        ba=ba,
        bs=bs,
        pr=pr,
        slopes=None if slope is None else [slope] * n,
        intercepts=None if intercept is None else [intercept] * n,
    )
    vol = dicom.read_dicom(tmp_path)
    assert vol.reader == "fast"
    assert vol.array.dtype == np.dtype(dtype)
    stored = np.stack(arrays).astype(np.int64) & ((1 << bs) - 1)
    if pr:
        stored = _sign_extend(stored, bs)
    expect = stored * (1 if slope is None else slope) + (0 if intercept is None else intercept)
    assert np.array_equal(vol.array, expect.astype(dtype))
    assert_matches_sitk(vol, sitk_series(gdcm_files(tmp_path)))


def test_monochrome1_goes_to_simpleitk(tmp_path):
    # SimpleITK inverts MONOCHROME1 (4095 - x here); the fast path leaves it to it.
    def mono1(ds, i):
        ds.PhotometricInterpretation = "MONOCHROME1"

    arrays = rand_slices(3)
    write_series(tmp_path, arrays, bs=12, extra=mono1)
    vol = dicom.read_dicom(tmp_path)
    assert vol.reader == "simpleitk"
    assert_matches_sitk(vol, sitk_series(gdcm_files(tmp_path)))


@pytest.mark.parametrize(
    "iop",
    [
        (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),  # sagittal
        (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),  # coronal
        (0.0538, 0.965, 0.2566, 0.0181, 0.256, -0.9665),  # oblique, slightly off unit
    ],
)
def test_orientations(tmp_path, iop, caplog):
    arrays = rand_slices(5, seed=9)
    order = [4, 2, 0, 3, 1]
    write_series(
        tmp_path,
        [arrays[i] for i in order],
        iop=iop,
        z=[-1.1 * i for i in order],
        names=[f"{k}" for k in range(5)],
    )
    vol = dicom.read_dicom(tmp_path)
    (s,) = scan_series(tmp_path)
    assert list(s.files) == gdcm_files(tmp_path)
    assert np.array_equal(vol.array, np.stack(arrays[::-1]))  # ascending along the normal
    assert_matches_sitk(vol, sitk_series(s.files))
    assert not any("degrees" in r.getMessage() for r in caplog.records)


def test_mixed_rescale_per_slice(tmp_path):
    # The first slice decides the type (as SimpleITK): later ones are rescaled
    # in their own type, then cast.
    write_series(tmp_path, rand_slices(3, seed=3), bs=12, slopes=[1, 0.5, 2], intercepts=[0, 0, 0])
    vol = dicom.read_dicom(tmp_path)
    assert vol.reader == "fast" and vol.array.dtype == np.uint16
    assert_matches_sitk(vol, sitk_series(gdcm_files(tmp_path)))
    write_series(tmp_path / "b", rand_slices(3, seed=4), bs=12, slopes=[0.5, 1, 1], intercepts=[0, 0, 0])
    vol = dicom.read_dicom(tmp_path / "b")
    assert vol.array.dtype == np.float64
    assert_matches_sitk(vol, sitk_series(gdcm_files(tmp_path / "b")))


@pytest.mark.parametrize("ts", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_vr_encodings(tmp_path, ts):
    write_series(tmp_path, rand_slices(3), sop=MRImageStorage, ts=ts, slopes=[1] * 3, intercepts=[-7] * 3)
    h = _core.read_dicom_header(str(next(tmp_path.iterdir())))
    assert h.explicit_vr == (ts == ExplicitVRLittleEndian)
    vol = dicom.read_dicom(tmp_path)
    assert vol.reader == "fast" and vol.modality == "MR"
    assert_matches_sitk(vol, sitk_series(gdcm_files(tmp_path)))


def test_raw_dataset_without_preamble(tmp_path):
    paths = write_series(tmp_path, rand_slices(3), bs=12)
    for p in paths:
        ds = pydicom.dcmread(p)
        del ds.file_meta
        ds.preamble = None
        ds.save_as(p, enforce_file_format=False, implicit_vr=True, little_endian=True)
        assert Path(p).read_bytes()[:2] == b"\x08\x00"
        assert dicom.is_dicom_file(p)
    vol = dicom.read_dicom(tmp_path)
    assert vol.reader == "fast"
    assert_matches_sitk(vol, sitk_series(gdcm_files(tmp_path)))


def test_big_endian_falls_back_to_simpleitk(tmp_path):
    paths = write_series(tmp_path, rand_slices(3), bs=12, intercepts=[-1024] * 3, slopes=[1] * 3)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        pydicom.dcmwrite(p, ds, little_endian=False, implicit_vr=False, force_encoding=True)
    h = _core.read_dicom_header(str(paths[0]))
    assert not h.little_endian and not h.uncompressed_native and h.rows == 6
    assert h.intercept == -1024 and h.ipp == pytest.approx((-10.0, -20.0, 3.0))
    vol = dicom.read_dicom(tmp_path)
    assert vol.reader == "simpleitk"
    assert_matches_sitk(vol, sitk_series(gdcm_files(tmp_path)))


def test_deflated_read_by_the_compiled_reader(tmp_path):
    # zlib inflates the dataset after the meta; then it is explicit VR little endian
    paths = write_series(tmp_path, rand_slices(3), bs=12)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(p, enforce_file_format=True)
    h = _core.read_dicom_header(str(paths[0]))
    assert h.error == "" and h.fast_readable, h.error
    vol = dicom.read_dicom(tmp_path)
    assert vol.reader == "fast"
    assert_matches_sitk(vol, sitk_series(gdcm_files(tmp_path)))


def _add_sequences(ds, i):
    # Nested sequences of defined and undefined length, a private block and
    # an icon image with its own pixel data, all before the real pixel data.
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "T-A0100", "SRT"
    inner.PixelSpacing = [9.0, 9.0]  # nested: must not be taken
    outer = Dataset()
    outer.ProcedureCodeSequence = [inner]
    outer.ReferencedSOPInstanceUID = "1.2.3"
    ds.RequestAttributesSequence = [outer, Dataset()]
    ds.RequestAttributesSequence.is_undefined_length = bool(i % 2)
    ds.RequestAttributesSequence[0].is_undefined_length_sequence_item = True
    icon = Dataset()
    icon.Rows = icon.Columns = 2
    icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
    icon.BitsAllocated = icon.BitsStored = 8
    icon.HighBit, icon.PixelRepresentation = 7, 0
    icon.PixelData = b"\x01\x02\x03\x04"
    ds.IconImageSequence = [icon]
    ds.IconImageSequence.is_undefined_length = True
    block = ds.private_block(0x0029, "NEUROVFM TEST", create=True)
    block.add_new(0x10, "OB", os.urandom(301) + b"\x00")
    block.add_new(0x11, "LO", "private")


@pytest.mark.parametrize("ts", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_sequences_are_skipped(tmp_path, ts):
    arrays = rand_slices(4)
    write_series(tmp_path, arrays, ts=ts, extra=_add_sequences, spacing=(0.5, 0.7))
    for p in tmp_path.iterdir():
        h = _core.read_dicom_header(str(p))
        assert h.error == "" and h.pixel_spacing == (0.5, 0.7) and (h.rows, h.cols) == (6, 5)
    vol = dicom.read_dicom(tmp_path)
    assert vol.reader == "fast" and np.array_equal(vol.array, np.stack(arrays))
    assert_matches_sitk(vol, sitk_series(gdcm_files(tmp_path)))


def test_truncated_pixel_data(tmp_path):
    paths = write_series(tmp_path, rand_slices(4, shape=(16, 16)))
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[:-100])
    h = _core.read_dicom_header(str(paths[2]))
    assert "truncated" in h.error and h.has_pixel_data
    with pytest.raises(ImageReadError, match=r"s002\.dcm.*truncated") as info:
        dicom.read_dicom(tmp_path)
    assert str(paths[2]) in str(info.value)


def test_truncated_after_headers_were_read(tmp_path):
    # The file shrinks between the header scan and the pixel read.
    paths = write_series(tmp_path, rand_slices(3, shape=(16, 16)))
    (s,) = scan_series(tmp_path)
    paths[1].write_bytes(paths[1].read_bytes()[:-10])
    with pytest.raises(ImageReadError, match=r"s001\.dcm: file is truncated"):
        dicom.read_series(s)


def test_missing_slice_refused(tmp_path):
    # SimpleITK would stack these 5 slices 2.5 mm apart, moving the last two by 2.5 mm.
    write_series(tmp_path, rand_slices(5), z=[0, 2.5, 5, 10, 12.5])
    with pytest.raises(
        DicomSeriesError, match=r"missing slices: a gap of 5 mm between slices 2 and 3 .* 1 slice missing"
    ):
        dicom.read_dicom(tmp_path)


def test_two_slabs_warn_and_match_simpleitk(tmp_path, caplog):
    # Two slab thicknesses (a whole multiple, but many steps of each): read as SimpleITK does.
    write_series(tmp_path, rand_slices(7), z=[0, 2.5, 5, 7.5, 12.5, 17.5, 22.5])
    with caplog.at_level(logging.WARNING, logger="neurovfm"):
        vol = dicom.read_dicom(tmp_path)
    assert any("not uniform" in r.getMessage() and str(tmp_path) in r.getMessage() for r in caplog.records)
    assert_matches_sitk(vol, sitk_series(gdcm_files(tmp_path)))


def test_duplicate_positions_refused(tmp_path):
    write_series(tmp_path, rand_slices(4), z=[0, 2.5, 2.5, 5])
    with pytest.raises(DicomSeriesError, match=r"duplicate slice positions: 4 files but only 3"):
        dicom.read_dicom(tmp_path)


def test_missing_position_refused(tmp_path):
    paths = write_series(tmp_path, rand_slices(3))
    ds = pydicom.dcmread(paths[1])
    del ds.ImagePositionPatient
    ds.save_as(paths[1])
    with pytest.raises(DicomSeriesError, match=r"1 of 3 files have no ImagePositionPatient"):
        dicom.read_dicom(tmp_path)


def test_choice_between_series_and_series_uid(tmp_path, caplog):
    write_series(tmp_path / "a", rand_slices(3), uid="1.2.3.100")
    write_series(tmp_path / "b" / "deeper", rand_slices(5), uid="1.2.3.200")
    write_series(
        tmp_path / "c",
        rand_slices(4),
        uid="1.2.3.300",
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )
    with caplog.at_level(logging.INFO, logger="neurovfm"):
        vol = dicom.read_dicom(tmp_path)
    assert vol.series_uid == "1.2.3.200" and vol.array.shape[0] == 5
    assert any("1.2.3.200" in r.getMessage() for r in caplog.records)
    assert [s.uid for s in scan_series(tmp_path)] == ["1.2.3.200", "1.2.3.100"]
    vol = dicom.read_dicom(tmp_path, series_uid="1.2.3.100")
    assert vol.array.shape[0] == 3
    with pytest.raises(DicomSeriesError, match=r"1\.2\.3\.100.*1\.2\.3\.200"):
        dicom.read_dicom(tmp_path, series_uid="1.2.3.300")  # the localizer is skipped


def test_tie_is_warned(tmp_path, caplog):
    write_series(tmp_path / "a", rand_slices(3), uid="1.2.3.1")
    write_series(tmp_path / "b", rand_slices(3), uid="1.2.3.2")
    with caplog.at_level(logging.WARNING, logger="neurovfm"):
        dicom.read_dicom(tmp_path)
    assert any("several series have 3 slices" in r.getMessage() for r in caplog.records)


def test_blank_uids_group_by_folder(tmp_path):
    write_series(tmp_path / "x", rand_slices(3), uid="")
    write_series(tmp_path / "y", rand_slices(4), uid="")
    series = scan_series(tmp_path)
    assert [(s.uid, s.n_slices) for s in series] == [("", 4), ("", 3)]
    assert dicom.read_dicom(tmp_path).array.shape[0] == 4


def test_geometry_split(tmp_path):
    uid = generate_uid()
    write_series(tmp_path / "ax", rand_slices(4), uid=uid)
    write_series(tmp_path / "sag", rand_slices(3), uid=uid, iop=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    write_series(tmp_path / "big", rand_slices(2, shape=(8, 8)), uid=uid)
    series = scan_series(tmp_path)
    assert sorted(s.n_slices for s in series) == [2, 3, 4]
    vol = dicom.read_dicom(tmp_path)
    assert vol.array.shape == (4, 6, 5)
    assert_matches_sitk(vol, sitk_series(series[0].files))


def test_symlink_loop_terminates(tmp_path):
    write_series(tmp_path / "s", rand_slices(3))
    os.symlink(tmp_path, tmp_path / "s" / "loop")
    (series,) = scan_series(tmp_path)
    assert series.n_slices == 3


def test_empty_and_missing(tmp_path):
    missing = tmp_path / "nothing"
    with pytest.raises(ImageNotFoundError, match=re.escape(str(missing)) + r": no such file or directory") as info:
        dicom.read_dicom(missing)
    assert isinstance(info.value, FileNotFoundError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomSeriesError, match=r"empty: no files found"):
        dicom.read_dicom(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("hello")
    with pytest.raises(DicomSeriesError, match=r"no DICOM image series found \(1 files examined: 1 not DICOM"):
        dicom.read_dicom(tmp_path / "text")


def test_is_dicom_file_synthetic(tmp_path):
    (p,) = write_series(tmp_path, rand_slices(1))
    assert dicom.is_dicom_file(p)
    for name, content in {
        "empty": b"",
        "text": b"hello world\n" * 20,
        "zeros": bytes(200),
        "short": b"DICM",
        "fake_group": b"\x08\x00\x08\x00CS\xff\x7f",  # length past the end
        "nifti": b"\x5c\x01\x00\x00" + bytes(400),
    }.items():
        f = tmp_path / name
        f.write_bytes(content)
        assert not dicom.is_dicom_file(f), name
        assert not _core.read_dicom_header(str(f)).is_dicom, name


def test_read_dicom_pixels_checks(tmp_path):
    pa = write_series(tmp_path / "a", rand_slices(2))
    pb = write_series(tmp_path / "b", rand_slices(1, shape=(7, 5)))
    files = [str(pa[0]), str(pb[0])]
    hs = _core.read_dicom_headers(files, 1)
    # A file the readers cannot use: the family's ImageReadError naming the file.
    with pytest.raises(ImageReadError, match=re.escape(files[1]) + r": image is 7 x 5 pixels, expected 6 x 5$") as info:
        _core.read_dicom_pixels(files, hs, np.dtype(np.uint16), 1)
    assert info.value.path == files[1] and info.value.reason == "image is 7 x 5 pixels, expected 6 x 5"
    # Misuse of the private binding: builtin errors naming the function and the argument.
    with pytest.raises(ValueError, match=r"^read_dicom_pixels: paths and headers differ in length$"):
        _core.read_dicom_pixels(files, hs[:1], np.dtype(np.uint16), 1)
    with pytest.raises(TypeError, match=r"^read_dicom_pixels: unsupported dtype complex64 \(expected uint8, "):
        _core.read_dicom_pixels(files[:1], hs[:1], np.dtype(np.complex64), 1)


# ---------------------------------------------------------------------------
# Robustness: truncated and corrupted files never crash the parser, and
# read_dicom only ever raises the library's errors.


@pytest.fixture(scope="module")
def sample_bytes(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("sample")
    (p,) = write_series(folder, rand_slices(1, shape=(4, 4)), extra=_add_sequences)
    return p.read_bytes()


def test_every_truncation(tmp_path, sample_bytes):
    f = tmp_path / "t.dcm"
    for n in range(0, len(sample_bytes), 7):
        f.write_bytes(sample_bytes[:n])
        h = _core.read_dicom_header(str(f))
        # A cut file never passes for a complete image.
        assert h.error or not h.has_pixel_data
        if h.has_pixel_data:
            assert "truncated" in h.error


# Every reason read_dicom may give for one corrupted single-slice file (after "<file>: ").
_CORRUPT_REASONS = (
    r"not a DICOM file",
    r"no DICOM image series found \(1 files examined: 1 (unreadable DICOM|non-image DICOM object)\)",
    r"cannot read .*: (no pixel data \(the PixelData element is missing\)"
    r"|pixel data claims \d+ bytes but only \d+ remain \(truncated file\)"
    r"|truncated or inconsistent header: pixel data holds \d+ bytes but Rows x Columns x .* claims \d+"
    r"|.*(truncated|invalid VR|bogus length|runs past the end).*)",
    r"colour image \(SamplesPerPixel \d+, PhotometricInterpretation .*\): not a scalar volume",
    r"2D image / single slice: not a 3D volume \(to read a series, pass its folder\)",
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_corruption(tmp_path, sample_bytes, data):
    """A corrupted single-slice file is always refused with an ImageReadError naming it
    (an intact one is a single slice, not a volume), with the reason its corruption gives:

    - ``magic``: the 'DICM' marker broken or the file cut before it: "not a DICOM file";
    - ``pixels``: bytes of the pixel data changed: still "2D image / single slice";
    - ``cut_pixels``: cut inside the pixel data: "pixel data claims 32 bytes but only k remain";
    - ``cut_header``: cut inside the header: "no pixel data" when what is left parses and
      has Rows, else "no DICOM image series found" (an unreadable or non-image object),
      never a pixel read;
    - ``anywhere``: up to 8 bytes changed anywhere and maybe a cut: one of the reasons above.
    """
    f = tmp_path / "c.dcm"
    f.write_bytes(sample_bytes)
    h0 = _core.read_dicom_header(str(f))
    off, n_pix = h0.pixel_offset, h0.pixel_length
    assert h0.error == "" and off + n_pix == len(sample_bytes) and n_pix == 32
    buf = bytearray(sample_bytes)
    kind = data.draw(st.sampled_from(["magic", "pixels", "cut_pixels", "cut_header", "anywhere"]))
    if kind == "magic":
        if data.draw(st.booleans()):
            buf = buf[: data.draw(st.integers(0, 131))]
        else:
            i = data.draw(st.integers(128, 131))
            buf[i] = data.draw(st.integers(0, 255).filter(lambda b: b != sample_bytes[i]))
    elif kind == "pixels":
        for _ in range(data.draw(st.integers(1, 8))):
            buf[data.draw(st.integers(off, len(buf) - 1))] = data.draw(st.integers(0, 255))
    elif kind == "cut_pixels":
        buf = buf[: data.draw(st.integers(off, len(buf) - 1))]
    elif kind == "cut_header":
        buf = buf[: data.draw(st.integers(132, off - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
        buf = buf[: data.draw(st.integers(0, len(buf)))]
    f.write_bytes(bytes(buf))
    h = _core.read_dicom_header(str(f))
    assert isinstance(h.error, str)
    if kind == "magic":
        assert not h.is_dicom
        reason, exc = r"not a DICOM file", ImageReadError
    elif kind == "pixels":
        assert h.error == ""
        reason, exc = _CORRUPT_REASONS[-1], UnsupportedImageError
    elif kind == "cut_pixels":
        reason = rf"cannot read .*: pixel data claims 32 bytes but only {len(buf) - off} remain \(truncated file\)"
        exc = ImageReadError
    elif kind == "cut_header":
        # No pixel data left: which of the two words depends on whether the rest parses
        # (C++ parser, then pydicom) and holds Rows, but either says "no image in it".
        reason = r"(cannot read .*: no pixel data \(the PixelData element is missing\)|" + _CORRUPT_REASONS[1] + ")"
        exc = ImageReadError
    else:
        reason, exc = "(" + "|".join(_CORRUPT_REASONS) + ")", ImageReadError
    with pytest.raises(exc, match="^" + re.escape(str(f)) + ": " + reason + "$") as info:
        dicom.read_dicom(f)
    assert info.value.path == str(f)
    if kind not in ("anywhere", "cut_header"):
        assert type(info.value) is exc


def test_corrupted_series_only_library_errors(tmp_path):
    rnd = random.Random(5)
    paths = write_series(tmp_path, rand_slices(3, shape=(8, 8)), extra=_add_sequences)
    originals = [p.read_bytes() for p in paths]
    for _ in range(40):
        for p, data in zip(paths, originals):
            buf = bytearray(data)
            for _ in range(rnd.randint(0, 6)):
                buf[rnd.randrange(len(buf))] = rnd.randrange(256)
            p.write_bytes(bytes(buf[: rnd.randint(len(buf) // 2, len(buf))]))
        try:
            vol = dicom.read_dicom(tmp_path)
        except NeuroVFMError:
            continue
        assert vol.array.ndim == 3


def test_larger_broken_series_is_skipped_with_warning(tmp_path, caplog):
    write_series(tmp_path / "good", rand_slices(3), uid="1.2.3.10")
    write_series(tmp_path / "dup", rand_slices(5), uid="1.2.3.20", z=[0, 0, 2.5, 5, 7.5])
    with caplog.at_level(logging.WARNING, logger="neurovfm"):
        vol = dicom.read_dicom(tmp_path)
    assert vol.series_uid == "1.2.3.10"
    assert any(
        "skipped the larger series 1.2.3.20" in r.getMessage() and "duplicate" in r.getMessage() for r in caplog.records
    )


def test_thread_counts_synthetic(tmp_path):
    write_series(
        tmp_path,
        rand_slices(23, shape=(31, 17), hi=65536),
        slopes=[1] * 23,
        intercepts=[-1024] * 23,
    )
    out = []
    for n in (1, 2, 7):
        set_num_threads(n)
        vol = dicom.read_dicom(tmp_path)
        assert vol.array.dtype == np.int32
        out.append(vol.array.tobytes())
    assert out[0] == out[1] == out[2]


def test_corpus_broken_compressed_file_is_named(scan_dir, tmp_path):
    src = sorted((scan_dir / "ct/body_j2k").iterdir())[:3]
    for f in src:
        (tmp_path / f.name).write_bytes(f.read_bytes())
    bad = tmp_path / src[1].name
    data = bad.read_bytes()
    bad.write_bytes(data[: min(20000, len(data) // 2)])  # (a phantom stand-in's file is smaller)
    with pytest.raises(ImageReadError, match="truncated") as info:
        dicom.read_dicom(tmp_path)
    assert info.value.path == str(bad)
