"""Bad inputs that are files (not DICOM folders): clear errors naming the file and the reason."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import compare_resampled, make_image, random_volume

import reference as R
from neurovfm.data import load_image, prepare_for_inference
from neurovfm.errors import (ImageNotFoundError, ImageReadError, ImageTooSmallError,
                             NeuroVFMError, UnsupportedImageError)


def raises_for(path, exc_type, reason):
    """pytest.raises for an error whose message is '<path>: ...<reason>...'."""
    return pytest.raises(exc_type, match=re.escape(str(path)) + r":.*(?i:" + reason + ")")


def check_message_starts_with_path(excinfo, path):
    assert str(excinfo.value).startswith(str(path)), str(excinfo.value)
    assert isinstance(excinfo.value, NeuroVFMError)


# --- bad files of the corpus --------------------------------------------------------------

CORPUS_BAD = [  # path, error type, reason
    ("edge/nifti/example4d.nii.gz", UnsupportedImageError, r"4D|4-D|time"),
    ("edge/nifti/sheared_S0_10slices.nii.gz", UnsupportedImageError, r"shear|orthonormal"),
    ("edge/nifti/example_nifti2.nii.gz", ImageReadError, r"NIfTI-2|NIfTI2|4D|no reader|format"),
    ("edge/dicom/color_jpeg_not_ct.dcm", UnsupportedImageError, r"colou?r|component|RGB"),
    ("ct/head_single_slice/693_UNCI.dcm", UnsupportedImageError, r"2D|single slice|one slice"),
    ("mr/stroke/SOURCE.md", ImageReadError, r"not a readable|format|reader|not an image"),
]


@pytest.mark.parametrize("rel,exc,reason", CORPUS_BAD, ids=[c[0] for c in CORPUS_BAD])
@pytest.mark.parametrize("preprocess", [True, False])
def test_corpus_bad_files(data_dir, rel, exc, reason, preprocess):
    path = data_dir / rel
    with raises_for(path, exc, reason) as excinfo:
        load_image(path, preprocess=preprocess)
    check_message_starts_with_path(excinfo, path)
    assert isinstance(excinfo.value, ValueError)


def test_reference_also_refuses_them(data_dir):
    """The corpus README's claim: SimpleITK cannot make a 3D volume of these."""
    for rel, _, _ in CORPUS_BAD[:3]:
        with pytest.raises((RuntimeError, AssertionError)):
            R.ref_read(data_dir / rel)


# --- synthetic bad files ------------------------------------------------------------------


def test_missing_path(tmp_path):
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load_image(path)
    with pytest.raises(ImageNotFoundError):
        load_image(str(path), preprocess=False)


def test_2d_image(tmp_path):
    path = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 30), np.int16)), str(path))
    with raises_for(path, UnsupportedImageError, r"2D|2-D"):
        load_image(path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".png"])
def test_colour_image(tmp_path, suffix):
    path = tmp_path / f"rgb{suffix}"
    shape = (6, 20, 30, 3) if suffix != ".png" else (20, 30, 3)
    img = sitk.GetImageFromArray(np.zeros(shape, np.uint8), isVector=True)
    sitk.WriteImage(img, str(path))
    with raises_for(path, UnsupportedImageError, r"colou?r|component|vector|RGB") as excinfo:
        load_image(path)
    check_message_starts_with_path(excinfo, path)


def test_true_4d_synthetic(tmp_path):
    path = tmp_path / "four.nii.gz"
    vol = sitk.GetImageFromArray(np.zeros((5, 6, 7), np.float32))
    four = sitk.JoinSeries([vol, vol])
    assert four.GetSize() == (7, 6, 5, 2)
    sitk.WriteImage(four, str(path))
    with raises_for(path, UnsupportedImageError, r"4D|4-D"):
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
    compare_resampled(load_image(path), R.ref_preprocess(ref_raw), R.ref_resample_float64(ref_raw),
                      source=ref_raw)


@pytest.mark.parametrize("content", [b"", b"hello, I am not an image\n", bytes(range(256)) * 40],
                         ids=["empty", "text", "binary"])
@pytest.mark.parametrize("name", ["junk.nii.gz", "junk.nii", "junk.bin", "junk"])
def test_junk_files(tmp_path, content, name):
    path = tmp_path / name
    path.write_bytes(content)
    with raises_for(path, ImageReadError, r".") as excinfo:
        load_image(path)
    check_message_starts_with_path(excinfo, path)
    assert len(str(excinfo.value)) > len(str(path)) + 5  # a reason follows the path


def test_junk_inside_gzip(tmp_path):
    path = tmp_path / "junk.nii.gz"
    path.write_bytes(gzip.compress(b"\x00" * 1000))
    with raises_for(path, ImageReadError, r"."):
        load_image(path)


def test_truncated_nifti(tmp_path, data_dir):
    src = (data_dir / "ct/body_small.nii.gz").read_bytes()
    for cut, name in [(len(src) // 2, "cut.nii.gz"), (200, "header_only.nii.gz")]:
        path = tmp_path / name
        path.write_bytes(src[:cut])
        with raises_for(path, ImageReadError, r".") as excinfo:
            load_image(path)
        check_message_starts_with_path(excinfo, path)
    raw = gzip.decompress(src)
    path = tmp_path / "cut.nii"
    path.write_bytes(raw[: len(raw) - 1000])
    with raises_for(path, ImageReadError, r"truncat|short|end|size"):
        load_image(path)


def test_single_slice_nifti(tmp_path):
    path = tmp_path / "one_slice.nii.gz"
    sitk.WriteImage(make_image(np.zeros((1, 64, 64), np.int16), (1.0, 1.0, 5.0)), str(path))
    with raises_for(path, UnsupportedImageError, r"single slice|one slice|2D"):
        load_image(path)


def test_too_small_to_resample(tmp_path):
    """Isotropic 1 mm with 3 slices: the slice axis resamples to int(3 / 4) = 0 voxels."""
    path = tmp_path / "tiny.nii.gz"
    sitk.WriteImage(make_image(np.ones((3, 5, 6), np.int16), (1.0, 1.0, 1.0)), str(path))
    with raises_for(path, ImageTooSmallError, r"small|resample|0") as excinfo:
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
    with pytest.raises(ValueError):
        prepare_for_inference(img, mode)


def test_big_endian_nifti(data_dir):
    """anatomical.nii is big-endian int16: read with native values, same as the reference."""
    path = data_dir / "edge/nifti/anatomical.nii"
    raw = load_image(path, preprocess=False)
    ref = R.ref_read(path)
    assert raw.GetPixelID() == ref.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(raw), sitk.GetArrayViewFromImage(ref))


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_64_bit_integer_volume(tmp_path, dtype):
    """SimpleITK reads and resamples 64-bit integers; the library must match it or say why not."""
    arr = random_volume(np.random.default_rng(0), (6, 20, 24), np.int32).astype(dtype) + 40000
    path = tmp_path / "wide.nii.gz"
    sitk.WriteImage(make_image(arr, (0.9, 0.9, 5.0)), str(path))
    try:
        ours = load_image(path)
    except UnsupportedImageError as err:
        assert str(err).startswith(str(path)) and re.search(r"pixel type|dtype|64", str(err))
        return
    ref_raw = R.ref_read(path)
    compare_resampled(ours, R.ref_preprocess(ref_raw), R.ref_resample_float64(ref_raw),
                      source=ref_raw)
