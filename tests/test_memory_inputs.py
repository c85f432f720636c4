"""Volumes already in memory: ``load_image(array, spacing, origin, direction)``, a
``SimpleITK.Image`` and a nibabel image give the bytes of the file they came from.

The expected volume is always ``load_image`` of the file itself, and the array and its
geometry are what SimpleITK's own reader (the tests' reference, ``R.ref_read``) gives
for that file; the phantom cases run without the corpus, the real ones with it (and on
their phantom stand-ins without it: conftest.scan_dir).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

import reference as R
from conftest import scan_path
from neurovfm import phantom
from neurovfm.data import load_image, preprocess_image
from neurovfm.data.scan import prepare_scan
from neurovfm.errors import ImageReadError, InvalidArgumentError, InvalidTypeError, UnsupportedImageError

REAL = ["ct/body_small.nii.gz", "mr/MR_Gd.nii.gz", "mr/stroke/T2.nii.gz", "ct/head_tilt_ge", "mr/sag_t1_2d_thick"]


def _same(a: sitk.Image, b: sitk.Image) -> None:
    """The same voxels, bit for bit; the same geometry (a DICOM file's geometry, computed by
    the library's reader, may differ from SimpleITK's by a last-bit rounding)."""
    assert a.GetSize() == b.GetSize() and a.GetPixelID() == b.GetPixelID()
    for get in (sitk.Image.GetSpacing, sitk.Image.GetOrigin, sitk.Image.GetDirection):
        np.testing.assert_allclose(get(a), get(b), rtol=1e-12, atol=1e-12)
    assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))


def _geometry(img: sitk.Image) -> dict:
    return dict(spacing=img.GetSpacing(), origin=img.GetOrigin(), direction=img.GetDirection())


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mem")
    ct = phantom.make_ct_phantom((96, 80, 40), (1.1, 1.1, 2.5), seed=4)
    ct.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # rotated: RPI needs a permutation
    mr = phantom.make_mri_phantom((64, 72, 50), (1.0, 1.2, 1.0), seed=5)
    out = {}
    for name, img in [("ct.nii.gz", ct), ("mr.nii", mr)]:
        sitk.WriteImage(img, str(root / name))
        out[name] = root / name
    return out


def _check_file(path) -> None:
    ref = R.ref_read(str(path))  # SimpleITK's own read: the array and geometry a user has
    want = load_image(path)
    _same(load_image(sitk.GetArrayFromImage(ref), **_geometry(ref)), want)
    _same(load_image(ref), want)
    _same(preprocess_image(ref), want)
    _same(load_image(sitk.GetArrayFromImage(ref), preprocess=False, **_geometry(ref)), load_image(path, False))


def test_phantom_files(phantom_files):
    for path in phantom_files.values():
        _check_file(path)


@pytest.mark.parametrize("rel", REAL)
def test_real_files(scan_dir, rel):
    _check_file(scan_path(scan_dir, rel))


@pytest.mark.parametrize("rel", ["ct/body_small.nii.gz", "mr/MR_Gd.nii.gz", "mr/stroke/T2.nii.gz"])
def test_nibabel_image_is_its_file(scan_dir, rel):
    nib = pytest.importorskip("nibabel")
    path = scan_dir / rel
    img = nib.load(str(path))
    _same(load_image(img), load_image(path))
    _same(load_image(img, preprocess=False), load_image(path, preprocess=False))


def test_nibabel_phantom(phantom_files):
    nib = pytest.importorskip("nibabel")
    for path in phantom_files.values():
        _same(load_image(nib.load(str(path))), load_image(path))


def test_strided_and_fortran_arrays_give_the_same_bytes(phantom_files):
    ref = R.ref_read(str(phantom_files["ct.nii.gz"]))
    arr = sitk.GetArrayFromImage(ref)
    want = load_image(arr, **_geometry(ref))
    _same(load_image(np.asfortranarray(arr), **_geometry(ref)), want)
    big = np.zeros((arr.shape[0], arr.shape[1] * 2, arr.shape[2]), arr.dtype)
    big[:, ::2] = arr
    _same(load_image(big[:, ::2], **_geometry(ref)), want)
    flipped = np.ascontiguousarray(arr[:, :, ::-1])
    _same(load_image(flipped[:, :, ::-1], **_geometry(ref)), want)


def test_prepare_scan_takes_an_image(phantom_files):
    path = phantom_files["ct.nii.gz"]
    a = prepare_scan(path, "ct")
    b = prepare_scan(R.ref_read(str(path)), "ct")
    assert a.tokens is not None and b.tokens is not None
    assert np.array_equal(a.tokens, b.tokens) and a.view == b.view


def test_argument_errors():
    v = np.zeros((8, 32, 32), np.int16)
    ok = dict(spacing=(1.0, 1.0, 4.0))
    load_image(v, **ok)
    cases = [
        (lambda: load_image(v), InvalidArgumentError, r"spacing=\(x, y, z\) in mm is required"),
        (lambda: load_image(v[0], **ok), InvalidArgumentError, r"expected a 3D array \[z, y, x\].*got 2D"),
        (lambda: load_image(v[None], **ok), InvalidArgumentError, "got 4D"),
        (lambda: load_image(v.astype(bool), **ok), InvalidArgumentError, "dtype bool is not supported"),
        (lambda: load_image(v.astype(np.int64), **ok), InvalidArgumentError, "dtype int64 is not supported"),
        (lambda: load_image(v.astype(">i2"), **ok), InvalidArgumentError, "newbyteorder"),
        (lambda: load_image(v, spacing=(1, 1)), InvalidArgumentError, r"spacing must be 3 numbers"),
        (lambda: load_image(v, spacing=(1, 0, 1)), InvalidArgumentError, "spacing must be 3 positive finite"),
        (lambda: load_image(v, spacing=(1, np.nan, 1)), InvalidArgumentError, "positive finite"),
        (lambda: load_image(v, spacing="1,1,1"), InvalidArgumentError, "spacing must be 3 numbers"),
        (lambda: load_image(v, origin=(0, 0, np.inf), **ok), InvalidArgumentError, "origin must be 3 finite"),
        (lambda: load_image(v, direction=(1, 0, 0), **ok), InvalidArgumentError, r"direction must be 9 numbers"),
        (
            lambda: load_image(v, direction=(1, 0.5, 0, 0, 1, 0, 0, 0, 1), **ok),
            InvalidArgumentError,
            "direction must be orthonormal",
        ),
        (lambda: load_image(v[:, :1], **ok), UnsupportedImageError, "single slice"),
        (lambda: load_image("scan.nii.gz", spacing=(1, 1, 1)), InvalidArgumentError, "are for an array"),
        (lambda: load_image([[1, 2]]), InvalidTypeError, "expected a path, a SimpleITK or nibabel image"),
        (lambda: load_image(np.full((8, 32, 32), np.nan, np.float32), **ok), ImageReadError, "non-finite"),
        (
            lambda: load_image(sitk.Image([8, 8, 8], sitk.sitkVectorFloat32, 3)),
            UnsupportedImageError,
            "colour or multi-component",
        ),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
    # the error family: what users catch
    with pytest.raises(ValueError):
        load_image(v)
    with pytest.raises(TypeError):
        load_image(3.5)


def test_direction_as_a_matrix_and_defaults(phantom_files):
    ref = R.ref_read(str(phantom_files["mr.nii"]))
    arr = sitk.GetArrayFromImage(ref)
    g = _geometry(ref)
    a = load_image(arr, spacing=g["spacing"], origin=g["origin"], direction=np.reshape(g["direction"], (3, 3)))
    _same(a, load_image(phantom_files["mr.nii"]))
    # the defaults: origin 0, identity direction, as SimpleITK's GetImageFromArray gives
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(g["spacing"])
    _same(load_image(arr, spacing=g["spacing"]), load_image(img))
