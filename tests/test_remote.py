"""Object storage, for real: a local S3-protocol server (moto's standalone server on
127.0.0.1, started and stopped by this module: tests/s3server.py), scans uploaded to it,
and the library's real client path through fsspec/s3fs.

Every remote result is compared with the same call on the local files (the bytes of a
URL must be the local file's); prepared outputs with the tests' reference formula through
the local run (test_batch_prepare checks that one against tests/reference.py).
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import s3server
from conftest import package_env
from neurovfm import phantom
from neurovfm.data import DatasetMetadata, find_series, load_image, prepare_many, read_volume
from neurovfm.errors import ImageNotFoundError

pytestmark = pytest.mark.skipif(bool(s3server.missing()), reason=s3server.missing() or "ok")
BUCKET = "neurovfm-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    try:
        server = s3server.S3Server(tmp_path_factory.mktemp("moto") / "moto.log").__enter__()
    except RuntimeError as err:
        pytest.skip(f"the S3-protocol server cannot start here: {err}")
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        server.fs().mkdir(BUCKET)
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """Scans on disk: a CT phantom (.nii.gz), an MR phantom as a DICOM series in a study
    folder with a NIfTI beside it, and a dataset folder (raw/<study>/)."""
    root = tmp_path_factory.mktemp("local")
    ct = phantom.make_ct_phantom((96, 96, 36), (0.9, 0.9, 2.5), seed=11)
    sitk.WriteImage(ct, str(root / "ct.nii.gz"))
    study = root / "study"
    study.mkdir()
    mr = phantom.make_mri_phantom((80, 80, 40), (1.0, 1.0, 1.2), seed=12)
    phantom.write_dicom_series(mr, study / "t1", modality="MR", seed=12)
    sitk.WriteImage(mr, str(study / "t1_copy.nii.gz"))
    ds = root / "ds"
    (ds / "raw" / "s1").mkdir(parents=True)
    (ds / "raw" / "s2").mkdir(parents=True)
    sitk.WriteImage(ct, str(ds / "raw" / "s1" / "head.nii.gz"))
    phantom.write_dicom_series(mr, ds / "raw" / "s2" / "t1", modality="MR", seed=13)
    (ds / "raw" / "unmapped").mkdir()
    sitk.WriteImage(ct, str(ds / "raw" / "unmapped" / "x.nii.gz"))
    return root


@pytest.fixture(scope="module")
def bucket(s3, local):
    fs = s3.fs()
    fs.put(str(local) + "/", f"{BUCKET}/in/", recursive=True)
    return f"s3://{BUCKET}/in"


def _same(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize() and a.GetPixelID() == b.GetPixelID()
    assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
    assert a.GetDirection() == b.GetDirection()
    assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))


def test_load_image_of_urls_equals_the_local_files(bucket, local):
    for rel in ("ct.nii.gz", "study/t1"):
        _same(load_image(f"{bucket}/{rel}"), load_image(local / rel))
        _same(load_image(f"{bucket}/{rel}", preprocess=False), load_image(local / rel, preprocess=False))
    assert read_volume(f"{bucket}/ct.nii.gz").path == f"{bucket}/ct.nii.gz"


def test_real_scans_from_the_bucket(s3, bucket, data_dir):
    fs = s3.fs()
    fs.put(str(data_dir / "ct/phantom_head_5mm") + "/", f"{BUCKET}/real/ct5/", recursive=True)
    fs.put(str(data_dir / "mr/MR_Gd.nii.gz"), f"{BUCKET}/real/MR_Gd.nii.gz")
    _same(load_image(f"s3://{BUCKET}/real/ct5"), load_image(data_dir / "ct/phantom_head_5mm"))
    _same(load_image(f"s3://{BUCKET}/real/MR_Gd.nii.gz"), load_image(data_dir / "mr/MR_Gd.nii.gz"))


def _listings(s3, start: int) -> list[str]:
    """The prefixes of the list requests the server answered since byte ``start`` of its log."""
    from urllib.parse import parse_qs, urlsplit

    out = []
    for line in s3.log.read_bytes()[start:].decode(errors="replace").splitlines():
        if '"GET /' not in line or "list-type=2" not in line:
            continue
        target = line.split('"GET ', 1)[1].split(" ", 1)[0]
        out.append(parse_qs(urlsplit(target).query).get("prefix", [""])[0])
    return out


def test_find_series_lists_a_prefix_once_and_reads_series_from_their_files(s3, bucket, local):
    start = s3.log.stat().st_size
    remote = find_series(f"{bucket}/study")
    assert [p for p in _listings(s3, start) if p.startswith("in/study")] == ["in/study/"]
    here = find_series(local / "study")
    key = [(r.name, r.series_uid, r.usable, r.reason, r.n_slices, r.kind) for r in here]
    assert [(r.name, r.series_uid, r.usable, r.reason, r.n_slices, r.kind) for r in remote] == key
    by_name = {r.name: r for r in remote}
    start = s3.log.stat().st_size
    for r in here:
        got = by_name[r.name]
        assert got.path == f"{bucket}/study/" + os.path.relpath(r.path, local / "study")
        assert len(got.files) == len(r.files) and all(f.startswith(f"{bucket}/study/") for f in got.files)
        a, b = read_volume(got), read_volume(r)
        assert np.array_equal(a.array, b.array) and a.spacing == b.spacing
    assert [p for p in _listings(s3, start) if p.startswith("in/study")] == []  # read from their own files


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_prepare_manifest_of_urls_to_the_bucket(s3, bucket, local, tmp_path):
    fs = s3.fs()
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,mode,id\n{bucket}/ct.nii.gz,ct,a\n{bucket}/study,mri,b\n")
    out = f"s3://{BUCKET}/out"
    summary = prepare_many([], out, manifest=manifest, progress=False)
    assert summary.ok == 3 and summary.failed == 0, str(summary)
    rows = _rows(fs.cat_file(f"{BUCKET}/out/summary.csv").decode())
    assert [r["status"] for r in rows] == ["ok"] * 3
    # the same tokens as a local run of the same scans
    lman = tmp_path / "l.csv"
    lman.write_text(f"path,mode,id\n{local / 'ct.nii.gz'},ct,a\n{local / 'study'},mri,b\n")
    prepare_many([], tmp_path / "out", manifest=lman, progress=False)
    names = sorted(p.name for p in (tmp_path / "out").glob("*.npz"))
    assert sorted(os.path.basename(p) for p in fs.find(f"{BUCKET}/out") if p.endswith(".npz")) == names
    for n in names:
        got = np.load(io.BytesIO(fs.cat_file(f"{BUCKET}/out/{n}")))
        want = np.load(tmp_path / "out" / n)
        for k in ("tokens", "coords", "filtered", "size", "spacing", "origin", "direction"):
            assert np.array_equal(got[k], want[k]), (n, k)
    # a rerun resumes: every output already there
    again = prepare_many([], out, manifest=manifest, progress=False)
    assert [r.reason for r in again.rows] == ["already done"] * 3
    rows2 = _rows(fs.cat_file(f"{BUCKET}/out/summary.csv").decode())
    assert [(r["shape"], r["tokens"]) for r in rows2] == [(r["shape"], r["tokens"]) for r in rows]


def test_cli_with_storage_options_instead_of_the_environment(s3, bucket, tmp_path):
    env = package_env()
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(k, None)
    opts = [
        "--storage-option",
        f"endpoint_url={s3.endpoint}",
        "--storage-option",
        f"key={s3.env['AWS_ACCESS_KEY_ID']}",
        "--storage-option",
        f"secret={s3.env['AWS_SECRET_ACCESS_KEY']}",
    ]
    cmd = [sys.executable, "-m", "neurovfm"]
    res = subprocess.run(
        [*cmd, "series", f"{bucket}/study", *opts], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stderr
    assert "2 usable" in res.stdout.splitlines()[-1]
    res = subprocess.run(
        [*cmd, "prepare", f"{bucket}/ct.nii.gz", "--mode", "ct", "-o", f"s3://{BUCKET}/cli/", "--no-progress", *opts],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert s3.fs().exists(f"{BUCKET}/cli/summary.csv") and s3.fs().exists(f"{BUCKET}/cli/ct.npz")


def test_metadata_of_a_bucket_dataset(bucket, local):
    url = f"{bucket}/ds"
    with pytest.warns(UserWarning, match="unmapped"):
        meta = DatasetMetadata.from_directory(url, {"s1": "ct", "s2": "mri"})
    with pytest.warns(UserWarning, match="unmapped"):
        here = DatasetMetadata.from_directory(local / "ds", {"s1": "ct", "s2": "mri"})
    assert meta.data_dir == url
    assert [(s.name, s.mode, [(i.name, i.path, i.kind) for i in s.images]) for s in meta] == [
        (s.name, s.mode, [(i.name, i.path, i.kind) for i in s.images]) for s in here
    ]
    assert meta.save() == f"{url}/metadata.json"


def test_scan_dataset_of_a_prefix(bucket, local):
    pytest.importorskip("torch")
    from neurovfm.datasets import ScanDataset

    remote = ScanDataset([f"{bucket}/study"], "mri")
    here = ScanDataset([local / "study"], "mri")
    assert len(remote) == len(here) == 2
    for a, b in zip(remote, here):
        assert np.array_equal(a["img"].numpy(), b["img"].numpy())


def test_missing_objects_and_bad_urls(bucket):
    with pytest.raises(ImageNotFoundError, match="nothing is listed under it"):
        load_image(f"{bucket}/nope.nii.gz")
    with pytest.raises(FileNotFoundError):
        find_series(f"{bucket}/nope/")
    with pytest.raises(ValueError, match="storage_options are for a URL"):
        load_image(Path("x.nii.gz"), storage_options={"anon": True})
