"""Bad inputs that are files (not DICOM folders): clear errors naming the file and the reason."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import compare_resampled, is_phantom, make_image, random_volume, scan_path

import reference as R
from neurovfm.data import load_image, prepare_for_inference
from neurovfm.errors import (
    ImageNotFoundError,
    ImageReadError,
    ImageTooSmallError,
    InvalidArgumentError,
    NeuroVFMError,
    UnsupportedImageError,
)


def raises_for(path, exc_type, reason):
    """pytest.raises for an error whose whole message is '<path>: <reason>' (reason a regex)."""
    return pytest.raises(exc_type, match="^" + re.escape(str(path)) + ": " + reason + "$")


NO_READER = r"not a readable image format \(SimpleITK found no reader for it\)"


def check_message_starts_with_path(excinfo, path):
    assert str(excinfo.value).startswith(str(path)), str(excinfo.value)
    assert isinstance(excinfo.value, NeuroVFMError)


# --- bad files of the corpus --------------------------------------------------------------

CORPUS_BAD = [  # path, error type (exactly), reason
    (
        "edge/nifti/example4d.nii.gz",
        UnsupportedImageError,
        r"true 4D image of size \(128, 96, 24, 2\); a single 3D volume is required",
    ),
    (
        "edge/nifti/sheared_S0_10slices.nii.gz",
        UnsupportedImageError,
        r"non-orthonormal \(sheared\) direction cosines; only rigid orientations are supported",
    ),
    ("edge/nifti/example_nifti2.nii.gz", ImageReadError, NO_READER),
    (
        "edge/dicom/color_jpeg_not_ct.dcm",
        UnsupportedImageError,
        r"colour image \(SamplesPerPixel 3, PhotometricInterpretation YBR_FULL_422\): not a scalar volume",
    ),
    (
        "ct/head_single_slice/693_UNCI.dcm",
        UnsupportedImageError,
        r"2D image / single slice: not a 3D volume \(to read a series, pass its folder\)",
    ),
    ("mr/stroke/SOURCE.md", ImageReadError, NO_READER),
]


#: The reasons that name a real file's own size or colour model, for its phantom stand-in
#: (tests/phantomcorpus.py); the sheared and NIfTI-2 files have none and need the corpus.
STANDIN_REASON = {
    "edge/nifti/example4d.nii.gz": r"true 4D image of size \(32, 24, 12, 2\); a single 3D volume is required",
    "edge/dicom/color_jpeg_not_ct.dcm": (
        r"colour image \(SamplesPerPixel 3, PhotometricInterpretation RGB\): not a scalar volume"
    ),
}


@pytest.mark.parametrize("rel,exc,reason", CORPUS_BAD, ids=[c[0] for c in CORPUS_BAD])
@pytest.mark.parametrize("preprocess", [True, False])
def test_corpus_bad_files(scan_dir, rel, exc, reason, preprocess):
    path = scan_path(scan_dir, rel)
    if is_phantom(scan_dir):
        reason = STANDIN_REASON.get(rel, reason)
    with raises_for(path, exc, reason) as excinfo:
        load_image(path, preprocess=preprocess)
    check_message_starts_with_path(excinfo, path)
    assert isinstance(excinfo.value, ValueError)
    assert type(excinfo.value) is exc and excinfo.value.path == str(path)


def test_reference_also_refuses_them(data_dir):
    """The corpus README's claim: SimpleITK cannot make a 3D volume of these."""
    with pytest.raises(AssertionError):  # it reads the 4D image; the reference wants 3D
        R.ref_read(data_dir / "edge/nifti/example4d.nii.gz")
    with pytest.raises(RuntimeError, match=r"ITK only supports orthonormal direction cosines"):
        R.ref_read(data_dir / "edge/nifti/sheared_S0_10slices.nii.gz")
    with pytest.raises(RuntimeError, match=r"Unable to determine ImageIO reader for .*example_nifti2\.nii\.gz"):
        R.ref_read(data_dir / "edge/nifti/example_nifti2.nii.gz")


# --- synthetic bad files ------------------------------------------------------------------


def test_missing_path(tmp_path):
    path = tmp_path / "nope.nii.gz"
    missing = re.escape(str(path)) + r": no such file or directory"
    with pytest.raises(FileNotFoundError, match=missing) as excinfo:
        load_image(path)
    assert isinstance(excinfo.value, ImageNotFoundError)
    with pytest.raises(ImageNotFoundError, match=missing):
        load_image(str(path), preprocess=False)


def test_2d_image(tmp_path):
    path = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 30), np.int16)), str(path))
    with raises_for(path, UnsupportedImageError, r"2D image of size \(30, 20\); a 3D volume is required"):
        load_image(path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".png"])
def test_colour_image(tmp_path, suffix):
    path = tmp_path / f"rgb{suffix}"
    shape = (6, 20, 30, 3) if suffix != ".png" else (20, 30, 3)
    img = sitk.GetImageFromArray(np.zeros(shape, np.uint8), isVector=True)
    sitk.WriteImage(img, str(path))
    reason = r"colour or multi-component image \(3 components per voxel\); a scalar volume is required"
    with raises_for(path, UnsupportedImageError, reason) as excinfo:
        load_image(path)
    check_message_starts_with_path(excinfo, path)


def test_true_4d_synthetic(tmp_path):
    path = tmp_path / "four.nii.gz"
    vol = sitk.GetImageFromArray(np.zeros((5, 6, 7), np.float32))
    four = sitk.JoinSeries([vol, vol])
    assert four.GetSize() == (7, 6, 5, 2)
    sitk.WriteImage(four, str(path))
    with raises_for(
        path, UnsupportedImageError, r"true 4D image of size \(7, 6, 5, 2\); a single 3D volume is required"
    ):
        load_image(path)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_4d_with_last_axis_one_is_3d(tmp_path, dtype):
    arr = random_volume(np.random.default_rng(0), (9, 21, 30), dtype)
    img3 = make_image(arr, (0.9, 0.8, 3.5), origin=(10.0, -20.0, 30.0))
    img4 = sitk.JoinSeries([img3])
    assert img4.GetDimension() == 4 and img4.GetSize()[3] == 1
    path = tmp_path / "vol4d.nii.gz"
    sitk.WriteImage(img4, str(path))
    raw = load_image(path, preprocess=False)
    assert raw.GetDimension() == 3 and raw.GetSize() == img3.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(raw), arr)
    np.testing.assert_allclose(raw.GetSpacing(), img3.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(raw.GetOrigin(), img3.GetOrigin(), atol=1e-4)
    ref_raw = R.ref_read(path)
    compare_resampled(load_image(path), R.ref_preprocess(ref_raw), R.ref_resample_float64(ref_raw), source=ref_raw)


@pytest.mark.parametrize(
    "content", [b"", b"hello, I am not an image\n", bytes(range(256)) * 40], ids=["empty", "text", "binary"]
)
@pytest.mark.parametrize("name", ["junk.nii.gz", "junk.nii", "junk.bin", "junk"])
def test_junk_files(tmp_path, content, name):
    path = tmp_path / name
    path.write_bytes(content)
    if not content:
        reason = r"empty file \(0 bytes\)"
    elif name.endswith(".gz"):
        reason = r"not a valid gzip file: Not a gzipped file \(b'.*'\)"
    else:
        reason = NO_READER
    with raises_for(path, ImageReadError, reason) as excinfo:
        load_image(path)
    check_message_starts_with_path(excinfo, path)
    assert type(excinfo.value) is ImageReadError and excinfo.value.path == str(path)


def test_junk_inside_gzip(tmp_path):
    path = tmp_path / "junk.nii.gz"
    path.write_bytes(gzip.compress(b"\x00" * 1000))
    with raises_for(path, ImageReadError, NO_READER):
        load_image(path)


def test_truncated_nifti(tmp_path, scan_dir):
    src = (scan_dir / "ct/body_small.nii.gz").read_bytes()
    for cut, name, reason in [
        (len(src) // 2, "cut.nii.gz", r"truncated: the compressed stream ends early \(.+\)"),
        (200, "header_only.nii.gz", r"truncated: the compressed stream ends inside the NIfTI header"),
    ]:
        path = tmp_path / name
        path.write_bytes(src[:cut])
        with raises_for(path, ImageReadError, reason) as excinfo:
            load_image(path)
        check_message_starts_with_path(excinfo, path)
    raw = gzip.decompress(src)
    path = tmp_path / "cut.nii"
    path.write_bytes(raw[: len(raw) - 1000])
    nx, ny, nz = (64, 56, 24) if is_phantom(scan_dir) else (122, 101, 30)  # (the stand-in: tests/phantomcorpus.py)
    size = nx * ny * nz * 2  # int16: 739320 bytes for the real file
    reason = (
        rf"truncated or bad dimensions: header claims {nx}x{ny}x{nz} voxels of datatype 4 "
        rf"\({size} bytes from offset 352\), the file holds {size + 352 - 1000} bytes"
    )
    with raises_for(path, ImageReadError, reason):
        load_image(path)


def test_single_slice_nifti(tmp_path):
    path = tmp_path / "one_slice.nii.gz"
    sitk.WriteImage(make_image(np.zeros((1, 64, 64), np.int16), (1.0, 1.0, 5.0)), str(path))
    with raises_for(path, UnsupportedImageError, r"single slice \(size \(64, 64, 1\)\); a 3D volume is required"):
        load_image(path)


def test_too_small_to_resample(tmp_path):
    """Isotropic 1 mm with 3 slices: the slice axis resamples to int(3 / 4) = 0 voxels."""
    path = tmp_path / "tiny.nii.gz"
    sitk.WriteImage(make_image(np.ones((3, 5, 6), np.int16), (1.0, 1.0, 1.0)), str(path))
    reason = (
        r"volume of size \(6, 5, 3\) and spacing \(1\.0, 1\.0, 1\.0\) mm resamples to \(6, 5, 0\) "
        r"voxels at \(1\.0, 1\.0, 4\.0\) mm"
    )
    with raises_for(path, ImageTooSmallError, reason) as excinfo:
        load_image(path)
    assert isinstance(excinfo.value, ValueError)
    assert load_image(path, preprocess=False).GetSize() == (6, 5, 3)


def test_small_volume_gives_no_tokens(tmp_path):
    path = tmp_path / "small.nii.gz"
    sitk.WriteImage(make_image(np.ones((10, 10, 12), np.int16) * 100, (1.0, 1.0, 1.0)), str(path))
    img = load_image(path)
    assert img.GetSize() == (12, 10, 2)  # every axis below its crop multiple: kept as is
    assert prepare_for_inference(img, "ct") is None
    assert prepare_for_inference(img, "mri") is None


@pytest.mark.parametrize("mode", ["x-ray", "", "ctt", 3])
def test_bad_mode(mode):
    img = make_image(np.zeros((4, 16, 16), np.int16), (1.0, 1.0, 4.0))
    with pytest.raises(
        InvalidArgumentError, match=rf"^mode must be 'ct' or 'mri' \(any case\), got {re.escape(repr(mode))}$"
    ):
        prepare_for_inference(img, mode)


def test_big_endian_nifti(scan_dir):
    """anatomical.nii (or its phantom stand-in) is big-endian int16: read with native values,
    same as the reference."""
    path = scan_dir / "edge/nifti/anatomical.nii"
    raw = load_image(path, preprocess=False)
    ref = R.ref_read(path)
    assert raw.GetPixelID() == ref.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(raw), sitk.GetArrayViewFromImage(ref))


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_64_bit_integer_volume(tmp_path, dtype):
    """SimpleITK reads 64-bit integers, but the library's kernels stop at 32 bits: it refuses
    them, naming the file and the pixel type, whether it preprocesses or not."""
    arr = random_volume(np.random.default_rng(0), (6, 20, 24), np.int32).astype(dtype) + 40000
    path = tmp_path / "wide.nii.gz"
    sitk.WriteImage(make_image(arr, (0.9, 0.9, 5.0)), str(path))
    signed = dtype == np.int64
    assert R.ref_read(path).GetPixelID() == (sitk.sitkInt64 if signed else sitk.sitkUInt64)  # SimpleITK reads it
    kind = "signed" if signed else "unsigned"
    for preprocess in (True, False):
        with raises_for(path, UnsupportedImageError, rf"pixel type 64-bit {kind} integer is not supported"):
            load_image(path, preprocess=preprocess)
