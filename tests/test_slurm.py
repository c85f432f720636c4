"""A real single-node SLURM: README's sbatch script as a job array on one dataset folder.

``scripts/slurm_test.sh`` starts munged, slurmctld and slurmd on localhost (config, state
and logs in a temporary folder) and stops them at the end, whatever happens (a watchdog
stops them should this process die). The array tasks run README's "Many machines"
script as written, submitted with ``sbatch --array=0-3 --cpus-per-task=1`` (options on
the command line override the script's ``#SBATCH`` lines), in a folder holding ``ds/``,
a dataset of 12 real scans; ``python`` is this interpreter.

The tests skip, saying why, where SLURM is not installed or slurmd cannot run
(``NEUROVFM_REQUIRE_SLURM=1``: fail instead); ``.ci/run`` installs slurm-wlm and munge
(``scripts/slurm_test.sh install``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import package_env
from multinode import (
    SLOW_IMAGE,
    banner,
    build_summary,
    check_complete,
    entry_files,
    make_dataset,
    python_shims,
    shards,
    valid_entries,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm_test.sh"
README = REPO / "README.md"
TASKS = 4
SBATCH_OPTIONS = [f"--array=0-{TASKS - 1}", "--cpus-per-task=1"]
DONE_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL"}

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the SLURM test runs on Linux"),
    pytest.mark.skipif(
        bool(os.environ.get("NEUROVFM_SANITIZERS")),
        reason="SLURM jobs run the CLI in child processes (no kernel code of their own): "
        "the installed-wheel stage of .ci/run runs this test, not the sanitizer stage",
    ),
]


def readme_sbatch_script() -> str:
    """The SLURM array job script of README's "Many machines" section."""
    text = README.read_text()
    start = text.index("\n### Many machines")
    end = text.index("\n## ", start + 1)
    blocks = re.findall(r"^```bash\n(.*?)^```", text[start:end], re.S | re.M)
    scripts = [b for b in blocks if b.startswith("#!/bin/bash\n") and "#SBATCH" in b]
    assert len(scripts) == 1, f"README's Many machines section shows {len(scripts)} sbatch scripts, expected 1"
    return scripts[0]


def _task_ids(spec: str) -> list[int]:
    """0-3%2, [1,3], 5 -> the task ids."""
    out: list[int] = []
    for part in spec.strip("[]").split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


class Slurm:
    """The cluster scripts/slurm_test.sh started: its client commands, and its jobs."""

    def __init__(self, cluster: Path, conf: str, bin_dir: str, version: str, shims: Path) -> None:
        self.cluster, self.conf, self.bin, self.version = cluster, conf, Path(bin_dir), version
        env = package_env(NEUROVFM_NUM_THREADS="1")
        # a job array inside a job (the suite run under SLURM or torchrun) must not see the outer one
        for var in [v for v in env if v.startswith("SLURM_") or v in ("RANK", "WORLD_SIZE")]:
            del env[var]
        env.update(
            SLURM_CONF=conf,
            # the marker scripts/slurm_test.sh stop ends processes by: the jobs carry it too
            NEUROVFM_SLURM_TEST_DIR=str(cluster),
            PATH=os.pathsep.join([str(shims), env.get("PATH", "")]),
        )
        self.env = env

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 30) -> str:
        res = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert res.returncode == 0, f"{' '.join(args)}: exit code {res.returncode}\n{res.stdout}{res.stderr}"
        return res.stdout

    def sbatch(self, script: Path) -> str:
        """Submit ``script`` from its folder as an array of TASKS; the array's job id."""
        out = self.run("sbatch", "--parsable", *SBATCH_OPTIONS, script.name, cwd=script.parent)
        return out.strip().split(";")[0]

    def states(self, job: str) -> dict[int, str]:
        """{task: state} of the array ``job``."""
        out = self.run("scontrol", "show", "job", "-o", job)
        states: dict[int, str] = {}
        for line in out.splitlines():
            task = re.search(r"\bArrayTaskId=(\S+)", line)
            state = re.search(r"\bJobState=(\S+)", line)
            if task and state:
                for t in _task_ids(task.group(1)):
                    states[t] = state.group(1)
        return states

    def job_id(self, job: str, task: int) -> str:
        """The job id of array task ``job_task``."""
        out = self.run("scontrol", "show", "job", "-o", f"{job}_{task}")
        found = re.search(r"\bJobId=(\d+)", out)
        assert found, out
        return found.group(1)

    def processes(self, job_id: str) -> list[int]:
        """Pids of the processes of job ``job_id`` of this cluster (read from /proc)."""
        want = {f"SLURM_JOB_ID={job_id}".encode(), f"NEUROVFM_SLURM_TEST_DIR={self.cluster}".encode()}
        pids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    env = set((d / "environ").read_bytes().split(b"\0"))
                except OSError:
                    continue
                if want <= env:
                    pids.append(int(d.name))
        return pids

    def wait_gone(self, job_id: str, timeout: float = 60) -> None:
        """Wait until no process of job ``job_id`` is left."""
        deadline = time.monotonic() + timeout
        while self.processes(job_id):
            assert time.monotonic() < deadline, f"job {job_id}: processes {self.processes(job_id)} still running"
            time.sleep(0.05)

    def wait(self, job: str, tasks: list[int], timeout: float = 240) -> dict[int, str]:
        """Wait until the tasks have ended; their states."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.states(job)
            if all(states.get(t) in DONE_STATES for t in tasks):
                return {t: states[t] for t in tasks}
            if time.monotonic() > deadline:
                raise AssertionError(f"array {job}: tasks not done after {timeout} s: {states}\n{self.logs()}")
            time.sleep(0.1)

    def output(self, folder: Path, job: str, task: int) -> str:
        """What array task ``task`` printed (sbatch's default file, slurm-%A_%a.out)."""
        f = folder / f"slurm-{job}_{task}.out"
        return f.read_text(errors="replace") if f.exists() else f"({f.name}: no such file)"

    def logs(self) -> str:
        out = []
        for name in ("log/slurmctld.log", "log/slurmd.log"):
            f = self.cluster / name
            if f.exists():
                out.append(banner(name, "\n".join(f.read_text(errors="replace").splitlines()[-15:])))
        return "\n".join(out)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    base = tmp_path_factory.mktemp("slurm")
    cluster = base / "cluster"
    t0 = time.monotonic()
    try:
        # stops the cluster itself should this process die; a skip stops what it started
        res = subprocess.run(
            [str(SCRIPT), "start", str(cluster), str(os.getpid())], capture_output=True, text=True, timeout=180
        )
        if res.returncode == 77:
            reason = res.stderr.strip().removeprefix("slurm_test.sh: cannot run SLURM here: ")
            reason = f"SLURM cannot run here: {reason}"
            if os.environ.get("NEUROVFM_REQUIRE_SLURM") == "1":
                pytest.fail(reason + " (NEUROVFM_REQUIRE_SLURM=1)")
            pytest.skip(reason)
        assert res.returncode == 0, f"slurm_test.sh start: exit code {res.returncode}\n{res.stdout}{res.stderr}"
        info = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
        print(f"\n[slurm] {info['SLURM_VERSION']}: munged, slurmctld, slurmd up in {time.monotonic() - t0:.1f} s")
        yield Slurm(cluster, info["SLURM_CONF"], info["SLURM_BIN"], info["SLURM_VERSION"], python_shims(base / "bin"))
    finally:
        t1 = time.monotonic()
        stop = subprocess.run([str(SCRIPT), "stop", str(cluster)], capture_output=True, text=True, timeout=180)
        print(f"[slurm] {stop.stdout.strip()} ({time.monotonic() - t1:.1f} s)")
        assert stop.returncode == 0, f"slurm_test.sh stop: {stop.stdout}{stop.stderr}"


def _work(tmp_path: Path, scan_dir: Path) -> tuple[Path, Path, list[str]]:
    """A folder holding ds/ (12 real scans) and build_cache.sh (README's script)."""
    work = tmp_path / "work"
    keys = make_dataset(work / "ds", scan_dir)
    script = work / "build_cache.sh"
    script.write_text(readme_sbatch_script())
    return work, script, keys


def _summaries(slurm: Slurm, work: Path, job: str, tasks: list[int]) -> dict[int, dict[str, int]]:
    return {t: build_summary(slurm.output(work, job, t), f"array task {job}_{t}") for t in tasks}


def _check_states(slurm: Slurm, work: Path, job: str, states: dict[int, str], want: dict[int, str]) -> None:
    if states != want:
        outs = "\n".join(banner(f"task {t}", slurm.output(work, job, t)) for t in sorted(states))
        raise AssertionError(f"array {job}: states {states}, expected {want}\n{outs}\n{slurm.logs()}")


def test_sbatch_array_builds_every_image_once(slurm, scan_dir, tmp_path):
    t0 = time.monotonic()
    work, script, keys = _work(tmp_path, scan_dir)
    ds = work / "ds"
    expected = shards(keys, TASKS)
    tasks = list(range(TASKS))
    report = [
        banner("build_cache.sh (README)", script.read_text()),
        f"sbatch {' '.join(SBATCH_OPTIONS)} build_cache.sh",
    ]

    job = slurm.sbatch(script)
    _check_states(slurm, work, job, slurm.wait(job, tasks), dict.fromkeys(tasks, "COMPLETED"))
    took = time.monotonic() - t0
    summaries = _summaries(slurm, work, job, tasks)
    for t in tasks:
        # task t built its shard, all of it and nothing else
        assert summaries[t] == {"built": len(expected[t]), "skipped": 0, "failed": 0, "busy": 0}, (t, summaries)
    # every image valid, and as many builds as images: each built exactly once
    assert sum(s["built"] for s in summaries.values()) == len(keys)
    check_complete(ds, keys)
    report += [f"array {job}: {TASKS} tasks COMPLETED in {took:.1f} s"]
    report += [
        banner(f"slurm-{job}_{t}.out (shard {t}/{TASKS}: {len(expected[t])} images)", slurm.output(work, job, t))
        for t in tasks
    ]
    files = entry_files(ds)

    t1 = time.monotonic()
    job2 = slurm.sbatch(script)
    _check_states(slurm, work, job2, slurm.wait(job2, tasks), dict.fromkeys(tasks, "COMPLETED"))
    summaries = _summaries(slurm, work, job2, tasks)
    for t in tasks:
        assert summaries[t] == {"built": 0, "skipped": len(expected[t]), "failed": 0, "busy": 0}, (t, summaries)
    assert entry_files(ds) == files, "the rerun rewrote cache files"
    check_complete(ds, keys)
    report += [f"rerun array {job2}: every task skipped its shard, no file rewritten ({time.monotonic() - t1:.1f} s)"]
    print("\n[slurm] " + "\n".join(report) + f"\n[slurm] test took {time.monotonic() - t0:.1f} s")


def test_scancel_mid_build_then_resubmit_loses_nothing(slurm, scan_dir, tmp_path):
    import fcntl  # POSIX (the module is skipped elsewhere)

    t0 = time.monotonic()
    work, script, keys = _work(tmp_path, scan_dir)
    ds = work / "ds"
    expected = shards(keys, TASKS)
    tasks = list(range(TASKS))
    # the task whose shard holds the slowest image; killed once its first image is cached
    victim = next(t for t in tasks if SLOW_IMAGE in expected[t])
    assert len(expected[victim]) >= 2, expected
    sidecars = [ds / "processed" / f"{k}.json" for k in expected[victim]]

    # Held here, the metadata lock keeps every builder from finishing (each takes it last,
    # to write its processed flags): the kill always lands before the task ends.
    lock = os.open(ds / ".metadata.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        job = slurm.sbatch(script)
        deadline = next_state = time.monotonic()
        deadline += 180
        while not any(p.exists() for p in sidecars):
            now = time.monotonic()
            if now > next_state:  # scontrol is slow next to looking for a file: now and then
                state = slurm.states(job).get(victim)
                if state in DONE_STATES or now > deadline:
                    raise AssertionError(f"task {victim} ({state}) cached none of {expected[victim]}\n{slurm.logs()}")
                next_state = now + 0.5
            time.sleep(0.005)
        slurm.run("scancel", f"{job}_{victim}")
        _check_states(slurm, work, job, slurm.wait(job, [victim], timeout=60), {victim: "CANCELLED"})
        slurm.wait_gone(slurm.job_id(job, victim))  # what it cached is final now
        at_kill = valid_entries(ds, expected[victim])
    finally:
        os.close(lock)
    want = {t: "CANCELLED" if t == victim else "COMPLETED" for t in tasks}
    _check_states(slurm, work, job, slurm.wait(job, tasks), want)
    killed_output = slurm.output(work, job, victim)
    assert "cache build:" not in killed_output, killed_output  # it never finished
    assert 1 <= len(at_kill) <= len(expected[victim]), at_kill
    took = time.monotonic() - t0

    t1 = time.monotonic()
    job2 = slurm.sbatch(script)
    _check_states(slurm, work, job2, slurm.wait(job2, tasks), dict.fromkeys(tasks, "COMPLETED"))
    summaries = _summaries(slurm, work, job2, tasks)
    for t in tasks:
        if t == victim:  # builds what the killed task left, skips what it had cached
            want_t = {"built": len(expected[t]) - len(at_kill), "skipped": len(at_kill), "failed": 0, "busy": 0}
        else:
            want_t = {"built": 0, "skipped": len(expected[t]), "failed": 0, "busy": 0}
        assert summaries[t] == want_t, (t, summaries)
    check_complete(ds, keys)
    print(
        f"\n[slurm] array {job}: task {victim} (shard of {len(expected[victim])} images, {SLOW_IMAGE} among them) "
        f"cancelled with scancel once its first image was cached; at the kill {len(at_kill)} of its images "
        f"were cached ({took:.1f} s)\n"
        + banner(f"slurm-{job}_{victim}.out (killed)", killed_output or "(nothing)")
        + f"\n[slurm] resubmitted array {job2}: task {victim} built {summaries[victim]['built']} and skipped "
        f"{summaries[victim]['skipped']}, the others skipped everything; every entry valid, metadata.json "
        f"complete ({time.monotonic() - t1:.1f} s)\n"
        + banner(f"slurm-{job2}_{victim}.out", slurm.output(work, job2, victim))
        + f"\n[slurm] test took {time.monotonic() - t0:.1f} s"
    )
