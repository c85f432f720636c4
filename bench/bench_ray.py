"""Ray against a local run, on the same cores (issue 23; docs/performance.md).

A manifest of N scans (default 18: every usable series of the corpus' ct/ and mr/,
repeated; ``--phantoms``: small phantom scans, CT and MR in turn) through ``neurovfm prepare
--manifest ... -o OUT``: on a real two-node local Ray cluster (one CPU per node, started
once: "cluster already up") with ``--ray ADDRESS``, and locally with ``-w 2`` on the same
2 cores, interleaved, ``--repeats`` times each; prints the times, their medians and the
ratio Ray / local (the budget: at most 2x). Each run is a fresh ``neurovfm`` process, so
both include the driver's start (about 1 s for Ray's ``ray.init``).

The cluster runs inside a private network namespace whose only interface is loopback
(``unshare -n``; root or user namespaces needed), as in tests/test_ray.py:

    python bench/bench_ray.py [--scans 18] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import _common  # (paths)

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=18)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--phantoms", action="store_true", help="small phantom scans instead of the corpus' series")
    a = ap.parse_args()
    corpus = _common.corpus_dir()
    what = "phantom scans" if a.phantoms or not corpus.is_dir() else f"real series of {corpus}"
    extra = "" if a.phantoms or not corpus.is_dir() else f" --corpus {corpus}"
    if shutil.which("unshare") is None:
        raise SystemExit("unshare (util-linux) is needed for the private network namespace")
    harness = HERE.parent / "tests" / "ray_harness.py"
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        cmd = (
            f"ip link set lo up && exec {sys.executable} {harness} {tmp} --scans {a.scans} --repeats {a.repeats}{extra}"
        )
        res = subprocess.run(["unshare", "-n", "bash", "-c", cmd], capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if "error" in out:
        raise SystemExit(f"{out['error']}\n{out.get('ray_stderr', '')}")
    ray, local = out["seconds_ray"], out["seconds_local"]
    print(f"{a.scans} {what}, 2 nodes of 1 CPU against -w 2 on the same 2 cores, {a.repeats} interleaved runs")
    for k, (r, lo) in enumerate(zip(ray, local), 1):
        print(f"  run {k}: ray {r:6.2f} s   local {lo:6.2f} s   ratio {r / lo:.2f}")
    mr, ml = statistics.median(ray), statistics.median(local)
    print(f"median: ray {mr:.2f} s, local {ml:.2f} s; ray / local = {mr / ml:.2f} (budget <= 2.0)")
    print(f"per scan: ray {mr / a.scans * 1000:.0f} ms, local {ml / a.scans * 1000:.0f} ms (wall, 2 CPUs)")


if __name__ == "__main__":
    main()
