"""A real two-node Ray cluster on this machine, for tests/test_ray.py and bench/bench_ray.py.

Run inside a private network namespace whose only interface is loopback (the caller does
``unshare -n`` and ``ip link set lo up``): Ray advertises the machine's own address even
when told 127.0.0.1, and in such a namespace there is no other address to advertise, so
nothing leaves the machine.

    python tests/ray_harness.py WORKDIR [--scans N] [--kill] [--repeats K]

It writes N phantom scans and a manifest, starts a head node and a second node (``ray
start --block``, one CPU each, each under ``timeout`` so they stop themselves, in its own
process group), runs ``neurovfm prepare --manifest ... --ray ADDRESS`` against it (with
``--kill``: SIGKILLs a Ray worker while it runs a task), the same manifest locally with
``-w 2``, and, when Ray Data imports, ``PrepareRows`` through ``map_batches``; then stops
both nodes by their process ids and prints one JSON line of what happened.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

LIFETIME_S = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _manifest(folder: Path, rows: list[tuple[str, str, str]]) -> Path:
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "mode", "id"])
        w.writerows(rows)
    return manifest


def write_scans(folder: Path, n: int) -> Path:
    """``n`` small phantom scans (CT and MR in turn) and ``manifest.csv`` naming them."""
    import SimpleITK as sitk

    from neurovfm import phantom

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        if i % 2 == 0:
            img, mode = phantom.make_ct_phantom((128, 128, 48), (1.0, 1.0, 2.0), seed=100 + i), "ct"
        else:
            img, mode = phantom.make_mri_phantom((112, 112, 60), (1.0, 1.0, 1.5), seed=100 + i), "mri"
        p = folder / f"scan{i:02d}.nii.gz"
        sitk.WriteImage(img, str(p))
        rows.append((str(p), mode, f"s{i:02d}"))
    return _manifest(folder, rows)


def write_corpus_scans(folder: Path, n: int, corpus: Path) -> Path:
    """``n`` studies of real scans: every usable series of the corpus' ``ct/`` and ``mr/``
    (repeated), each linked into a study folder of its own, and ``manifest.csv``."""
    from neurovfm.data import find_series

    series = [(mode, r) for sub, mode in (("ct", "ct"), ("mr", "mri")) for r in find_series(corpus / sub) if r.usable]
    rows = []
    for k in range(n):
        mode, r = series[k % len(series)]
        study = folder / f"s{k:03d}"
        study.mkdir(parents=True)
        for f in r.files:
            (study / os.path.basename(f)).symlink_to(f)
        rows.append((str(study), mode, f"s{k:03d}"))
    return _manifest(folder, rows)


class Node:
    """One ``ray start --block`` in its own process group, stopped by its pid."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        cmd = ["timeout", "-k", "5", str(LIFETIME_S), sys.executable, "-m", "ray.scripts.scripts", "start", *args]
        cmd += ["--block", "--disable-usage-stats"]
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                    self.proc.wait(timeout=wait)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
        self.log.close()


def _task_workers(name: str) -> list[int]:
    """Pids of the Ray workers now running a task called ``name`` (their process title)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith(f"ray::{name}"):
            pids.append(int(d.name))
    return pids


def _wait_for_cpus(address: str, cpus: int, timeout: float) -> None:
    import ray

    ray.init(address=address, log_to_driver=False)
    try:
        deadline = time.monotonic() + timeout
        while ray.cluster_resources().get("CPU", 0) < cpus:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster has {ray.cluster_resources().get('CPU', 0)} CPUs, not {cpus}")
            time.sleep(0.5)
    finally:
        ray.shutdown()


def _prepare(
    args: list[str], env: dict[str, str], timeout: float = 600
) -> tuple[float, subprocess.CompletedProcess[str]]:
    t = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "neurovfm", "prepare", *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    return time.perf_counter() - t, res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--scans", type=int, default=8)
    ap.add_argument("--kill", action="store_true")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--corpus", type=Path, help="real scans from this corpus instead of phantoms")
    a = ap.parse_args()
    work = a.workdir
    if a.corpus is not None:
        manifest = write_corpus_scans(work / "scans", a.scans, a.corpus)
    else:
        manifest = write_scans(work / "scans", a.scans)
    # Ray keeps state in ~/.ray (an auth token): a home of the run's own, for every process
    home = work / "home"
    home.mkdir(exist_ok=True)
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", HOME=str(home))
    os.environ.pop("RAY_ADDRESS", None)
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    result: dict[str, object] = {"scans": a.scans, "address": address}
    head = Node(
        [
            "--head",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "1",
            "--include-dashboard",
            "false",
        ],
        work / "head.log",
        env,
    )
    nodes = [head]
    try:
        _wait_for_cpus(address, 1, 90)
        nodes.append(
            Node(["--address", address, "--node-ip-address", "127.0.0.1", "--num-cpus", "1"], work / "node2.log", env)
        )
        _wait_for_cpus(address, 2, 90)
        result["nodes"] = 2
        killed: list[int] = []

        def killer() -> None:  # the first worker seen running a task is SIGKILLed
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not killed:
                pids = _task_workers("neurovfm-prepare")
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                    return
                time.sleep(0.01)

        times_ray, times_local = [], []
        for r in range(a.repeats):
            for d in ("out_ray", "out_local"):
                if (work / d).is_dir():
                    for f in (work / d).iterdir():
                        f.unlink()
            t = threading.Thread(target=killer) if a.kill and r == 0 else None
            if t is not None:
                t.start()
            dt, res = _prepare(
                ["--manifest", str(manifest), "-o", str(work / "out_ray"), "--no-progress", "--ray", address], env
            )
            if t is not None:
                t.join()
            result["ray_rc"], result["ray_stderr"] = res.returncode, res.stderr[-3000:]
            times_ray.append(dt)
            dt, res = _prepare(
                ["--manifest", str(manifest), "-o", str(work / "out_local"), "--no-progress", "-w", "2"], env
            )
            result["local_rc"] = res.returncode
            times_local.append(dt)
        result["killed"] = killed
        result["seconds_ray"], result["seconds_local"] = times_ray, times_local
        # cache build on the cluster, and locally, of the demo dataset
        from neurovfm.demo import write_demo

        for name, extra in (("cache_ray", ["--ray", address]), ("cache_local", ["-w", "2"])):
            demo = write_demo(work / name)
            cli = [sys.executable, "-m", "neurovfm"]
            meta = subprocess.run(
                [*cli, "metadata", str(demo.root), "--modes", str(demo.modes_csv)],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            res = subprocess.run(
                [*cli, "cache", "build", str(demo.root), "--no-progress", *extra],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            result[f"{name}_rc"] = (meta.returncode, res.returncode, res.stderr[-2000:])
        try:  # Ray Data, for users who build their own pipeline
            import ray

            ray.init(address=address, log_to_driver=False)
            from neurovfm.data.ray_executor import PrepareRows

            with open(manifest, newline="") as f:
                rows = list(csv.DictReader(f))[:4]
            ds = ray.data.from_items(rows).map_batches(PrepareRows(str(work / "out_data")), batch_size=2)
            result["data_rows"] = [{k: str(v) for k, v in row.items()} for row in ds.take_all()]
            ray.shutdown()
        except ImportError as err:
            result["data_rows"] = f"skipped: {err}"
    except Exception as err:  # noqa: BLE001 - reported to the test, which fails with it
        result["error"] = f"{type(err).__name__}: {err}"
    finally:
        for n in reversed(nodes):
            n.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
