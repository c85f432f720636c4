"""``neurovfm bench``: find a source checkout's bench/ scripts and run them (quick mode by
default), each in its own process against the package this command runs from."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from ._common import PROG, Formatter, UsageError, positive_int

#: The benchmark scripts ``bench`` runs, in order: (name, file, quick arguments, what).
BENCHMARKS = (
    ("prepare", "bench_prepare.py", ["--quick"], "file to tokens against the reference"),
    ("cache", "bench_cache.py", ["--quick"], "cache build and cached loads against the reference"),
    ("dataset", "bench_dataset.py", ["--quick"], "dataset items against the reference"),
)

_DESCRIPTION = """\
Run the benchmarks of a source checkout (bench/*.py) in their quick mode, each
beside the reference pipeline in the same run: bench_prepare.py (file to
tokens), then bench_cache.py and bench_dataset.py when present. Each prints its
own table; see bench/README.md. The benchmarks are not part of the installed
package: they are found in --bench-dir, $NEUROVFM_BENCH_DIR, the checkout the
package was imported from, or ./bench of the current folder or a parent.

The real-scan corpus is read from $NEUROVFM_TEST_DATA (default ../shared/data
beside the checkout); cases whose data is missing are skipped."""

_EPILOG = """\
examples:
  neurovfm bench                               all quick benchmarks (a few minutes)
  neurovfm bench --only prepare -j 4           file to tokens only, 4 kernel threads
  neurovfm bench --only cache -w 4             cache build with 4 images at once
  neurovfm bench --full                        the full runs (5 repeats, peak RSS, ...)
  neurovfm bench --list                        show what would run
  neurovfm bench --bench-dir ~/src/neurovfm/bench
"""


def add_bench(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "bench",
        parents=[common],
        help="quick benchmarks against the reference (needs a source checkout's bench/)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=Formatter,
    )
    names = [b[0] for b in BENCHMARKS]
    p.add_argument(
        "--only",
        metavar="NAMES",
        help=f"comma-separated benchmarks to run, from {','.join(names)} (default: all present)",
    )
    p.add_argument("--full", action="store_true", help="the full runs instead of the quick ones")
    p.add_argument("--bench-dir", type=Path, metavar="DIR", help="folder holding bench_prepare.py")
    p.add_argument(
        "-w",
        "--workers",
        type=positive_int,
        metavar="N",
        help="images at once in the cache benchmark (-j: kernel threads of the prepare benchmark)",
    )
    p.add_argument("--list", action="store_true", help="print the commands and exit")
    p.set_defaults(func=cmd_bench)


def package_dir() -> Path:
    """The folder of the ``neurovfm`` package this command runs from."""
    return Path(__file__).resolve().parent.parent  # neurovfm/cli/bench.py -> neurovfm/


def find_bench_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The folder of the benchmark scripts (see ``neurovfm bench --help``)."""
    marker = BENCHMARKS[0][1]
    if explicit is not None:
        d = Path(explicit)
        if not (d / marker).is_file():
            raise UsageError(f"{d}: no {marker} there (--bench-dir must be a checkout's bench/ folder)")
        return d
    candidates = []
    env = os.environ.get("NEUROVFM_BENCH_DIR")
    if env:
        candidates.append(Path(env))
    candidates.append(package_dir().parent.parent / "bench")  # python/neurovfm -> checkout/bench
    cwd = Path.cwd().resolve()
    candidates += [d / "bench" for d in (cwd, *cwd.parents)]
    for d in candidates:
        if (d / marker).is_file():
            return d
    raise UsageError(
        "benchmark scripts not found: they live in bench/ of a source checkout, not in the installed "
        "package; run from the checkout, or pass --bench-dir DIR (or set NEUROVFM_BENCH_DIR)"
    )


def _commands(args: argparse.Namespace, bench_dir: Path, wanted: list[str]) -> list[tuple[str, str, list[str]]]:
    """(name, what, command line) of each benchmark to run."""
    runs = []
    for name, fn, quick, what in BENCHMARKS:
        if name not in wanted:
            continue
        script = bench_dir / fn
        if not script.is_file():
            if args.only is not None:
                raise UsageError(f"{script}: not found")
            print(f"{PROG} bench: {fn} not present in {bench_dir}, skipped", flush=True)
            continue
        cmd = [sys.executable, str(script)] + ([] if args.full else list(quick))
        if args.threads is not None and name == "prepare":
            cmd += ["--threads", str(args.threads)]
        if args.workers is not None and name == "cache":
            cmd += ["--workers", str(args.workers)]
        runs.append((name, what, cmd))
    return runs


def cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    names = [b[0] for b in BENCHMARKS]
    wanted = names if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in names]
    if unknown or not wanted:
        raise UsageError(f"--only: unknown benchmark(s) {unknown or args.only!r}; choose from {','.join(names)}")
    bench_dir = find_bench_dir(args.bench_dir)
    env = dict(os.environ)
    # The scripts benchmark the very package this command runs from.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package_dir().parent), env.get("PYTHONPATH")]))
    runs = _commands(args, bench_dir, wanted)
    if args.list:
        for name, what, cmd in runs:
            print(f"{name}: {what}\n  {' '.join(cmd)}")
        return 0
    failed = []
    t_all = time.perf_counter()
    for i, (name, what, cmd) in enumerate(runs, 1):
        print(f"\n=== [{i}/{len(runs)}] {name}: {what}\n    {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, env=env, cwd=str(bench_dir.parent))
        dt = time.perf_counter() - t0
        status = "ok" if rc == 0 else f"FAILED (exit code {rc})"
        print(f"=== [{i}/{len(runs)}] {name}: {status}, {dt:.1f} s", flush=True)
        if rc != 0:
            failed.append(name)
    print(f"\n{len(runs) - len(failed)} of {len(runs)} benchmarks ran ({time.perf_counter() - t_all:.1f} s)")
    if failed:
        print(f"{PROG}: error: benchmark(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
