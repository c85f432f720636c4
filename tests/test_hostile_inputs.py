"""Broken and hostile inputs (written by tests/brokendata.py): every load ends, within a
bounded time and memory, in the library's own error naming the file and the reason, or
in the outcome docs/numbers.md gives (``prepare_for_inference`` returning None for a volume too small
to tokenise). Loads run in a child Python with an address-space limit, so a crash, a hang
or a huge allocation fails the test instead of killing pytest.

Decisions (also in README's "Errors" section):

- NaN/Inf voxels in a float volume: ``load_image(preprocess=True)`` raises ImageReadError
  "non-finite": the B-spline spreads them over their neighbours and the windows pass them
  on, so the reference would return NaN tokens, a silently wrong result. With
  ``preprocess=False`` the volume is returned as stored (that is what the file holds).
- A constant volume is a valid volume: it resamples and prepares (MRI normalises it to 0).
- 1x1x1 and 1xNxN: UnsupportedImageError "single slice"; a volume that resamples to
  fewer than one token: ``prepare_for_inference`` returns None (docs/numbers.md 3).
- A missing slice (one step a whole multiple of the others) is refused: SimpleITK would
  stack the slices evenly and shift every slice after the gap. Several slabs of different
  thickness are read as SimpleITK reads them, with a warning (tests/test_dicom.py checks
  the values); duplicate slice positions are refused; mixed
  orientations or sizes in one series: the largest group of one geometry, read whole.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import brokendata as B
import pytest
from conftest import package_env

from neurovfm.data.cache import CacheManager
from neurovfm.data.metadata import DatasetMetadata

#: Address-space limit of the child (a huge allocation fails there, not in pytest). None
#: under AddressSanitizer (scripts/asan_test.sh), whose shadow memory reserves terabytes of
#: address space: there the peak-RSS bound below still holds.
MEMORY_LIMIT = None if os.environ.get("NEUROVFM_SANITIZERS") else 3 << 30
#: Bounds per case: seconds and peak resident memory growth.
SECONDS_PER_CASE = 5.0
MAX_RSS_GROWTH_MB = 300

_CHILD = textwrap.dedent(
    """
    import json, os, resource, sys, time
    limit, drop = int(sys.argv[1]), sys.argv[2] == "1"
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import numpy as np
    from neurovfm.data import load_image, prepare_for_inference
    from neurovfm.errors import NeuroVFMError
    if drop and os.geteuid() == 0:  # root reads anything: become nobody first
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    def rss():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    start_rss = rss()
    for c in json.loads(sys.stdin.read()):
        t0 = time.perf_counter()
        out = {"name": c["name"], "preprocess": c["preprocess"]}
        try:
            img = load_image(c["path"], preprocess=c["preprocess"])
            out["size"] = list(img.GetSize())
            if c["preprocess"]:
                for mode in ("ct", "mri"):
                    res = prepare_for_inference(img, mode)
                    out[mode] = None if res is None else [
                        [list(a.shape), bool(np.isfinite(a).all()), float(a.min()), float(a.max())]
                        for a in res[0]
                    ]
        except Exception as e:
            out["type"] = type(e).__name__
            out["library"] = isinstance(e, NeuroVFMError)
            out["builtin"] = isinstance(e, (ValueError, FileNotFoundError))
            out["permission"] = isinstance(e, PermissionError)
            out["msg"] = str(e)
        out["seconds"] = time.perf_counter() - t0
        out["rss_growth_mb"] = rss() - start_rss
        print(json.dumps(out), flush=True)
    """
)


def run_cases(cases: dict, drop_privileges: bool = False, timeout: float = 60.0) -> dict:
    """Load every {name: path} in one child (preprocess True then False), under the memory
    limit; returns {(name, preprocess): result}. A crash or a hang fails the test and
    names the case it happened in."""
    payload = [{"name": n, "path": str(p), "preprocess": pre} for n, p in cases.items() for pre in (True, False)]
    env = package_env(NEUROVFM_NUM_THREADS="2")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(MEMORY_LIMIT or 0), "1" if drop_privileges else "0"],
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as err:
        done = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else err.stdout or ""
        pytest.fail(f"child hung after {time.perf_counter() - t0:.0f} s; finished: {done[-2000:]}")
    results = {}
    for line in proc.stdout.splitlines():
        r = json.loads(line)
        results[(r["name"], r["preprocess"])] = r
    missing = [k for k in ((c["name"], c["preprocess"]) for c in payload) if k not in results]
    assert proc.returncode == 0 and not missing, (
        f"child exited with {proc.returncode} (negative: killed by a signal) before {missing[:1]}; "
        f"stderr: {proc.stderr[-3000:]}"
    )
    for r in results.values():
        assert r["seconds"] < SECONDS_PER_CASE, r
        assert r["rss_growth_mb"] < MAX_RSS_GROWTH_MB, r
    return results


def assert_error(r: dict, path, keyword: str, exc: str | None = None, permission: bool = False) -> None:
    """The library's own error (or PermissionError when ``permission``) naming ``path``
    and matching the ``keyword`` regular expression."""
    import re

    assert "type" in r, f"{r['name']}: expected an error, got {r}"
    assert r["library"] or (permission and r["permission"]), r
    assert r["builtin"] or r["permission"], r
    if exc is not None:
        assert r["type"] == exc, r
    assert str(path) in r["msg"], r
    assert re.search(keyword, r["msg"], re.IGNORECASE), (keyword, r)


TRUNCATED_GZ = (
    r"truncated: the compressed stream ends early \(Compressed file ended before the end-of-stream marker was reached\)"
)
NO_PIXELS = r"no pixel data \(the PixelData element is missing\)"
BAD_HEADER = (
    r"truncated or inconsistent header: pixel data holds 2048 bytes but Rows x Columns x frames x samples x bytes = "
)
# case -> (exception type name, the whole message as a regex, "<P>" standing for the case's
# path) for errors with either preprocess value
ERRORS = {
    "zero_byte_nii": ("ImageReadError", r"<P>: empty file \(0 bytes\)"),
    "zero_byte_niigz": ("ImageReadError", r"<P>: empty file \(0 bytes\)"),
    "zero_byte_dcm": ("ImageReadError", r"<P>: empty file \(0 bytes\)"),
    "truncated_gz_in_gzip_header": (
        "ImageReadError",
        r"<P>: truncated: the compressed stream ends inside the NIfTI header",
    ),
    "truncated_gz_quarter": ("ImageReadError", r"<P>: " + TRUNCATED_GZ),
    "truncated_gz_half": ("ImageReadError", r"<P>: " + TRUNCATED_GZ),
    "truncated_gz_trailer": ("ImageReadError", r"<P>: " + TRUNCATED_GZ),
    "truncated_nii": (
        "ImageReadError",
        r"<P>: truncated or bad dimensions: header claims 36x40x24 voxels of datatype 4 "
        r"\(69120 bytes from offset 352\), the file holds 34736 bytes",
    ),
    "bad_crc": (
        "ImageReadError",
        r"<P>: corrupt compressed data: CRC checksum mismatch \(CRC check failed \d+ != \d+\)",
    ),
    "bad_isize": (
        "ImageReadError",
        r"<P>: corrupt compressed data: the gzip length trailer does not match "
        r"\(Incorrect length of data produced\)",
    ),
    "huge_dims_gz": (
        "ImageReadError",
        r"<P>: header claims 30000x30000x30000 voxels of datatype 4 \(54000000000000 bytes "
        r"from offset 352\), more than \d+ compressed bytes can hold: bad dimensions or truncated file",
    ),
    "huge_dims_nii": (
        "ImageReadError",
        r"<P>: truncated or bad dimensions: header claims 30000x30000x30000 voxels of "
        r"datatype 4 \(54000000000000 bytes from offset 352\), the file holds 69472 bytes",
    ),
    "big_claim_gz": (
        "ImageReadError",
        r"<P>: truncated or bad dimensions: the header needs 2662000352 bytes, "
        r"the stream decodes to \d+",
    ),
    "huge_dims_scaled": (
        "ImageReadError",
        r"<P>: truncated or bad dimensions: header claims 30000x30000x30000 voxels of "
        r"datatype 4 \(54000000000000 bytes from offset 352\), the file holds 69472 bytes",
    ),
    "negative_dims": ("ImageReadError", r"<P>: invalid dimension dim\[1\]=-36 in the NIfTI header \(must be >= 1\)"),
    "offset_past_end": ("ImageReadError", r"<P>: voxel offset 10000000 is past the end of the file \(69472 bytes\)"),
    "offset_past_end_gz": (
        "ImageReadError",
        r"<P>: voxel offset 10000000 is past the end of the decoded data \(69472 bytes\)",
    ),
    "unknown_datatype": ("ImageReadError", r"<P>: unknown NIfTI datatype code 999"),
    "one_voxel": ("UnsupportedImageError", r"<P>: single slice \(size \(1, 1, 1\)\); a 3D volume is required"),
    "one_by_n_by_n": ("UnsupportedImageError", r"<P>: single slice \(size \(36, 40, 1\)\); a 3D volume is required"),
    "dicom_pixels_cut": (
        "ImageReadError",
        r"<P>: cannot read <P>/s002\.dcm: pixel data claims 2048 bytes but only 1748 "
        r"remain \(truncated file\)",
    ),
    "dicom_pixels_missing": ("ImageReadError", r"<P>: cannot read <P>/s003\.dcm: " + NO_PIXELS),
    "dicom_single_no_pixels": ("ImageReadError", r"<P>: cannot read <P>: " + NO_PIXELS),
    "dicom_huge_rows": (
        "ImageReadError",
        r"<P>: cannot read <P>: " + BAD_HEADER + r"65535 x 65535 x 1 x 1 x 2 claims 8589672450",
    ),
    "dicom_huge_rows_series": (
        "ImageReadError",
        r"<P>: cannot read <P>/s000\.dcm: "
        + BAD_HEADER
        + r"65535 x 65535 x 1 x 1 x 2 claims 8589672450 \(and 2 more files\)",
    ),
    "dicom_huge_frames": (
        "ImageReadError",
        r"<P>: cannot read <P>: " + BAD_HEADER + r"32 x 32 x 2000000 x 1 x 2 claims 4096000000",
    ),
    "dicom_duplicate_slices": (
        "DicomSeriesError",
        r"<P>: duplicate slice positions: 6 files but only 5 distinct positions "
        r"\(e\.g\. s002\.dcm and s003\.dcm at 8\.0000 mm along the slice normal\): several "
        r"acquisitions or copies in one series",
    ),
    "dicom_missing_slice": (
        "DicomSeriesError",
        r"<P>: missing slices: a gap of 5 mm between slices 2 and 3 \(of 6, ordered "
        r"along the normal\) where the step is 2\.5 mm: 1 slice missing; the volume would be distorted",
    ),
    "dicom_non_image_folder": (
        "DicomSeriesError",
        r"<P>: no DICOM image series found \(3 files examined: 3 non-image DICOM object\)",
    ),
    "dicom_non_image_file": (
        "DicomSeriesError",
        r"<P>: no DICOM image series found \(1 files examined: 1 non-image DICOM object\)",
    ),
    "no_images_folder": ("DicomSeriesError", r"<P>: no DICOM image series found \(2 files examined: 2 not DICOM\)"),
    "symlink_loop_only": (
        "DicomSeriesError",
        r"<P>: no files found \(2 symbolic links not followed \(a loop or a missing target\)\)",
    ),
    "symlink_self": ("ImageReadError", r"<P>: symbolic link loop \(too many levels of symbolic links\)"),
}
# case -> raw size (x, y, z) read with preprocess=False
READ = {
    "constant": [36, 40, 24],
    "too_small": [3, 3, 2],
    "nan_float32": [36, 40, 24],
    "inf_float64": [36, 40, 24],
    "dicom_mixed_orientations": [32, 32, 5],
    "dicom_mixed_sizes": [32, 32, 5],
    "dicom_mixed_sizes_tie": [32, 32, 4],
    "symlink_loop_folder": [32, 32, 4],
}
# case -> (size after preprocessing, number of CT windows, number of MRI arrays); None: the
# volume is too small for one token (docs/numbers.md 3), so prepare_for_inference returns None
PREPARED = {
    "constant": ([32, 32, 16], 3, 1),
    "too_small": ([2, 2, 1], None, None),
    "dicom_mixed_orientations": ([16, 16, 3], None, None),
    "dicom_mixed_sizes": ([16, 16, 3], None, None),
    "dicom_mixed_sizes_tie": ([16, 16, 2], None, None),
    "symlink_loop_folder": ([16, 16, 2], None, None),
}
NON_FINITE = ("nan_float32", "inf_float64")


def test_cases_are_all_checked():
    assert set(ERRORS) | set(READ) == set(B.ALL_CASES) and not set(ERRORS) & set(READ)
    assert set(PREPARED) | set(NON_FINITE) == set(READ)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    paths = {}
    for name, make in B.ALL_CASES.items():
        d = root / name
        d.mkdir()
        paths[name] = make(d)
    return paths, run_cases(paths)


@pytest.mark.parametrize("name", sorted(ERRORS))
@pytest.mark.parametrize("preprocess", [True, False])
def test_broken_input_error(synthetic, name, preprocess):
    paths, results = synthetic
    exc, message = ERRORS[name]
    r = results[(name, preprocess)]
    assert_error(r, paths[name], "", exc)
    assert r["library"] and r["builtin"], r  # a NeuroVFMError that is also a ValueError/FileNotFoundError
    got = r["msg"].replace(str(paths[name]), "<P>")
    assert re.fullmatch(message, got), (message, got)


@pytest.mark.parametrize("name", sorted(READ))
def test_readable_hostile_input(synthetic, name):
    paths, results = synthetic
    raw = results[(name, False)]
    assert "type" not in raw and raw["size"] == READ[name], raw
    pre = results[(name, True)]
    if name in NON_FINITE:
        n_bad = {"nan_float32": 100, "inf_float64": 2}[name]
        assert_error(pre, paths[name], "", "ImageReadError")
        got = pre["msg"].replace(str(paths[name]), "<P>")
        assert got == (
            f"<P>: {n_bad} non-finite (NaN or Inf) voxels: resampled and normalised values would be undefined"
        ), got
        return
    assert "type" not in pre, pre
    size, n_ct, n_mri = PREPARED[name]
    assert pre["size"] == size, pre
    for mode, n in (("ct", n_ct), ("mri", n_mri)):
        if n is None:  # too small to tokenise (docs/numbers.md 3)
            assert pre[mode] is None, pre
            continue
        assert pre[mode] is not None and len(pre[mode]) == n, pre
        for shape, finite, lo, hi in pre[mode]:
            assert shape == [1, *size[::-1]] and finite and 0.0 <= lo <= hi <= 1.0, pre


def test_prepare_for_inference_refuses_non_finite_voxels():
    import numpy as np
    import SimpleITK as sitk

    from neurovfm.data import prepare_for_inference
    from neurovfm.errors import ImageReadError

    arr = np.zeros((8, 32, 32), np.float32)
    arr[2, 3, 4] = np.nan
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 4.0))
    for mode in ("ct", "mri"):
        with pytest.raises(ImageReadError, match=r"<in-memory image>: 1 non-finite \(NaN or Inf\) voxels"):
            prepare_for_inference(img, mode)


def test_tie_between_geometries_reads_one_whole_geometry(synthetic):
    """Two geometries of 4 slices: the tie goes to the one whose first file sorts first
    (a0..a3, 32 x 32), read whole, the same every time (with a warning, not checked here)."""
    _, results = synthetic
    assert results[("dicom_mixed_sizes_tie", False)]["size"] == [32, 32, 4]
    assert results[("dicom_mixed_sizes_tie", True)]["size"] == [16, 16, 2]


def test_real_files_cut(scan_dir, tmp_path):
    cases = B.cut_corpus_files(scan_dir, tmp_path)
    results = run_cases(cases)
    for name, path in cases.items():
        for pre in (True, False):
            assert_error(results[(name, pre)], path, r"truncated")
    # the series error names the one cut file
    bad = sorted(Path(cases["real_series_one_slice_cut"]).iterdir())[10]
    for pre in (True, False):
        assert str(bad) in results[("real_series_one_slice_cut", pre)]["msg"]


def test_unreadable_permissions():
    """chmod 000 files and folders. As root (CI) the child drops to nobody first."""
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="neurovfm_perm_"))
    try:
        os.chmod(root, 0o755)
        nii, single, folder = B.make_unreadable(root)
        # a readable folder whose slices are all unreadable
        inner = root / "readable_folder"
        inner.mkdir()
        files = B.write_series(inner, B.rand_slices(3, shape=(16, 16)))
        for p in [*files, inner]:
            os.chmod(p, 0o755 if p == inner else 0)
        cases = {"nii": nii, "single": single, "folder": folder, "readable_folder": inner}
        results = run_cases(cases, drop_privileges=os.geteuid() == 0)
        for name, path in cases.items():
            for pre in (True, False):
                assert_error(results[(name, pre)], path, r"permission", permission=True)
    finally:
        for dirpath, dirnames, _ in os.walk(root):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_build_cache_survives_broken_inputs(tmp_path):
    raw = tmp_path / "raw"
    good = {"good_ct": B.good_nifti(raw / "good_ct", "head"), "good_mr": B.good_nifti(raw / "good_mr", "t1")}
    broken = {
        "bad_crc": B.make_bad_crc,
        "huge_dims_gz": lambda r: B.make_huge_dims(r, True),
        "truncated_gz_half": lambda r: B.make_truncated_niigz(r, 0.5),
        "nan_float32": B.make_nan_float,
        "dicom_pixels_cut": B.make_dicom_pixels_cut,
        "dicom_duplicate_slices": B.make_dicom_duplicate_slices,
    }
    reasons = {
        "bad_crc": "CRC",
        "huge_dims_gz": "bad dimensions",
        "truncated_gz_half": "truncated",
        "nan_float32": "non-finite",
        "dicom_pixels_cut": "truncated",
        "dicom_duplicate_slices": "duplicate slice positions",
    }
    for study, make in broken.items():
        (raw / study).mkdir(parents=True)
        make(raw / study)
    modes = {s: ("mri" if s == "good_mr" else "ct") for s in [*good, *broken]}
    DatasetMetadata.from_directory(tmp_path, modes).save()
    cm = CacheManager(tmp_path)
    t0 = time.perf_counter()
    summary = cm.build_cache(num_workers=2, progress=False)
    assert time.perf_counter() - t0 < 60
    assert sorted(summary.done) == ["good_ct/head", "good_mr/t1"]
    assert {k.split("/")[0] for k in summary.failed} == set(broken)
    for key, reason in summary.failed.items():
        study, image = key.split("/")
        assert reasons[study] in reason, (key, reason)
        side = json.loads((tmp_path / "processed" / study / f"{image}.failed.json").read_text())
        assert reasons[study] in json.dumps(side), side
        assert reasons[study] in str(summary)
    stats = cm.get_cache_stats()
    assert stats["cached_images"] == 2 and stats["failed_images"] == len(broken)
    assert cm.load_image("good_mr", "t1") is not None
    again = cm.build_cache(num_workers=2, progress=False)
    assert again.done == [] and set(again.failed) == set(summary.failed)
    assert cm.get_cache_stats()["failed_images"] == len(broken)
