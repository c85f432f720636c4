"""What every benchmark shares: the import paths, the corpus, thread counts, a timer.

Importing this module puts the package (``python/`` of the checkout, unless a
``neurovfm`` is already importable, e.g. an installed wheel or ``PYTHONPATH=python``)
and the tests' helpers (``tests/``: ``reference``, ``corpus``, ...) on ``sys.path``,
so a benchmark compares the library with the very reference the tests use.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]

try:
    import neurovfm  # noqa: F401
except ImportError:  # a checkout without PYTHONPATH=python
    sys.path.insert(0, str(ROOT / "python"))
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

import neurovfm  # noqa: E402


def corpus_dir() -> Path:
    """The real-scan corpus: $NEUROVFM_TEST_DATA, else ``../shared/data`` beside the checkout."""
    env = os.environ.get("NEUROVFM_TEST_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def set_threads(n: int | None, torch_too: bool = False) -> None:
    """The same thread count for SimpleITK (the reference) and neurovfm (and torch)."""
    import SimpleITK as sitk

    if n is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    neurovfm.set_num_threads(n)
    if torch_too and n is not None:
        import torch

        torch.set_num_threads(n)


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """The median of ``repeats`` timed calls of ``fn`` (seconds), one after another."""
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def interleaved_times(
    fns: dict[str, Callable[[], object]], runs: int, between: Callable[[], object] | None = None
) -> dict[str, list[float]]:
    """Wall seconds of each of ``fns``, called in turn, once per round, for ``runs`` rounds
    (interleaved: a change in the machine's load hits every one alike). ``between``, if
    given, runs untimed after each call."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            if between is not None:
                between()
    return times


#: A git checkout (or bare mirror) of the published NeuroVFM code, for the benches that
#: compare with it; $NEUROVFM_PUBLISHED_REPO. Never needed by the tests.
PUBLISHED_REPO = os.environ.get("NEUROVFM_PUBLISHED_REPO", "/work/.mirror/MLNeurosurg+neurovfm/repo")


def published_module(relpath: str, tmp: Path) -> ModuleType | None:
    """A module of the published NeuroVFM code (``relpath`` in its repository, e.g.
    ``neurovfm/datasets/collators.py``), extracted into ``tmp`` and imported on its own;
    None when the repository is not there."""
    try:
        src = subprocess.run(
            ["git", "-C", PUBLISHED_REPO, "show", f"HEAD:{relpath}"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    name = "published_" + Path(relpath).stem
    path = tmp / f"{name}.py"
    path.write_bytes(src)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        return None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
