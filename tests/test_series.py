"""find_series, `neurovfm series`, and DatasetMetadata.from_directory with one image per
usable series, on a study folder made from the real corpus (its phantom stand-ins without it): series of different
studies side by side, a localizer, a derived/secondary copy, a series with a slice
missing, a short series, a colour image and a non-image object.

The expected geometry is SimpleITK's read of each series (the reference); the cache
of a flat multi-series folder is compared with the reference formula on SimpleITK's
read of each series' UID.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
import reference as R  # noqa: E402
from conftest import copy_series as _copy_series  # noqa: E402
from conftest import corpus_dir, package_env  # noqa: E402
from neurovfm.data import DatasetMetadata, SeriesRecord, find_series  # noqa: E402
from neurovfm.data.cache import CacheManager  # noqa: E402
from neurovfm.data.io import preprocess_image  # noqa: E402
from neurovfm.errors import ImageNotFoundError, ModeMismatchWarning  # noqa: E402

USABLE = {
    "5_SAG_MPRAGE_220_FOV": ("mprage", "MR", 192),
    "3_t1_fl2d_sag": ("t1thick", "MR", 35),
    "201_STD_BRAIN_5MM": ("ct5", "CT", 28),
    "2_CT": ("tilt", "CT", 28),
    "T1": ("T1.nii.gz", "", 124),
}
if corpus_dir() is None:  # the phantom stand-ins (tests/phantomcorpus.py) have fewer slices
    USABLE |= {"5_SAG_MPRAGE_220_FOV": ("mprage", "MR", 64), "T1": ("T1.nii.gz", "", 62)}
NOT_USABLE = {  # name -> words of the reason
    "1_localizer": "localizer",
    "9_derived_t1": "derived/secondary",
    "10_gap_t1": "missing slices",
    "11_short_t1": "too few slices",
    "2_BRAIN_SEQ_4_8_H31s": "colour",
    "12_report": "non-image",
}


@pytest.fixture(scope="module")
def study(tmp_path_factory, scan_dir) -> Path:
    root = tmp_path_factory.mktemp("series") / "study"
    root.mkdir()
    for name, rel in [
        ("ct5", "ct/phantom_head_5mm"),
        ("mprage", "mr/sag_mprage_peds"),
        ("t1thick", "mr/sag_t1_2d_thick"),
        ("tilt", "ct/head_tilt_ge"),
        ("T1.nii.gz", "mr/stroke/T1.nii.gz"),
    ]:
        os.symlink(scan_dir / rel, root / name)
    shutil.copy(scan_dir / "edge/dicom/color_jpeg_not_ct.dcm", root / "colour.dcm")
    t1 = scan_dir / "mr/sag_t1_2d_thick"
    n = len(list(t1.iterdir()))
    _copy_series(t1, root / "loc", 1, "localizer", keep={0}, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    _copy_series(t1, root / "derived", 9, "derived t1", ImageType=["DERIVED", "SECONDARY", "MPR"])
    # the files sort by name, not position: drop the slice in the middle of the stack by position
    by_pos = sorted(
        range(n),
        key=lambda i: float(pydicom.dcmread(sorted(t1.iterdir())[i], stop_before_pixels=True).ImagePositionPatient[0]),
    )
    _copy_series(t1, root / "gap", 10, "gap t1", keep=set(range(n)) - {by_pos[n // 2]})
    _copy_series(t1, root / "short", 11, "short t1", keep=set(by_pos[:5]))
    # a non-image object: a header without pixel data (a report)
    ds = pydicom.dcmread(sorted(t1.iterdir())[0])
    del ds.PixelData
    for tag in ("Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient"):
        delattr(ds, tag)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = pydicom.uid.generate_uid(), 12, "report"
    (root / "sr").mkdir()
    ds.save_as(root / "sr" / "report.dcm")
    return root


def test_find_series_lists_every_series_with_the_reason(study):
    records = find_series(study)
    assert all(isinstance(r, SeriesRecord) for r in records)
    by_name = {r.name: r for r in records}
    assert sorted(by_name) == sorted([*USABLE, *NOT_USABLE])
    for name, (where, modality, n) in USABLE.items():
        r = by_name[name]
        assert r.usable and r.reason == "", (name, r.reason)
        assert r.modality == modality and r.n_slices == n
        assert Path(r.path) == study / where
    for name, words in NOT_USABLE.items():
        r = by_name[name]
        assert not r.usable and words in r.reason, (name, r.reason)
    # usable first, most slices first
    assert [r.usable for r in records] == sorted((r.usable for r in records), reverse=True)
    assert by_name["5_SAG_MPRAGE_220_FOV"].series_number == 5
    assert by_name["T1"].kind == "nifti" and by_name["3_t1_fl2d_sag"].kind == "dicom"
    # broken (an error to report) or merely not a volume
    assert {n for n in NOT_USABLE if by_name[n].broken} == {"10_gap_t1"}


def test_geometry_is_simpleitks(study):
    for r in find_series(study):
        if not r.usable:
            continue
        ref = R.ref_read(r.path, r.series_uid or None)
        np.testing.assert_allclose(r.spacing, ref.GetSpacing(), rtol=1e-4, err_msg=r.name)
        np.testing.assert_allclose(r.origin, ref.GetOrigin(), atol=1e-3, err_msg=r.name)
        np.testing.assert_allclose(r.direction, ref.GetDirection(), atol=1e-5, err_msg=r.name)
        assert (r.cols, r.rows) == ref.GetSize()[:2] or r.kind == "nifti", r.name


def test_one_file_and_errors(scan_dir, tmp_path):
    (r,) = find_series(scan_dir / "mr/stroke/FLAIR.nii.gz")
    assert r.usable and r.kind == "nifti" and r.name == "FLAIR"
    (r,) = find_series(scan_dir / "edge/dicom/color_jpeg_not_ct.dcm")
    assert not r.usable and "colour" in r.reason
    with pytest.raises(ImageNotFoundError, match="nope"):
        find_series(tmp_path / "nope")
    assert find_series(tmp_path) == []  # an empty folder: no series
    (r,) = find_series(scan_dir / "mr/sag_t1_2d_thick", min_slices=40)
    assert not r.usable and "too few slices: 35" in r.reason


def test_cli_series_table_and_json(study):
    env = package_env()
    out = subprocess.run(
        [sys.executable, "-m", "neurovfm", "series", str(study)], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for name in [*USABLE, *NOT_USABLE]:
        (line,) = [ln for ln in lines if ln.split()[0] == name]
        assert (" yes " in line) == (name in USABLE), line
        if name in NOT_USABLE:
            assert NOT_USABLE[name] in line
    assert lines[-1].startswith(f"{len(USABLE) + len(NOT_USABLE)} series under") and "5 usable" in lines[-1]
    out = subprocess.run(
        [sys.executable, "-m", "neurovfm", "series", str(study), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    got = json.loads(out.stdout)
    assert got == [r.as_dict() for r in find_series(study)]
    assert {"series_uid", "description", "modality", "n_slices", "usable", "reason", "spacing"} <= set(got[0])


def test_metadata_lists_the_same_usable_series(study, tmp_path):
    ds = tmp_path / "ds"
    (ds / "raw").mkdir(parents=True)
    os.symlink(study, ds / "raw" / "s1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = DatasetMetadata.from_directory(ds, {"s1": "mri"})
    images = {im.name: im for im in meta.get_study("s1").images}
    # one image per usable series; one-series folders keep their names
    assert sorted(images) == sorted([*(where.split(".")[0] for where, _, _ in USABLE.values()), "gap"])
    uids = {r.series_uid for r in find_series(study) if (r.usable or r.broken) and r.kind == "dicom"}
    assert {im.series_uid for im in images.values() if im.kind != "nifti"} == uids
    # the broken series (a slice missing) stays an image, for the build to report it failed
    assert images["gap"].series_uid == {r.name: r for r in find_series(study)}["10_gap_t1"].series_uid
    assert sorted(r.name for _, r in meta.skipped_series) == sorted(set(NOT_USABLE) - {"10_gap_t1"})
    # the CT series of a study given as MRI: warned, naming the series
    mismatch = [str(w.message) for w in caught if issubclass(w.category, ModeMismatchWarning)]
    assert len(mismatch) == 2 and all("Modality=CT" in m for m in mismatch)
    assert any("ct5" in m for m in mismatch) and any("tilt" in m for m in mismatch)
    # written and read back with the UIDs
    meta.save()
    again = DatasetMetadata.from_file(ds / "metadata.json")
    assert {im.name: im.series_uid for im in again.get_study("s1").images} == {
        n: im.series_uid for n, im in images.items()
    }


@pytest.mark.filterwarnings("ignore::neurovfm.errors.ModeMismatchWarning")
def test_flat_folder_of_two_series_gives_two_images_and_their_caches(scan_dir, tmp_path):
    """Files of two series mixed in one study folder (a PACS export): two images named by
    number and description, each cached from its own series (reference formula on
    SimpleITK's read of that UID)."""
    study = tmp_path / "ds" / "raw" / "s3"
    study.mkdir(parents=True)
    for rel in ("mr/sag_mprage_peds", "mr/sag_t1_2d_thick"):
        for f in sorted((scan_dir / rel).iterdir()):
            os.symlink(f, study / f"{Path(rel).name}_{f.name}")
    meta = DatasetMetadata.from_directory(tmp_path / "ds", {"s3": "mri"})
    meta.save()
    images = meta.get_study("s3").images
    assert sorted(im.name for im in images) == ["3_t1_fl2d_sag", "5_SAG_MPRAGE_220_FOV"]
    assert all(im.path == os.path.join("raw", "s3") and im.series_uid for im in images)
    summary = CacheManager(tmp_path / "ds").build_cache(num_workers=1, progress=False)
    assert sorted(summary.done) == sorted(f"s3/{im.name}" for im in images)
    cm = CacheManager(tmp_path / "ds")
    for im in images:
        vols, flags, _view = R.ref_cache(preprocess_image(R.ref_read(study, im.series_uid)), "mri")
        got = cm.load_image("s3", im.name)
        want = vols[0][0].astype(np.float32) / 255
        np.testing.assert_array_equal(np.asarray(got["data"]).reshape(want.shape), want, err_msg=im.name)
        np.testing.assert_array_equal(np.asarray(got["mask"]).reshape(-1), flags.reshape(-1), err_msg=im.name)
