"""Object storage against local files (issue 23): ``load_image`` of a ``.nii.gz`` and of a
DICOM series prefix, and ``prepare_many`` of both, from a local S3-protocol server (moto's,
on 127.0.0.1: tests/s3server.py) against the same files on disk; interleaved medians.

What the difference measures here is the client path (listing, staging in 8 MiB blocks,
the HTTP round trips of s3fs) on loopback: a real bucket adds its own latency and
bandwidth on top.

    python bench/bench_remote.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import _common

import s3server
from neurovfm.data import load_image, prepare_many


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    why = s3server.missing()
    if why:
        raise SystemExit(why)
    corpus = _common.corpus_dir()
    cases = {
        "1 mm head CT .nii.gz": "ct/phantom_head_1mm.nii.gz",
        "5 mm CT DICOM series (28 files)": "ct/phantom_head_5mm",
    }
    with tempfile.TemporaryDirectory() as tmp, s3server.S3Server(Path(tmp) / "moto.log") as s3:
        os.environ.update(s3.env)
        fs = s3.fs()
        fs.mkdir("bench")
        for rel in cases.values():
            src = corpus / rel
            if src.is_dir():
                fs.put(str(src) + "/", f"bench/{rel}/", recursive=True)
            else:
                fs.put_file(str(src), f"bench/{rel}")
        print(f"{a.runs} interleaved runs, medians; S3: moto on 127.0.0.1")
        for label, rel in cases.items():
            local, remote = corpus / rel, f"s3://bench/{rel}"
            t_local, t_s3 = [], []
            for _ in range(a.runs):
                t = time.perf_counter()
                load_image(local)
                t_local.append(time.perf_counter() - t)
                t = time.perf_counter()
                load_image(remote)
                t_s3.append(time.perf_counter() - t)
            ml, ms = statistics.median(t_local), statistics.median(t_s3)
            print(
                f"  load_image {label:34s} local {ml * 1000:7.1f} ms   s3 {ms * 1000:7.1f} ms   s3/local {ms / ml:.2f}"
            )
        inputs_local = [corpus / rel for rel in cases.values()]
        inputs_s3 = [f"s3://bench/{rel}" for rel in cases.values()]
        t_local, t_s3 = [], []
        for k in range(a.runs):
            t = time.perf_counter()
            prepare_many(inputs_local, Path(tmp) / f"out{k}", "ct", progress=False, workers=2)
            t_local.append(time.perf_counter() - t)
            t = time.perf_counter()
            prepare_many(inputs_s3, f"s3://bench/out{k}/", "ct", progress=False, workers=2)
            t_s3.append(time.perf_counter() - t)
        ml, ms = statistics.median(t_local), statistics.median(t_s3)
        print(
            f"  prepare_many, both, -w 2 (outputs local / to s3)  local {ml * 1000:7.1f} ms   s3 {ms * 1000:7.1f} ms   s3/local {ms / ml:.2f}"
        )


if __name__ == "__main__":
    main()
