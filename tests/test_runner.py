"""The one runner (``neurovfm.data.runner``): executors, shards, the progress bar with
messages above it, the live summary file; and what its callers now say: a rerun's
``summary.csv`` keeps the numbers of outputs already done, and the cache summaries in
plain words, printed once. Phantom data only (no corpus needed)."""

from __future__ import annotations

import csv
import logging
import pickle
import warnings
import zlib
from pathlib import Path

import pytest
import SimpleITK as sitk

from neurovfm import phantom
from neurovfm.cli import main
from neurovfm.data import BuildSummary, CacheManager, DatasetMetadata, ImportSummary, prepare_many
from neurovfm.data import runner
from neurovfm.data.batch import _prepare_job
from neurovfm.errors import InvalidArgumentError

pytestmark = pytest.mark.usefixtures("quiet_itk")


def _square(x: int) -> int:
    return x * x


# --- the runner ---------------------------------------------------------------------------------


@pytest.mark.parametrize("executor", ["serial", "threads"])
def test_every_job_once_and_record_on_the_calling_thread(executor):
    import threading

    seen: dict[int, int] = {}
    threads = set()

    def record(job: int, res: int) -> dict[str, int]:
        threads.add(threading.get_ident())
        assert job not in seen
        seen[job] = res
        return {"done": len(seen)}

    runner.run_jobs(list(range(20)), _square, record, workers=3, executor=executor)
    assert seen == {k: k * k for k in range(20)}
    assert threads == {threading.get_ident()}


def test_unknown_executor_and_a_failing_job():
    with pytest.raises(InvalidArgumentError, match="executor must be one of serial, threads, ray, got .dask."):
        runner.run_jobs([1], _square, lambda j, r: None, executor="dask")

    def boom(x: int) -> int:
        raise RuntimeError(f"job {x}")

    for workers in (1, 2):
        with pytest.raises(RuntimeError, match="job"):
            runner.run_jobs([1, 2], boom, lambda j, r: None, workers=workers)


def test_shards_split_the_keys_as_before():
    keys = [f"s{i}/img{j}" for i in range(30) for j in range(3)]
    parts = [[k for k in keys if runner.in_shard(k, (i, 4))] for i in range(4)]
    assert sorted(sum(parts, [])) == sorted(keys)
    assert parts == [[k for k in keys if zlib.crc32(k.encode()) % 4 == i] for i in range(4)]
    assert all(runner.in_shard(k, None) for k in keys)
    assert runner.shard_from_env({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == (3, 4)
    assert runner.shard_from_env({"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    with pytest.raises(InvalidArgumentError):
        runner.resolve_shard((4, 4))


def test_work_functions_pickle(tmp_path):
    """What an executor in other processes needs: the callers' work functions ship."""
    import functools

    work = functools.partial(_prepare_job, str(tmp_path), "npz", False, 1, {})
    assert pickle.loads(pickle.dumps(work)).func is _prepare_job


def test_messages_warnings_and_logs_print_above_the_bar(capsys):
    log = logging.getLogger("neurovfm")
    handler = logging.StreamHandler(__import__("sys").stderr)
    handler.setFormatter(logging.Formatter("LOG %(message)s"))
    log.addHandler(handler)
    try:
        bar = runner.Progress(3, "demo", "it")

        def record(job: int, res: int) -> None:
            if job == 1:
                bar.say("said one")
                warnings.warn(f"warned {job}", UserWarning, stacklevel=1)
                log.warning("logged %d", job)

        with pytest.warns(UserWarning, match="warned 1"):  # still seen by the filters and recorders
            runner.run_jobs([0, 1, 2], _square, record, progress=bar)
        bar.close()
    finally:
        log.removeHandler(handler)
    err = capsys.readouterr().err
    for text in ("said one", "LOG logged 1"):
        line = next(ln for ln in err.replace("\r", "\n").splitlines() if text in ln)
        assert line.strip() == text, line  # a line of its own, not mixed into the bar


def test_summary_file_rows_as_they_come_then_in_order(tmp_path):
    path = tmp_path / "s.csv"
    f = runner.SummaryFile(str(path), ("a", "b"), lambda r: [str(r[0]), str(r[1])])
    f.add((2, "x"))
    assert path.read_text().splitlines() == ["a,b", "2,x"]  # a killed run keeps it
    f.close([(1, "y"), (2, "x")])
    assert path.read_text().splitlines() == ["a,b", "1,y", "2,x"]


# --- prepare_many: a rerun keeps the numbers ----------------------------------------------------


@pytest.fixture(scope="module")
def small_scans(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scans")
    sitk.WriteImage(phantom.make_mri_phantom((96, 96, 40), (2.0, 2.0, 4.0), seed=2), str(root / "a.nii.gz"))
    sitk.WriteImage(phantom.make_mri_phantom((80, 96, 36), (2.0, 2.0, 4.0), seed=1), str(root / "b.nii.gz"))
    return root


def _summary(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("format", ["npz", "nifti"])
def test_a_rerun_keeps_shape_tokens_and_foreground(small_scans, tmp_path, format):
    out = tmp_path / "out"
    first = prepare_many([small_scans], out, "mri", format=format, progress=False)
    assert first.ok == 2
    rows1 = _summary(out)
    assert all(r["shape"] and r["tokens"] and r["foreground"] for r in rows1)
    if format == "npz":
        (out / "summary.csv").unlink()  # the numbers come from the outputs themselves
    again = prepare_many([small_scans], out, "mri", format=format, progress=False)
    assert [r.reason for r in again.rows] == ["already done"] * 2
    rows2 = _summary(out)
    for key in ("input", "output", "status", "shape", "tokens", "foreground"):
        assert [r[key] for r in rows2] == [r[key] for r in rows1], key
    assert [r.tokens for r in again.rows] == [r.tokens for r in first.rows]


# --- the cache summaries ------------------------------------------------------------------------


def test_summaries_in_plain_words():
    nothing = str(BuildSummary(skipped=["s/a"], seconds=0.2))
    assert nothing.startswith("cache build: 0 built, 1 already cached, 0 failed, 0.2 s")
    assert "images/s" not in nothing and "left to" not in nothing and "skipped" not in nothing
    some = str(BuildSummary(done=["s/a", "s/b"], busy=["s/c"], seconds=2.0))
    assert "2 built" in some and "1.00 images/s" in some
    assert "1 skipped (another builder is building them)" in some
    imp = str(ImportSummary(imported=["s/a"], busy=["s/b"], seconds=1.0))
    assert "1 skipped (another process is importing them)" in imp and "left to" not in imp


@pytest.fixture()
def tiny_dataset(tmp_path, small_scans) -> Path:
    raw = tmp_path / "ds" / "raw" / "s1"
    raw.mkdir(parents=True)
    (raw / "a.nii.gz").symlink_to(small_scans / "a.nii.gz")
    DatasetMetadata.from_directory(tmp_path / "ds", {"s1": "mri"}).save()
    return tmp_path / "ds"


def test_cache_build_prints_its_summary_once_and_verify_in_plain_words(tiny_dataset, capsys):
    root = str(tiny_dataset)
    assert main(["cache", "verify", root]) == 1
    out = capsys.readouterr().out
    assert "1 of 1 images need `neurovfm cache build" in out and "(1 missing)" in out
    assert "not cached and valid" not in out
    for flags in (["-v"], ["-v", "--no-progress"]):
        assert main(["cache", "build", root, "-w", "1", *flags]) == 0
        cap = capsys.readouterr()
        assert (cap.out + cap.err).count("cache build:") == 1, cap
    assert "images/s" not in cap.out  # the second build had nothing to do
    assert main(["cache", "verify", root]) == 0
    assert "1 of 1 images are cached and valid" in capsys.readouterr().out
    assert CacheManager(root).verify() == {}


def test_nothing_below_the_command_line_imports_it():
    """data/, datasets/ and pipelines/ never import neurovfm.cli (one_line is errors')."""
    import ast

    import neurovfm

    root = Path(neurovfm.__file__).parent
    found = []
    for sub in ("data", "datasets", "pipelines"):
        for path in sorted((root / sub).rglob("*.py")):
            pkg = path.relative_to(root.parent).with_suffix("").parts[:-1]
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    base = list(pkg[: len(pkg) - node.level + 1]) if node.level else []
                    name = ".".join(base + ([node.module] if node.module else []))
                    names = [name] + [f"{name}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                found += [f"{path.relative_to(root)}: {n}" for n in names if n.split(".")[:2] == ["neurovfm", "cli"]]
    assert not found, found
