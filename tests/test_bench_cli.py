"""`neurovfm bench`: finding the benchmark scripts, what it runs, exit codes and errors.
The real benchmarks are not run here (they take minutes): a stand-in bench folder
records how each script was called."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import neurovfm
from neurovfm import cli
from neurovfm.cli import bench as cli_bench
from neurovfm.cli import main

RECORDER = """\
import json, os, sys
import neurovfm
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calls.jsonl")
with open(out, "a") as f:
    f.write(json.dumps({"script": os.path.basename(__file__), "argv": sys.argv[1:],
                        "neurovfm": neurovfm.__file__, "cwd": os.getcwd()}) + "\\n")
print("ran", os.path.basename(__file__))
sys.exit(int(os.environ.get("FAKE_BENCH_RC_" + os.path.basename(__file__)[6:-3], "0")))
"""


@pytest.fixture
def bench_dir(tmp_path) -> Path:
    d = tmp_path / "checkout" / "bench"
    d.mkdir(parents=True)
    for name in ("bench_prepare.py", "bench_cache.py"):
        (d / name).write_text(RECORDER)
    return d


def _calls(d: Path) -> list:
    f = d / "calls.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []


def test_bench_runs_quick_modes_of_present_scripts(bench_dir, capfd):
    assert main(["bench", "--bench-dir", str(bench_dir)]) == 0
    calls = _calls(bench_dir)
    assert [(c["script"], c["argv"]) for c in calls] == [
        ("bench_prepare.py", ["--quick"]),
        ("bench_cache.py", ["--quick"]),
    ]
    # the scripts benchmark the package this command runs from
    assert all(Path(c["neurovfm"]).resolve() == Path(neurovfm.__file__).resolve() for c in calls)
    out = capfd.readouterr().out
    assert "bench_dataset.py not present" in out
    assert "=== [1/2] prepare: ok" in out and "=== [2/2] cache: ok" in out
    assert "2 of 2 benchmarks ran" in out


def test_bench_threads_full_only(bench_dir, capfd):
    assert main(["bench", "--bench-dir", str(bench_dir), "--only", "prepare", "-j", "3", "--full"]) == 0
    assert [(c["script"], c["argv"]) for c in _calls(bench_dir)] == [("bench_prepare.py", ["--threads", "3"])]
    capfd.readouterr()


def test_bench_list_runs_nothing(bench_dir, capfd):
    assert main(["bench", "--bench-dir", str(bench_dir), "--list"]) == 0
    out = capfd.readouterr().out
    assert "bench_prepare.py --quick" in out and "bench_cache.py --quick" in out
    assert _calls(bench_dir) == []


def test_bench_failure_gives_exit_code_1(bench_dir, capfd, monkeypatch):
    monkeypatch.setenv("FAKE_BENCH_RC_prepare", "3")
    assert main(["bench", "--bench-dir", str(bench_dir)]) == 1
    out, err = capfd.readouterr()
    assert "prepare: FAILED (exit code 3)" in out
    assert err.strip().splitlines()[-1] == "neurovfm: error: benchmark(s) failed: prepare"
    assert len(_calls(bench_dir)) == 2  # the others still run


def _installed(monkeypatch, tmp_path) -> Path:
    """Pretend the package runs from site-packages (no checkout's bench/ beside it)."""
    pkg = tmp_path / "site-packages" / "neurovfm"
    monkeypatch.setattr(cli_bench, "package_dir", lambda: pkg)
    return pkg


def test_bench_found_from_env_and_cwd(bench_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROVFM_BENCH_DIR", str(bench_dir))
    assert cli.find_bench_dir() == bench_dir
    monkeypatch.delenv("NEUROVFM_BENCH_DIR")
    sub = bench_dir.parent / "some" / "where"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    _installed(monkeypatch, tmp_path)
    assert cli.find_bench_dir() == bench_dir.resolve()  # ./bench of a parent of the cwd


def test_bench_checkout_of_the_package_comes_before_cwd(bench_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("NEUROVFM_BENCH_DIR", raising=False)
    checkout = tmp_path / "other_checkout"
    (checkout / "bench").mkdir(parents=True)
    (checkout / "bench" / "bench_prepare.py").write_text(RECORDER)
    monkeypatch.setattr(cli_bench, "package_dir", lambda: checkout / "python" / "neurovfm")
    monkeypatch.chdir(bench_dir)
    assert cli.find_bench_dir() == checkout / "bench"


def test_package_dir_is_the_imported_package():
    assert cli_bench.package_dir() == Path(neurovfm.__file__).resolve().parent


@pytest.mark.parametrize(
    "argv,message",
    [
        (["bench", "--bench-dir", "{tmp}"], "no bench_prepare.py there"),
        (["bench", "--bench-dir", "{bench}", "--only", "frobnicate"], "unknown benchmark"),
        (["bench", "--bench-dir", "{bench}", "--only", "dataset"], "bench_dataset.py: not found"),
    ],
)
def test_bench_user_errors(argv, message, bench_dir, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path / "empty")).replace("{bench}", str(bench_dir)) for a in argv]
    (tmp_path / "empty").mkdir()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neurovfm: error: ") and message in err[0], err


def test_bench_not_found_anywhere(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("NEUROVFM_BENCH_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    _installed(monkeypatch, tmp_path)
    assert main(["bench"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("neurovfm: error: benchmark scripts not found") and "--bench-dir" in err


def test_every_command_has_help_with_examples(capsys):
    commands = [
        ["prepare"],
        ["metadata"],
        ["cache"],
        ["cache", "build"],
        ["cache", "stats"],
        ["cache", "verify"],
        ["qa"],
        ["bench"],
    ]
    for cmd in commands:
        assert main([*cmd, "--help"]) == 0, cmd
        out = capsys.readouterr().out
        assert out.startswith(f"usage: neurovfm {' '.join(cmd)}"), cmd
        assert "examples:" in out, cmd
