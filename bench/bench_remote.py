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
import itertools
import os
import statistics
import tempfile
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
            ts = _common.interleaved_times(
                {"local": lambda: load_image(local), "s3": lambda: load_image(remote)}, a.runs
            )
            ml, ms = statistics.median(ts["local"]), statistics.median(ts["s3"])
            print(
                f"  load_image {label:34s} local {ml * 1000:7.1f} ms   s3 {ms * 1000:7.1f} ms   s3/local {ms / ml:.2f}"
            )
        inputs_local = [corpus / rel for rel in cases.values()]
        inputs_s3 = [f"s3://bench/{rel}" for rel in cases.values()]
        rounds_local, rounds_s3 = itertools.count(), itertools.count()  # a new output folder per run
        ts = _common.interleaved_times(
            {
                "local": lambda: prepare_many(
                    inputs_local, Path(tmp) / f"out{next(rounds_local)}", "ct", progress=False, workers=2
                ),
                "s3": lambda: prepare_many(
                    inputs_s3, f"s3://bench/out{next(rounds_s3)}/", "ct", progress=False, workers=2
                ),
            },
            a.runs,
        )
        ml, ms = statistics.median(ts["local"]), statistics.median(ts["s3"])
        print(
            f"  prepare_many, both, -w 2 (outputs local / to s3)  local {ml * 1000:7.1f} ms   s3 {ms * 1000:7.1f} ms   s3/local {ms / ml:.2f}"
        )


if __name__ == "__main__":
    main()
