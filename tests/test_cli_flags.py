"""`-j/--threads` is kernel threads and `-w/--workers` scans or images at once, in every
command that takes them (`prepare` and `cache build` agree), and the help says so."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import SimpleITK as sitk

from conftest import package_env
from neurovfm import phantom
from neurovfm.cli import build_parser, main


@pytest.fixture(scope="module")
def two_scans(tmp_path_factory):
    d = tmp_path_factory.mktemp("flags")
    mr = phantom.make_mri_phantom(shape=(32, 64, 64), spacing=(4.0, 3.0, 3.0))
    paths = []
    for name in ("a", "b"):
        p = d / f"{name}.nii.gz"
        sitk.WriteImage(mr, str(p), useCompression=True)
        paths.append(p)
    return paths


def _sub_help(argv: list, capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    "argv",
    [
        ["prepare", "a.nii.gz", "b.nii.gz", "-o", "out"],
        ["cache", "build", "ds"],
    ],
)
def test_prepare_and_cache_build_read_the_flags_alike(argv):
    args = build_parser().parse_args([*argv, "-w", "3", "-j", "2"])
    assert (args.workers, args.threads) == (3, 2)
    args = build_parser().parse_args([*argv, "--workers", "4", "--threads", "1"])
    assert (args.workers, args.threads) == (4, 1)


@pytest.mark.parametrize("argv", [["prepare"], ["cache", "build"], ["cache", "import"], ["qa"], ["bench"]])
def test_help_says_what_j_and_w_mean(argv, capsys):
    text = _sub_help(argv, capsys)
    assert "-j N, --threads N threads for the kernels" in text
    if argv != ["qa"]:
        assert "-w N, --workers N" in text
        assert " at once" in text.split("-w N, --workers N", 1)[1][:120]


def test_main_help_examples_use_w_for_workers(capsys):
    text = _sub_help([], capsys)
    for line in text.split(" neurovfm ")[1:]:
        assert "-j 16" not in line and "-j 8" not in line


def test_prepare_batch_w_and_j(two_scans, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["prepare", *map(str, two_scans), "--mode", "mri", "-o", str(out), "-w", "2", "-j", "1", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok", "ok"]


def test_workers_are_for_batch_mode(two_scans, capsys):
    assert main(["prepare", str(two_scans[0]), "--mode", "mri", "-w", "2"]) == 2
    assert "-w/--workers" in capsys.readouterr().err


def test_cache_build_w_and_j(two_scans, tmp_path, capsys):
    from neurovfm.data import CacheManager, DatasetMetadata

    ds = tmp_path / "ds"
    for i, p in enumerate(two_scans):
        (ds / "raw" / f"s{i}").mkdir(parents=True)
        (ds / "raw" / f"s{i}" / "t1.nii.gz").write_bytes(p.read_bytes())
    DatasetMetadata.from_directory(ds, {"s0": "mri", "s1": "mri"}).save()
    assert main(["cache", "build", str(ds), "-w", "2", "-j", "1", "--no-progress"]) == 0
    stats = CacheManager(ds).get_cache_stats()
    assert stats["cached_images"] == 2
    capsys.readouterr()


def test_bench_w_goes_to_the_cache_benchmark(tmp_path, capsys):
    d = tmp_path / "bench"
    d.mkdir()
    for name in ("bench_prepare.py", "bench_cache.py"):
        (d / name).write_text("")
    assert main(["bench", "--bench-dir", str(d), "--list", "-j", "3", "-w", "2"]) == 0
    out = capsys.readouterr().out
    assert "bench_prepare.py --quick --threads 3" in out
    assert "bench_cache.py --quick --workers 2" in out


def test_warnings_print_as_one_line_naming_the_file(tmp_path):
    """A warning of the command line is ``neurovfm: warning: <file>: <why>``, one line, with
    no Python source line; also in batch mode, above the progress bar."""
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(phantom.make_ct_phantom((64, 64, 30), (1.0, 1.0, 3.0), seed=1), str(ct))
    for args in (
        ["prepare", str(ct), "--mode", "mri"],
        ["prepare", str(ct), "--mode", "mri", "-o", str(tmp_path / "o")],
    ):
        res = subprocess.run(
            [sys.executable, "-m", "neurovfm", *args], capture_output=True, text=True, env=package_env(), timeout=120
        )
        assert res.returncode == 0, res.stderr
        lines = [ln for ln in res.stderr.replace("\r", "\n").splitlines() if "warning" in ln.lower()]
        assert lines, res.stderr
        for ln in lines:
            assert ln.startswith("neurovfm: warning: ") and f"{ct}: " in ln and "mode is 'mri'" in ln, ln
        assert ".py:" not in res.stderr, res.stderr
