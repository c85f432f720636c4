"""The one series policy for derived/secondary series (``derived='auto'|'include'|'skip'``),
on study folders made from a real MR series of the corpus (its phantom stand-in without it):

- ``mixed``: three acquisitions (ImageType ORIGINAL\\PRIMARY) and one derived series
  (DERIVED\\SECONDARY, a reformat beside them);
- ``derived_only``: one series whose files say DERIVED\\SECONDARY, as conversion and
  anonymisation tools often write for every series of an export.

Every entry point (``neurovfm series``, ``DatasetMetadata.from_directory`` / ``neurovfm
metadata``, ``prepare_many`` / ``neurovfm prepare``, ``ScanDataset`` and
``StudyPreprocessor.load_study``) must use the same series for the same folder under the
same policy; the expected sets below are written from the rule, not from any of them.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
import reference as R  # noqa: E402
from conftest import copy_series, package_env  # noqa: E402
from neurovfm.data import DatasetMetadata, find_series, load_image, prepare_many  # noqa: E402
from neurovfm.data.batch import discover_scans  # noqa: E402
from neurovfm.errors import EmptyStudyError, InvalidArgumentError, MetadataError  # noqa: E402

SOURCE = "mr/sag_t1_2d_thick"  # 35 slices, 256 x 256
ACQ = ["ORIGINAL", "PRIMARY", "M", "ND"]
DERIVED = ["DERIVED", "SECONDARY", "MPR"]
POLICIES = ("auto", "include", "skip")


@pytest.fixture(scope="module")
def studies(tmp_path_factory, scan_dir) -> dict:
    """{"mixed": (folder, {uid: kind}), "derived_only": (folder, {uid: kind})}."""
    root = tmp_path_factory.mktemp("derived")
    src = scan_dir / SOURCE
    out = {}
    mixed = root / "mixed"
    uids = {}
    for i, name in enumerate(["t1_a", "t1_b", "t1_c"]):
        uids[copy_series(src, mixed / name, i + 2, f"acq {name}", ImageType=ACQ)] = "acquisition"
    uids[copy_series(src, mixed / "reformat", 9, "reformat", ImageType=DERIVED)] = "derived"
    out["mixed"] = (mixed, uids)
    only = root / "derived_only"
    uid = copy_series(src, only / "t1_7T", 3, "t1 7T", ImageType=["DERIVED", "SECONDARY"])
    out["derived_only"] = (only, {uid: "derived"})
    return out


def _expected(uids: dict, policy: str) -> set:
    """The rule, written out: the series a policy uses."""
    has_acq = "acquisition" in uids.values()
    use_derived = policy == "include" or (policy == "auto" and not has_acq)
    return {u for u, kind in uids.items() if kind == "acquisition" or use_derived}


def test_counts_and_reasons(studies):
    folder, uids = studies["mixed"]
    for policy, n in [("auto", 3), ("include", 4), ("skip", 3)]:
        recs = find_series(folder, derived=policy)
        assert sum(r.usable for r in recs) == n, policy
        assert {r.series_uid for r in recs if r.usable} == _expected(uids, policy)
        (d,) = [r for r in recs if r.derived]
        assert d.usable == (policy == "include")
        assert "derived/secondary" in d.reason and f"derived='{policy}'" in d.reason
    # the acquisitions carry no note
    assert all(r.reason == "" for r in find_series(folder) if not r.derived)

    folder, uids = studies["derived_only"]
    (auto,) = find_series(folder)  # the default is 'auto'
    assert auto.usable and auto.derived
    assert "no usable acquisition" in auto.reason and "derived='auto'" in auto.reason
    (inc,) = find_series(folder, derived="INCLUDE")
    assert inc.usable and "derived='include'" in inc.reason
    (skip,) = find_series(folder, derived="skip")
    assert not skip.usable and not skip.broken
    assert "derived='skip'" in skip.reason and "derived='include'" in skip.reason
    with pytest.raises(InvalidArgumentError, match="derived must be one of 'auto', 'include', 'skip', got 'yes'"):
        find_series(folder, derived="yes")


def test_derived_only_series_reads_as_the_acquisition(studies, scan_dir):
    """The derived copy holds the acquisition's pixels: what it reads to is SimpleITK's read
    of the original series (the tests' reference)."""
    folder, _ = studies["derived_only"]
    ref = R.ref_read(str(scan_dir / SOURCE))
    got = load_image(folder, preprocess=False)
    assert np.array_equal(R.sitk.GetArrayViewFromImage(got), R.sitk.GetArrayViewFromImage(ref))


def test_colour_localizer_and_short_keep_their_reasons_under_every_policy(tmp_path, scan_dir):
    src = scan_dir / SOURCE
    copy_series(src, tmp_path / "loc", 1, "loc", keep={0}, ImageType=["DERIVED", "SECONDARY", "LOCALIZER"])
    copy_series(src, tmp_path / "short", 2, "short", keep={0, 1, 2}, ImageType=DERIVED)
    ds = pydicom.dcmread(scan_dir / "edge/dicom/color_jpeg_not_ct.dcm")
    ds.ImageType, ds.SeriesNumber, ds.SeriesDescription = ["DERIVED", "SECONDARY"], 3, "colour"
    ds.save_as(tmp_path / "colour.dcm")
    for policy in POLICIES:
        by = {r.name: r for r in find_series(tmp_path, derived=policy)}
        assert sorted(by) == ["1_loc", "2_short", "3_colour"]
        assert not any(r.usable for r in by.values())
        assert "localizer" in by["1_loc"].reason and "colour" in by["3_colour"].reason, policy
        # a derived volume the policy uses is checked like any other; one it leaves out says so
        short = by["2_short"].reason
        assert ("too few slices" in short) == (policy != "skip") and ("derived='skip'" in short) == (policy == "skip")


def _metadata(root: Path, folders: dict, policy: str) -> DatasetMetadata:
    ds = root / f"ds_{policy}"
    (ds / "raw").mkdir(parents=True)
    for name, folder in folders.items():
        os.symlink(folder, ds / "raw" / name)
    return DatasetMetadata.from_directory(ds, {name: "mri" for name in folders}, derived=policy)


def _load_study_uids(folder: Path, policy: str, uid_of_dir: dict) -> set:
    from neurovfm.pipelines import StudyPreprocessor

    batch = StudyPreprocessor(derived=policy).load_study(folder, "mri")
    return {uid_of_dir[os.path.basename(p)] for p in batch["path"]}


@pytest.mark.filterwarnings("ignore::neurovfm.errors.ModeMismatchWarning")
def test_every_entry_point_gives_the_same_series(studies, tmp_path):
    pytest.importorskip("torch")
    from neurovfm.datasets import ScanDataset

    env = package_env()
    for key in ("mixed", "derived_only"):
        folder, uids = studies[key]
        uid_of_dir = {d.name: pydicom.dcmread(next(d.iterdir())).SeriesInstanceUID for d in folder.iterdir()}
        for policy in POLICIES:
            want = _expected(uids, policy)
            # neurovfm series --json
            out = subprocess.run(
                [sys.executable, "-m", "neurovfm", "series", str(folder), "--json", "--derived", policy],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
            assert out.returncode == 0, out.stderr
            assert {r["series_uid"] for r in json.loads(out.stdout) if r["usable"]} == want, (key, policy)
            # prepare_many's jobs and ScanDataset
            jobs = discover_scans([folder], "mri", derived=policy)
            assert {j.series_uid for j in jobs if not j.status} == want, (key, policy)
            assert {j.series_uid for j in jobs if j.status} == set(uids) - want
            if want:
                assert {j.series_uid for j in ScanDataset([folder], "mri", derived=policy).jobs} == want
                assert _load_study_uids(folder, policy, uid_of_dir) == want, (key, policy)
                meta = _metadata(tmp_path / key, {"s": folder}, policy)
                got = {uid_of_dir[Path(im.path).name] for im in meta.get_study("s").images}
                assert got == want, (key, policy)
            else:
                with pytest.raises(EmptyStudyError, match="study 's'.*derived='include' \\(--derived include\\)"):
                    _metadata(tmp_path / key, {"s": folder}, policy)
                with pytest.raises(ValueError, match="derived='include' would use"):
                    _load_study_uids(folder, policy, uid_of_dir)


@pytest.mark.filterwarnings("ignore::neurovfm.errors.ModeMismatchWarning")
def test_prepare_many_rows_say_which_series_and_why(studies, tmp_path):
    folder, uids = studies["mixed"]
    want = _expected(uids, "auto")
    summary = prepare_many([folder], tmp_path / "auto", "mri", progress=False)
    assert {r.series_uid for r in summary.rows if r.status == "ok"} == want
    (skipped,) = [r for r in summary.rows if r.status == "skipped"]
    assert uids[skipped.series_uid] == "derived" and "derived='include' uses it" in skipped.reason
    with open(tmp_path / "auto" / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["status"] for r in rows) == ["ok", "ok", "ok", "skipped"]
    summary = prepare_many([folder], tmp_path / "inc", "mri", progress=False, derived="include")
    assert summary.ok == 4 and summary.skipped == 0
    # the derived-only study, skipped by 'skip' with the option named; used by default
    folder, uids = studies["derived_only"]
    summary = prepare_many([folder], tmp_path / "skip", "mri", progress=False, derived="skip")
    (row,) = summary.rows
    assert row.status == "skipped" and "derived='include'" in row.reason
    summary = prepare_many([folder], tmp_path / "only", "mri", progress=False)
    assert summary.ok == 1


def test_cli_derived_options(studies, tmp_path):
    env = package_env()
    folder, _ = studies["mixed"]

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "neurovfm", *map(str, args)], capture_output=True, text=True, env=env, timeout=300
        )

    out = run("series", folder, "--derived", "include")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].endswith("4 usable, 0 not (derived series: include)")
    out = run("series", folder)
    assert "3 usable, 1 not (derived series: auto)" in out.stdout
    (line,) = [ln for ln in out.stdout.splitlines() if ln.startswith("9_reformat")]
    assert " no " in line and "derived/secondary" in line
    assert run("series", folder, "--derived", "maybe").returncode == 2

    res = run("prepare", folder, "--mode", "mri", "-o", tmp_path / "p_inc", "--derived", "include", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "4 ok" in res.stdout

    # metadata and cache build: the derived-only study is used by default, says why, and
    # 'skip' is an error naming the study and the option
    only, _ = studies["derived_only"]
    ds = tmp_path / "ds"
    (ds / "raw").mkdir(parents=True)
    os.symlink(only, ds / "raw" / "s7T")
    os.symlink(folder, ds / "raw" / "smix")
    (ds / "modes.csv").write_text("s7T,mri\nsmix,mri\n")
    res = run("metadata", ds, "--modes", ds / "modes.csv", "--derived", "skip")
    assert res.returncode == 2 and "s7T" in res.stderr and "--derived include" in res.stderr, res.stderr
    assert not (ds / "metadata.json").exists()
    res = run("metadata", ds, "--modes", ds / "modes.csv")
    assert res.returncode == 0, res.stderr
    assert "series by study (derived series: auto):" in res.stdout
    assert "s7T: used t1_7T" in res.stdout and "no usable acquisition" in res.stdout
    assert "smix: not used 9_reformat" in res.stdout
    meta = json.loads((ds / "metadata.json").read_text())
    assert meta["derived"] == "auto"
    (img,) = [s for s in meta["studies"] if s["name"] == "s7T"][0]["images"]
    assert "no usable acquisition" in img["note"]
    # cache build --derived include: raw/ described again (the reformat added), then built
    res = run("cache", "build", ds, "--derived", "include", "--no-progress")
    assert res.returncode == 0, res.stderr
    meta = DatasetMetadata.from_file(ds / "metadata.json")
    assert meta.derived == "include" and len(meta.get_study("smix").images) == 4
    assert all(im.processed for s in meta for im in s.images)
    with pytest.raises(MetadataError):
        DatasetMetadata.from_directory(ds, {"s7T": "mri"}, derived="skip")


def test_default_load_image_prefers_the_acquisition(tmp_path, scan_dir):
    """A folder read as one volume (load_image) takes an acquisition before a derived series
    with more slices (the 'auto' rule); a derived-only folder reads its derived series."""
    src = scan_dir / SOURCE
    n = len(list(src.iterdir()))
    copy_series(src, tmp_path / "acq", 2, "acq", keep=set(range(n - 10)), ImageType=ACQ)
    copy_series(src, tmp_path / "mpr", 9, "mpr", ImageType=DERIVED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = load_image(tmp_path, preprocess=False)
    assert img.GetSize()[2] == n - 10
