"""The built-in phantom: deterministic, anatomically plausible values, the stated
geometry, and a DICOM series that SimpleITK reads back exactly as the NIfTI."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from neurovfm import phantom

SMALL_CT = {"shape": (72, 64, 30), "spacing": (3.0, 3.2, 6.0)}
SMALL_MRI = {"shape": (60, 64, 40), "spacing": (3.2, 3.0, 4.0)}


def _orientation(img):
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(img.GetDirection())


def _same_geometry(a: sitk.Image, b: sitk.Image, atol=1e-6):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=atol)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=atol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=atol)


@pytest.fixture(scope="module")
def default_ct():
    return phantom.make_ct_phantom()


@pytest.fixture(scope="module")
def default_mri():
    return phantom.make_mri_phantom()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Small phantoms written by write_phantoms (NIfTI + DICOM series)."""
    out = tmp_path_factory.mktemp("phantoms")
    ct = phantom.make_ct_phantom(**SMALL_CT)
    mri = phantom.make_mri_phantom(**SMALL_MRI)
    return phantom.write_phantoms(out, ct=ct, mri=mri), ct, mri


# --- determinism ---------------------------------------------------------------------------


@pytest.mark.parametrize("make, kw", [(phantom.make_ct_phantom, SMALL_CT), (phantom.make_mri_phantom, SMALL_MRI)])
def test_deterministic(make, kw):
    a, b = make(**kw), make(**kw)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
    _same_geometry(a, b, atol=0)
    c = make(**kw, seed=123)
    assert not np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(c))
    _same_geometry(a, c, atol=0)


@pytest.mark.parametrize(
    "make, kw",
    [
        (phantom.make_ct_phantom, SMALL_CT),
        (phantom.make_mri_phantom, SMALL_MRI),
        (phantom.make_mri_phantom, dict(SMALL_MRI, tilt_deg=35.0, orientation="ASL")),
    ],
)
def test_local_boxes_change_nothing(make, kw, monkeypatch):
    """Local structures are painted only inside their bounding boxes (for speed);
    painting them everywhere must give the same voxels."""
    fast = sitk.GetArrayFromImage(make(**kw))
    whole = phantom._anatomy
    monkeypatch.setattr(phantom, "_anatomy", lambda x, y, z, t, w, box=None: whole(x, y, z, t, w))
    np.testing.assert_array_equal(fast, sitk.GetArrayFromImage(make(**kw)))


# --- geometry and values -------------------------------------------------------------------


def test_ct_geometry(default_ct):
    img = default_ct
    assert img.GetSize() == (256, 256, 120)
    assert img.GetSpacing() == (0.8, 0.8, 1.5)
    assert img.GetPixelID() == sitk.sitkInt16
    assert img.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert _orientation(img) == "LPS"
    # The slice axis is z and the head is centred in the field of view.
    centre = img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in img.GetSize()])
    np.testing.assert_allclose(centre, (0.0, 12.0, -140.0), atol=1e-3)


def _mean_at(img, centre, q, scale=1.0):
    """Mean of the 3x3x3 voxels around the anatomical point q (mm from the head centre)."""
    x, y, z = img.TransformPhysicalPointToIndex(tuple(np.asarray(centre) + scale * np.asarray(q)))
    a = sitk.GetArrayViewFromImage(img)
    return float(a[z - 1 : z + 2, y - 1 : y + 2, x - 1 : x + 2].mean())


def test_ct_values(default_ct):
    img, c = default_ct, (0.0, 12.0, -140.0)
    a = sitk.GetArrayViewFromImage(img)
    assert a.min() >= -1024 and a.max() <= 3071
    assert abs(_mean_at(img, c, (0, -100, 0)) + 1000) < 10  # air in front of the face
    assert 1000 < _mean_at(img, c, (65, 0, 0)) < 1600  # skull (outer table)
    assert 500 < _mean_at(img, c, (62.5, 0, 0)) < 900  # diploe
    assert abs(_mean_at(img, c, (9, -2, 14)) - 5) < 6  # lateral ventricle (CSF)
    assert abs(_mean_at(img, c, (-36, -14, 26)) - 70) < 6  # haemorrhage
    wm, gm = _mean_at(img, c, (30, 30, 40)), _mean_at(img, c, (55, 0, 0))
    assert 20 < wm < 34 and 31 < gm < 45 and gm > wm + 5
    # Noise: not a piecewise-constant image.
    brain = a[55:65, 120:136, 100:116].astype(np.float64)
    assert 3 < brain.std() < 12
    # Some bone is in the bone window's upper half.
    assert np.count_nonzero(a > 1000) > 10_000


def test_mri_geometry_and_values(default_mri):
    img = default_mri
    assert img.GetPixelID() == sitk.sitkUInt16
    assert img.GetSize() == (192, 192, 140)
    assert _orientation(img) == "PIR"  # sagittal: reorienting to RPI permutes and flips
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-12)
    assert not np.allclose(np.abs(d), np.round(np.abs(d)))  # oblique (tilted) acquisition
    rpi = sitk.DICOMOrient(img, "RPI")
    assert rpi.GetSize() == (140, 192, 192) and rpi.GetSpacing() == (1.2, 1.0, 1.0)
    a = sitk.GetArrayViewFromImage(img)
    assert np.median(a[:, :8, :8]) < 40  # background: Rician noise around 0
    c = (2.0, -8.0, 35.0)
    csf, gm, wm = (_mean_at(img, c, q) for q in ((9, -2, 14), (55, 0, 0), (30, 30, 40)))
    assert csf < 250 < gm < 600 < wm


def test_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        phantom.make_ct_phantom(shape=(10, 10))
    with pytest.raises(ValueError, match="spacing"):
        phantom.make_ct_phantom(shape=(8, 8, 8), spacing=(1, 0, 1))
    with pytest.raises(ValueError, match="orthonormal"):
        phantom.make_ct_phantom(shape=(8, 8, 8), direction=np.diag([1.0, 2.0, 1.0]))


# --- files ---------------------------------------------------------------------------------


def test_write_phantoms_paths(written):
    paths, _, _ = written
    assert set(paths) == {"ct_nifti", "ct_dicom", "mri_nifti"}
    assert paths["ct_nifti"].name.endswith(".nii.gz") and paths["ct_nifti"].is_file()
    assert paths["mri_nifti"].name.endswith(".nii.gz") and paths["mri_nifti"].is_file()
    assert paths["ct_dicom"].is_dir()


def test_write_some_phantoms(tmp_path):
    small = phantom.make_mri_phantom(**SMALL_MRI)
    paths = phantom.write_phantoms(tmp_path, mri=small, names=["mri_nifti"])
    assert list(paths) == ["mri_nifti"] and [p.name for p in tmp_path.iterdir()] == ["mri_phantom.nii.gz"]
    with pytest.raises(ValueError, match="unknown phantom"):
        phantom.write_phantoms(tmp_path, names=["pet"])


def test_nifti_round_trip(written):
    paths, ct, mri = written
    for path, img in ((paths["ct_nifti"], ct), (paths["mri_nifti"], mri)):
        back = sitk.ReadImage(str(path))
        assert back.GetPixelID() == img.GetPixelID()
        _same_geometry(back, img)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(img))


def _read_series(folder):
    reader = sitk.ImageSeriesReader()
    uids = reader.GetGDCMSeriesIDs(str(folder))
    assert len(uids) == 1
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uids[0]))
    return reader.Execute(), uids[0]


def test_dicom_series_reads_back_as_the_nifti(written):
    paths, ct, _ = written
    series, _ = _read_series(paths["ct_dicom"])
    nifti = sitk.ReadImage(str(paths["ct_nifti"]))
    assert series.GetPixelID() == sitk.sitkInt16  # HU after the rescale
    _same_geometry(series, nifti)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(series), sitk.GetArrayViewFromImage(nifti))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(series), sitk.GetArrayViewFromImage(ct))


def test_dicom_headers(written):
    paths, ct, _ = written
    files = sorted(paths["ct_dicom"].iterdir())
    assert len(files) == ct.GetSize()[2]
    uids = set()
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        uids.add(ds.SeriesInstanceUID)
        assert ds.Modality == "CT" and ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
        assert ds.PixelRepresentation == 0 and ds.BitsAllocated == 16
        assert ds.pixel_array.dtype == np.uint16
        assert [float(v) for v in ds.PixelSpacing] == [ct.GetSpacing()[1], ct.GetSpacing()[0]]
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        expected = ct.TransformIndexToPhysicalPoint((0, 0, k))
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], expected, atol=1e-9)
        if k == 0:
            hu = ds.pixel_array.astype(np.int32) - 1024
            np.testing.assert_array_equal(hu, sitk.GetArrayViewFromImage(ct)[0])
    assert len(uids) == 1


def test_dicom_series_oblique(tmp_path):
    """An oblique direction survives the DICOM round trip (IOP/IPP written right)."""
    a = np.deg2rad(20.0)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    ct = phantom.make_ct_phantom(shape=(40, 44, 12), spacing=(5.0, 5.0, 8.0), direction=rot)
    phantom.write_dicom_series(ct, tmp_path / "s", seed=3)
    back, _ = _read_series(tmp_path / "s")
    _same_geometry(back, ct, atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(ct))


def test_dicom_uids_deterministic(tmp_path):
    ct = phantom.make_ct_phantom(shape=(16, 16, 3), spacing=(12.0, 12.0, 40.0))
    a = phantom.write_dicom_series(ct, tmp_path / "a", seed=5)
    b = phantom.write_dicom_series(ct, tmp_path / "b", seed=5)
    c = phantom.write_dicom_series(ct, tmp_path / "c", seed=6)
    ua = [pydicom.dcmread(p).SOPInstanceUID for p in a]
    assert ua == [pydicom.dcmread(p).SOPInstanceUID for p in b]
    assert len(set(ua)) == len(ua)
    assert pydicom.dcmread(a[0]).SeriesInstanceUID != pydicom.dcmread(c[0]).SeriesInstanceUID


def test_dicom_rejects_values_out_of_range(tmp_path):
    img = sitk.GetImageFromArray(np.full((3, 4, 4), 5000, np.int16))
    with pytest.raises(ValueError, match="-1024..3071"):
        phantom.write_dicom_series(img, tmp_path / "x")
