"""Ray as the runner's third executor, on a real local two-node cluster (tests/ray_harness.py)
run inside a private network namespace whose only interface is loopback (``unshare -n``),
so that nothing leaves the machine; and ``PrepareRows`` on its own.

The Ray run's outputs are compared with a local run's of the same manifest, and those with
the tests' reference through tests/test_batch_prepare.py; a worker is killed mid-run and
every row must still be ok, with every output whole.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import package_env
from neurovfm import phantom

HERE = Path(__file__).resolve().parent


def _namespace_problem() -> str:
    if importlib.util.find_spec("ray") is None:
        return "Ray is not installed (pip install 'neurovfm[ray]'; .ci/run installs it)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip (util-linux, iproute2) is not on PATH"
    try:
        ok = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return "" if ok else "cannot make a private network namespace here (unshare -n needs root or user namespaces)"


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    if os.environ.get("NEUROVFM_SANITIZERS"):
        pytest.skip(
            "the Ray cluster runs the CLI in its own processes (no kernel code of the test's): "
            "the installed-wheel stage of .ci/run runs it, not the sanitizer stage"
        )
    why = _namespace_problem()
    if why:
        pytest.skip(why)
    work = tmp_path_factory.mktemp("ray")
    cmd = f"ip link set lo up && exec {sys.executable} {HERE / 'ray_harness.py'} {work} --scans 8 --kill"
    res = subprocess.run(
        ["unshare", "-n", "bash", "-c", cmd], capture_output=True, text=True, env=package_env(), timeout=900
    )
    assert res.returncode == 0, res.stderr[-4000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert "error" not in out, (out, res.stderr[-4000:])
    return work, out


def test_two_nodes_a_killed_worker_and_the_same_outputs_as_a_local_run(cluster_run):
    work, out = cluster_run
    assert out["nodes"] == 2 and out["ray_rc"] == 0, out.get("ray_stderr")
    assert out["local_rc"] == 0
    assert len(out["killed"]) == 1, "no worker was caught running a task"
    with open(work / "out_ray" / "summary.csv", newline="") as f:
        ray_rows = list(csv.DictReader(f))
    with open(work / "out_local" / "summary.csv", newline="") as f:
        local_rows = list(csv.DictReader(f))
    assert [r["status"] for r in ray_rows] == ["ok"] * 8
    cols = ("input", "series_uid", "status", "shape", "tokens", "foreground")
    assert [[r[c] for c in cols] for r in ray_rows] == [[r[c] for c in cols] for r in local_rows]
    names = sorted(p.name for p in (work / "out_local").glob("*.npz"))
    assert sorted(p.name for p in (work / "out_ray").glob("*.npz")) == names and len(names) == 8
    assert not [p for p in (work / "out_ray").iterdir() if p.name.startswith(".")], "a partial output was left"
    for n in names:
        with np.load(work / "out_ray" / n) as a, np.load(work / "out_local" / n) as b:
            assert sorted(a.files) == sorted(b.files)
            for k in a.files:
                assert np.array_equal(a[k], b[k]), (n, k)


def test_cache_build_on_the_cluster_equals_a_local_build(cluster_run):
    work, out = cluster_run
    assert out["cache_ray_rc"][:2] == [0, 0], out["cache_ray_rc"]
    assert out["cache_local_rc"][:2] == [0, 0], out["cache_local_rc"]
    ray_dir, local_dir = work / "cache_ray" / "processed", work / "cache_local" / "processed"
    files = sorted(p.relative_to(local_dir) for p in local_dir.rglob("*.pt"))
    assert files and sorted(p.relative_to(ray_dir) for p in ray_dir.rglob("*.pt")) == files
    for f in files:
        assert (ray_dir / f).read_bytes() == (local_dir / f).read_bytes(), f
    meta = json.loads((work / "cache_ray" / "metadata.json").read_text())
    assert all(im["processed"] for s in meta["studies"] for im in s["images"])  # the flags, set by the driver


def test_ray_data_map_batches(cluster_run):
    work, out = cluster_run
    rows = out["data_rows"]
    if isinstance(rows, str):
        pytest.skip(rows)
    assert [r["status"] for r in rows] == ["ok"] * 4
    for r in rows:
        with np.load(r["output"]) as a, np.load(work / "out_local" / os.path.basename(r["output"])) as b:
            assert np.array_equal(a["tokens"], b["tokens"])


def test_prepare_rows_without_ray(tmp_path):
    """The map_batches callable is plain Python: dict and pandas batches, one row per series."""
    from neurovfm.data import prepare_many
    from neurovfm.data.ray_executor import PrepareRows

    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(phantom.make_ct_phantom((96, 96, 32), (1.0, 1.0, 2.5), seed=3), str(ct))
    got = PrepareRows(tmp_path / "out")({"path": np.asarray([str(ct)]), "mode": np.asarray(["ct"]), "id": ["a"]})
    assert list(got["status"]) == ["ok"] and got["output"][0].endswith("a_ct.npz")
    want = prepare_many([ct], tmp_path / "local", "ct", progress=False)
    with np.load(got["output"][0]) as a, np.load(tmp_path / "local" / "ct.npz") as b:
        assert np.array_equal(a["tokens"], b["tokens"])
    assert got["tokens"][0] == str(want.rows[0].tokens)
    pd = pytest.importorskip("pandas")
    frame = PrepareRows(tmp_path / "out2", mode="ct")(pd.DataFrame({"path": [str(ct)]}))
    assert list(frame["status"]) == ["ok"]
    from neurovfm.errors import UsageError

    with pytest.raises(UsageError, match="needs a 'path' column"):
        PrepareRows(tmp_path / "out3")({"file": [str(ct)]})


def test_cli_ray_option_needs_batch_mode(tmp_path):
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(phantom.make_ct_phantom((64, 64, 24), (1.0, 1.0, 2.5), seed=3), str(ct))
    res = subprocess.run(
        [sys.executable, "-m", "neurovfm", "prepare", str(ct), "--mode", "ct", "--ray"],
        capture_output=True,
        text=True,
        env=package_env(),
        timeout=120,
    )
    assert res.returncode == 2 and "--ray" in res.stderr and "batch mode" in res.stderr
