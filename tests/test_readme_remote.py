"""The README's and docs pages' examples of object storage and Ray, run as written
(tests/test_readme.py runs the others).

- a block marked ``<!-- readme-test: s3 -->`` runs against a real S3-protocol server on
  127.0.0.1 (tests/s3server.py) whose bucket ``scans`` holds ``ct/scan.nii.gz`` (a CT
  phantom) and ``mr/t1/`` (an MR phantom as a DICOM series), the standard AWS variables
  pointing the client at it;
- a block marked ``<!-- readme-test: ray -->`` runs inside a private network namespace
  whose only interface is loopback (``unshare -n``), so that the local Ray it starts
  (``ray.init()``) cannot reach anything else, in a folder holding ``scan.nii.gz``,
  ``t1.nii.gz`` and ``manifest.csv`` naming them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

import s3server
from conftest import package_env
from test_ray import _namespace_problem
from test_readme import BLOCKS, _ids, _shims, bash_script

MARKED = [b for b in BLOCKS if b.marker in ("s3", "ray")]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from neurovfm import phantom

    ws = tmp_path_factory.mktemp("remote_ws")
    ct = phantom.make_ct_phantom(shape=(96, 96, 40), spacing=(2.0, 2.0, 3.0))
    mr = phantom.make_mri_phantom(shape=(64, 96, 96), spacing=(2.0, 2.0, 2.0))
    sitk.WriteImage(ct, str(ws / "scan.nii.gz"), useCompression=True)
    sitk.WriteImage(mr, str(ws / "t1.nii.gz"), useCompression=True)
    phantom.write_dicom_series(mr, ws / "mr_series", modality="MR", seed=1)
    (ws / "manifest.csv").write_text("path,mode\nscan.nii.gz,ct\nt1.nii.gz,mri\n")
    return ws


@pytest.fixture(scope="module")
def s3(tmp_path_factory, workspace):
    if s3server.missing():
        pytest.skip(s3server.missing())
    try:
        server = s3server.S3Server(tmp_path_factory.mktemp("moto") / "moto.log").__enter__()
    except RuntimeError as err:
        pytest.skip(f"the S3-protocol server cannot start here: {err}")
    try:
        fs = server.fs()
        fs.mkdir("scans")
        fs.put_file(str(workspace / "scan.nii.gz"), "scans/ct/scan.nii.gz")
        fs.put(str(workspace / "mr_series") + "/", "scans/mr/t1/", recursive=True)
        yield server
    finally:
        server.stop()


def _command(block, run: Path) -> list[str]:
    if block.lang == "python":
        (run / "block.py").write_text(block.code)
        return [sys.executable, "block.py"]
    script, _ = bash_script(block.code)
    (run / "block.sh").write_text(script)
    return ["bash", "-euo", "pipefail", "block.sh"]


@pytest.mark.parametrize("block", MARKED, ids=_ids(MARKED))
def test_marked_block_runs(block, workspace, tmp_path, request):
    run = tmp_path / "run"
    shutil.copytree(workspace, run)
    env = package_env()
    env["PATH"] = os.pathsep.join([str(_shims(run)), env.get("PATH", "")])
    cmd = _command(block, run)
    if block.marker == "s3":
        env.update(request.getfixturevalue("s3").env)
    else:
        if os.environ.get("NEUROVFM_SANITIZERS"):
            pytest.skip("Ray runs the examples in its own processes: the installed-wheel stage runs this")
        why = _namespace_problem()
        if why:
            pytest.skip(why)
        # ray.init() starts a local Ray of its own (RAY_ADDRESS=local), whatever cluster
        # this machine ran before (a test's cluster leaves its address in /tmp/ray)
        # and keeps its state in ~/.ray: a home of the block's own
        (run / "home").mkdir()
        env.update(RAY_USAGE_STATS_ENABLED="0", RAY_ADDRESS="local", HOME=str(run / "home"))
        cmd = ["unshare", "-n", "bash", "-c", "ip link set lo up && exec " + " ".join(cmd)]
    res = subprocess.run(cmd, cwd=run, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, (
        f"{block.where}: {block.lang} block failed ({res.returncode})\n{block.code}\n"
        f"--- stdout ---\n{res.stdout[-3000:]}\n--- stderr ---\n{res.stderr[-3000:]}"
    )
    assert res.stdout.strip(), f"{block.where}: the example prints nothing a reader could check"


def test_every_remote_example_is_run():
    files = {b.file for b in MARKED}
    assert "README.md" in files and {b.marker for b in MARKED} == {"s3", "ray"}
