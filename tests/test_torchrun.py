"""A real torchrun (``python -m torch.distributed.run --standalone``, gloo, CPU), three processes:

1. README's torchrun cache build (``-m neurovfm cache build ds -w 1``) on a dataset of 12
   real scans: each rank builds its RANK/WORLD_SIZE shard, each image exactly once.
2. README's training example (``Quick start: training``) on that cache, run by torchrun
   as written except for the labels of the test's studies, ``batch_size=2`` (six studies
   of two images: six batches, two per rank) and what tests/ddp_harness.py adds: the
   process group, a tiny DDP model trained on every batch, and the checks on rank 0 over
   the all-gathered records: every rank finishes both epochs, equal batch counts, studies
   whole, disjoint across ranks and all covered each epoch, a new order each epoch,
   equal weights on every rank. A second run must give the very same record.

Every run has a timeout; on one, torchrun's whole process group (ranks and DataLoader
workers) is killed and the test fails.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import package_env
from multinode import STUDIES, banner, build_summary, check_complete, make_dataset, shards

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("this PyTorch build has no torch.distributed", allow_module_level=True)
import ddp_harness  # noqa: E402  (imports torch.distributed)

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
NPROC = 3
LABELS = {study: i % 2 for i, study in enumerate(STUDIES)}

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="the torchrun test runs on Linux and macOS"),
    pytest.mark.skipif(
        bool(os.environ.get("NEUROVFM_SANITIZERS")),
        reason="torchrun runs the CLI and the training example in child processes: the installed-wheel stage "
        "of .ci/run runs this test, not the sanitizer stage",
    ),
]


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n{title}\n")
    level = title.split()[0]
    ends = [i for i in (text.find("\n## ", start + 1), text.find(f"\n{level} ", start + 1)) if i > 0]
    return text[start : min(ends) if ends else len(text)]


def readme_training_block() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", _section("## Quick start: training"), re.S | re.M)
    assert len(blocks) == 1, f"README's Quick start: training shows {len(blocks)} python blocks, expected 1"
    return blocks[0]


def readme_torchrun_build() -> list[str]:
    """README's torchrun cache build line, its torchrun options and the module's arguments."""
    lines = [
        line.split(" #", 1)[0].strip()
        for line in _section("### Many machines").splitlines()
        if line.startswith("torchrun ") and "neurovfm cache build" in line
    ]
    assert len(lines) == 1, f"README's Many machines section shows {len(lines)} torchrun cache builds, expected 1"
    return shlex.split(lines[0])[1:]


def _env(**variables: str) -> dict:
    env = package_env(str(Path(__file__).resolve().parent), NEUROVFM_NUM_THREADS="1", OMP_NUM_THREADS="1", **variables)
    for var in [v for v in env if v.startswith(("SLURM_", "TORCHELASTIC_"))]:
        del env[var]
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    if sys.platform == "linux":
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # a host name that resolves elsewhere must not matter
    return env


def torchrun(args: list[str], cwd: Path, env: dict, timeout: float = 300) -> tuple[str, float]:
    """Run ``python -m torch.distributed.run ARGS``; its output and seconds. Fails on a
    non-zero exit, or after ``timeout`` s (a hang), killing every process it started."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *args]
    t0 = time.monotonic()
    p = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        raise AssertionError(f"torchrun hung: killed after {timeout} s\n$ {shlex.join(cmd)}\n{out[-6000:]}") from None
    took = time.monotonic() - t0
    assert p.returncode == 0, f"torchrun: exit code {p.returncode}\n$ {shlex.join(cmd)}\n{out[-6000:]}"
    return out, took


def _rank_logs(log_dir: Path, rank: int) -> str:
    found = [p for name in ("stderr", "stdout") for p in sorted(log_dir.rglob(f"attempt_0/{rank}/{name}.log"))]
    assert found, f"no log of rank {rank} under {log_dir}: {sorted(p.as_posix() for p in log_dir.rglob('*'))}"
    return "".join(p.read_text(errors="replace") for p in found)


@pytest.fixture(scope="module")
def built(tmp_path_factory, scan_dir):
    """A folder holding ds/ (12 real scans) whose cache README's torchrun line built."""
    work = tmp_path_factory.mktemp("torchrun")
    keys = make_dataset(work / "ds", scan_dir)
    args = readme_torchrun_build()
    i = args.index("--nproc-per-node")
    args[i + 1] = str(NPROC)
    logs = work / "build_logs"
    args[i + 2 : i + 2] = ["--log-dir", str(logs), "--redirects", "3"]  # each rank's output in its own file
    out, took = torchrun(args, work, _env())
    summaries = {r: build_summary(_rank_logs(logs, r), f"rank {r}") for r in range(NPROC)}
    return work, keys, args, summaries, out, took


def test_cache_build_under_torchrun_shards_by_rank(built):
    work, keys, args, summaries, out, took = built
    expected = shards(keys, NPROC)
    for r in range(NPROC):
        assert summaries[r] == {"built": len(expected[r]), "skipped": 0, "failed": 0, "busy": 0}, (r, summaries)
    assert sum(s["built"] for s in summaries.values()) == len(keys)  # with all valid: each built once
    check_complete(work / "ds", keys)
    print(
        f"\n[torchrun] torchrun {shlex.join(args)}: {took:.1f} s\n"
        + "\n".join(f"    rank {r}: {summaries[r]} (shard {len(expected[r])} images)" for r in range(NPROC))
    )


def test_readme_training_example_under_ddp(built, tmp_path):
    work = built[0]
    script = ddp_harness.training_script(readme_training_block(), LABELS, batch_size=2)
    (work / "train_ddp.py").write_text(script)
    args = ["--standalone", f"--nproc-per-node={NPROC}", "train_ddp.py"]
    records, report = [], []
    for run in (1, 2):
        result = tmp_path / f"ddp{run}.json"
        out, took = torchrun(args, work, _env(NEUROVFM_DDP_RESULT=str(result)))
        record = json.loads(result.read_text())
        assert record["problems"] == [], record["problems"]
        records.append(record)
        report.append(banner(f"run {run}: torchrun {shlex.join(args)} ({took:.1f} s)", out))
    rec = records[0]
    assert rec["world_size"] == NPROC and rec["studies"] == {s: 2 for s in STUDIES}
    for r in rec["ranks"]:
        assert sorted(r["epochs"]) == ["0", "1"] and [len(r["epochs"][e]) for e in ("0", "1")] == [2, 2], r["rank"]
    order = {e: [b["studies"] for b in rec["ranks"][0]["epochs"][e]] for e in ("0", "1")}
    assert records[1]["ranks"] == rec["ranks"], "a second run gave other batches, items or weights"
    print(
        "\n[torchrun] "
        + "\n".join(report)
        + f"\n[torchrun] rank 0's studies per batch: epoch 0 {order['0']}, epoch 1 {order['1']}; "
        "run 2 identical to run 1 (batches, crops, token sums, trained weights)\n"
        + banner("train_ddp.py (README's example; '(test)' marks the harness lines)", script)
    )
