"""Batch preparation: ``prepare_many`` / ``neurovfm prepare INPUT... -o OUT_DIR`` on real
multi-series studies (outputs equal the reference formula, skipped series named with
the reason, resume, kill and rerun, a failing scan, shards, manifest, mode warnings),
and :class:`ScanDataset`."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import package_env
from pydicom.uid import generate_uid

import reference as R
from neurovfm.cli import main
from neurovfm.data import (
    OutputGeometry,
    mode_value_conflict,
    output_geometry,
    prepare_many,
    preprocess_image,
    untokenize,
)
from neurovfm.data.batch import discover_scans
from neurovfm.errors import ModeMismatchWarning

pytestmark = pytest.mark.usefixtures("quiet_itk")


def _link_dir(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        (dst / f.name).symlink_to(f)


@pytest.fixture(scope="module")
def studies(scan_dir, tmp_path_factory) -> Path:
    """Two studies: (a) a sagittal T1 DICOM series, its localizer (one slice, ImageType
    LOCALIZER, its own SeriesInstanceUID) and a NIfTI T1; (b) two NIfTI MR series."""
    root = tmp_path_factory.mktemp("studies")
    a = root / "study_a"
    _link_dir(scan_dir / "mr" / "sag_t1_2d_thick", a / "t1_dicom")
    loc = a / "localizer"
    loc.mkdir()
    first = sorted((scan_dir / "mr" / "sag_t1_2d_thick").iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesDescription = "localizer"
    ds.SeriesNumber = 99
    ds.save_as(loc / "loc.dcm")
    (a / "T1.nii.gz").symlink_to(scan_dir / "mr" / "stroke" / "T1.nii.gz")
    b = root / "study_b"
    b.mkdir()
    (b / "FLAIR.nii.gz").symlink_to(scan_dir / "mr" / "stroke" / "FLAIR.nii.gz")
    (b / "T2.nii.gz").symlink_to(scan_dir / "mr" / "stroke" / "T2.nii.gz")
    return root


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def _outputs(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if p.name != "summary.csv"}


@pytest.fixture(scope="module")
def full_run(studies, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    s = prepare_many([studies / "study_a", studies / "study_b"], out, "mri", workers=2, progress=False)
    return out, s


def test_one_output_per_usable_series_and_skipped_rows(full_run, studies):
    out, s = full_run
    assert s.failed == 0 and s.ok == 4 and s.skipped == 1, str(s)
    assert _outputs(out) == {
        "study_a__T1.npz",
        "study_a__" + [n for n in _outputs(out) if n.startswith("study_a__") and "T1." not in n][0][9:],
        "study_b__FLAIR.npz",
        "study_b__T2.npz",
    }
    rows = _rows(out)
    assert list(rows[0]) == [
        "input",
        "series_uid",
        "output",
        "status",
        "reason",
        "shape",
        "tokens",
        "foreground",
        "seconds",
        "mode_warnings",
    ]
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert len(skipped) == 1 and "localizer" in skipped[0]["reason"].lower()
    assert skipped[0]["input"] == str(studies / "study_a")
    for r in rows:
        if r["status"] == "ok":
            assert Path(r["output"]).is_file() and int(r["tokens"]) > 0 and r["mode_warnings"] == "0"


def test_outputs_equal_reference(full_run):
    out, _ = full_run
    rows = [r for r in _rows(out) if r["status"] == "ok"]
    for r in rows:
        with np.load(r["output"]) as z:
            src, uid = str(z["source"]), r["series_uid"] or None
            img = preprocess_image(R.ref_read(src, uid))
            ref = R.ref_prepare(img, "mri")
            assert ref is not None
            arrs, mask, _view = ref
            tokens, coords, filtered = R.ref_tokenize(arrs[0], mask)
            np.testing.assert_allclose(z["tokens"][0], tokens, rtol=0, atol=1e-6)
            np.testing.assert_array_equal(z["coords"], coords)
            np.testing.assert_array_equal(z["filtered"], filtered)
            # every voxel is in the tokens, and the grid they lie on is the reference image's
            np.testing.assert_allclose(untokenize(z["tokens"], z["size"])[0], arrs[0][0], rtol=0, atol=1e-6)
            geom = OutputGeometry.from_dict(z)
            assert geom == output_geometry(img, _view)
            assert "arrays" not in z.files
            # the reference cache's bytes, from the output's values
            cache = R.ref_cache(img, "mri")[0][0]
            got = np.asarray(R.ref_tokenize(cache, mask)[0], np.int16)
            assert np.abs((z["tokens"][0].astype(np.float64) * 255).astype(np.int16) - got).max() <= 1
            assert f"{z['tokens'].shape[1]}" == r["tokens"]


def test_resume_makes_only_missing(full_run, studies, tmp_path):
    src, _ = full_run
    out = tmp_path / "out"
    shutil.copytree(src, out)
    names = sorted(_outputs(out))
    for n in names[:2]:
        (out / n).unlink()
    before = {n: (out / n).stat().st_mtime_ns for n in names[2:]}
    s = prepare_many([studies / "study_a", studies / "study_b"], out, "mri", progress=False)
    assert sorted(_outputs(out)) == names
    assert {n: (out / n).stat().st_mtime_ns for n in names[2:]} == before
    done = [r for r in s.rows if r.reason == "already done"]
    made = [r for r in s.rows if r.status == "ok" and not r.reason]
    assert len(done) == 2 and sorted(Path(r.output).name for r in made) == names[:2]
    s2 = prepare_many([studies / "study_a", studies / "study_b"], out, "mri", progress=False, force=True)
    assert all(not r.reason for r in s2.rows if r.status == "ok")


def test_kill_halfway_then_rerun(full_run, studies, tmp_path):
    _, _ = full_run
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "neurovfm", "prepare", str(studies / "study_a"), str(studies / "study_b")]
    cmd += ["--mode", "mri", "-o", str(out), "-j", "1", "--no-progress"]
    p = subprocess.Popen(cmd, env=package_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            if out.is_dir() and any(n.endswith(".npz") for n in os.listdir(out)):
                break
            time.sleep(0.01)
        p.kill()
    finally:
        p.wait()
    first = {n: (out / n).stat().st_mtime_ns for n in os.listdir(out) if n.endswith(".npz")}
    assert first, "no output before the kill"
    for n in first:  # what is there is whole
        with np.load(out / n) as z:
            assert z["tokens"].ndim == 3
    assert (out / "summary.csv").is_file()
    rc = main(
        ["prepare", str(studies / "study_a"), str(studies / "study_b"), "--mode", "mri"]
        + ["-o", str(out), "--no-progress"]
    )
    assert rc == 0
    assert _outputs(out) == _outputs(full_run[0])  # no temporary or partial file left
    assert {n: (out / n).stat().st_mtime_ns for n in first} == first


def test_failing_scan_is_a_row_and_exit_1(studies, scan_dir, tmp_path, capsys):
    bad = tmp_path / "bad.nii.gz"
    raw = (scan_dir / "mr" / "stroke" / "T2.nii.gz").read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    out = tmp_path / "out"
    rc = main(["prepare", str(bad), str(studies / "study_b"), "--mode", "mri", "-o", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 1
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["failed", "ok", "ok"]
    assert rows[0]["reason"] and "bad.nii.gz" in captured.err
    assert "1 failed" in captured.out
    assert _outputs(out) == {"study_b__FLAIR.npz", "study_b__T2.npz"}


def test_shards_partition(studies, tmp_path):
    inputs = [studies / "study_a", studies / "study_b"]
    all_jobs = {j.name for j in discover_scans(inputs, "mri")}
    out = tmp_path / "out"
    got = []
    for i in range(2):
        s = prepare_many(inputs, out / str(i), "mri", shard=(i, 2), progress=False)
        got.append(
            {Path(r.output).stem for r in s.rows if r.status == "ok"}
            | {r.series_uid for r in s.rows if r.status == "skipped"}
        )
        assert s.failed == 0
    assert not (got[0] & got[1])
    names = {n.rsplit(".", 1)[0] for i in range(2) for n in _outputs(out / str(i))}
    assert names == {n for n in all_jobs if "localizer" not in n and "99" not in n}


def test_manifest_with_per_row_modes_and_mode_warnings(scan_dir, tmp_path, capsys):
    man = tmp_path / "scans.csv"
    man.write_text(
        "path,mode,id\n"
        f"{scan_dir / 'ct' / 'body_small.nii.gz'},ct,p1\n"
        f"{scan_dir / 'mr' / 'stroke' / 'T1.nii.gz'},mri,p1\n"
        f"{scan_dir / 'ct' / 'body_small.nii.gz'},mri,p2\n"
    )
    out = tmp_path / "out"
    with pytest.warns(ModeMismatchWarning, match="body_small"):
        rc = main(["prepare", "--manifest", str(man), "-o", str(out), "--no-progress"])
    assert rc == 0
    assert _outputs(out) == {"p1_body_small.npz", "p1_T1.npz", "p2_body_small.npz"}
    rows = _rows(out)
    assert [r["mode_warnings"] for r in rows] == ["0", "0", "1"]
    with np.load(out / "p1_body_small.npz") as z:
        assert str(z["mode"]) == "ct" and z["tokens"].shape[0] == 3
    assert "1 mode warnings" in capsys.readouterr().out


def test_mode_value_conflict():
    ct = np.full((8, 8, 8), -1000, np.int16)
    ct[2:6] = 40
    assert "air" in mode_value_conflict(ct, "mri")
    assert mode_value_conflict(ct, "ct") == ""
    mr = np.arange(512, dtype=np.uint16).reshape(8, 8, 8)
    assert "no negative" in mode_value_conflict(mr, "ct")
    assert mode_value_conflict(mr, "mri") == ""
    assert mode_value_conflict(np.zeros((4, 4, 4)), "ct") == ""


def test_single_scan_prepare_warns_on_mode(scan_dir, capsys):
    with pytest.warns(ModeMismatchWarning, match="no negative"):
        assert main(["prepare", str(scan_dir / "mr" / "stroke" / "T1.nii.gz"), "--mode", "ct"]) == 0
    capsys.readouterr()


def test_scan_dataset_with_workers(studies, full_run):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from neurovfm.datasets import ScanDataset

    out, _ = full_run
    ds = ScanDataset([studies / "study_a", studies / "study_b"], "mri")
    assert len(ds) == 4 and len(ds.skipped) == 1
    items = list(DataLoader(ds, batch_size=None, num_workers=2))
    by_source = {}
    for r in _rows(out):
        if r["status"] == "ok":
            with np.load(r["output"]) as z:
                by_source[(str(z["source"]), r["series_uid"])] = (z["tokens"][0].copy(), OutputGeometry.from_dict(z))
    for it in items:
        assert it["img"].dtype == torch.float32 and it["img"].shape[1] == 1024
        assert it["coords"].shape == (it["img"].shape[0], 3)
        tokens, geom = by_source[(it["path"], it["series_uid"])]
        np.testing.assert_array_equal(it["img"].numpy(), tokens)
        assert it["geometry"] == geom and geom.token_grid == tuple(it["size"].tolist())


def test_nifti_format_overlays_the_scan(scan_dir, tmp_path):
    """--format nifti: each CT window and the token mask as .nii.gz on the resampled grid;
    the files hold the reference formula's values and SimpleITK's resampling of the original
    onto their grid is the pipeline's own volume (the parity rule: one grey level where
    SimpleITK's float64 value is within 1e-6 of an integer, as in test_fidelity)."""
    import SimpleITK as sitk
    from neurovfm.data.geometry import output_geometry

    ct = scan_dir / "ct" / "body_small.nii.gz"
    mr = scan_dir / "mr" / "stroke" / "T1.nii.gz"
    out = tmp_path / "out"
    s_ct = prepare_many([ct], out, "ct", format="nifti", progress=False)
    s_mr = prepare_many([mr], out / "mr", "mri", format="nifti", progress=False)
    (row,) = s_ct.rows
    files = row.output.split(";")
    assert [Path(f).name for f in files] == [f"body_small_{w}.nii.gz" for w in ("brain", "blood", "bone", "mask")]
    (mrow,) = s_mr.rows
    assert [Path(f).name for f in mrow.output.split(";")] == ["T1.nii.gz", "T1_mask.nii.gz"]
    # values: the reference formula (float64, then float32) on the pipeline's resampled image
    resampled = preprocess_image(sitk.ReadImage(str(ct)))
    arrs, flags, view = R.ref_prepare(resampled, "ct")
    for f, want in zip(files[:3], arrs):
        img = sitk.ReadImage(f)
        got = sitk.GetArrayFromImage(img)
        assert got.dtype == np.float32
        want_sitk = output_geometry(resampled, view).to_sitk_order(
            np.asarray(want).reshape(np.asarray(want).shape[-3:])
        )
        np.testing.assert_allclose(got, want_sitk.astype(np.float32), atol=1e-6)
        assert img.GetSpacing() == pytest.approx(resampled.GetSpacing())
    mask = sitk.GetArrayFromImage(sitk.ReadImage(files[3]))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert mask.mean() == pytest.approx(float(np.asarray(flags).mean()), abs=1e-9)
    # the affine: the original resampled onto the written grid is the pipeline's image
    grid = sitk.ReadImage(files[0])
    orig = sitk.ReadImage(str(ct))
    onto = sitk.Resample(orig, grid, sitk.Transform(), sitk.sitkBSpline, 0.0, orig.GetPixelID())
    a = sitk.GetArrayFromImage(onto).astype(np.int64)
    b = sitk.GetArrayFromImage(sitk.Resample(resampled, grid, sitk.Transform(), sitk.sitkNearestNeighbor)).astype(
        np.int64
    )
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.05


@pytest.mark.parametrize("fmt", ["npz", "nifti"])
def test_a_killed_runs_temporary_files_are_removed(scan_dir, tmp_path, fmt):
    """The temporary files of outputs a killed run was writing (hidden, in OUT_DIR) are
    removed by the next run, whatever the format; finished outputs stay."""
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".T1.npz.abc123.neurovfm-tmp", out / ".T1_brain.nii.gz.xyz.neurovfm-tmp.nii.gz"]
    for p in stale:
        p.write_bytes(b"half written")
    keep = out / ".hidden_user_file"
    keep.write_text("not ours")
    s = prepare_many([scan_dir / "mr" / "stroke" / "T1.nii.gz"], out, "mri", format=fmt, progress=False)
    assert [r.status for r in s.rows] == ["ok"]
    assert not any(p.exists() for p in stale)
    assert keep.exists()
    assert not [n for n in os.listdir(out) if "neurovfm-tmp" in n]
