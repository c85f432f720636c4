"""Load: ImageDataset through a DataLoader with several workers over 300 cached items.

Memory stays flat (the cache is read through memory maps, i.e. the page cache, never
copied into the workers' heaps, and nothing grows per epoch) and the open-file count
stays bounded (a mapped file's descriptor is closed with its last view). Figures:
``python bench/bench_loader_memory.py``.
"""

from __future__ import annotations

import os
import sys

import pytest

from cachefaults import make_dataset
from neurovfm.data.cache import CacheManager

torch = pytest.importorskip("torch")
loadprobe = pytest.importorskip("loadprobe")
if not sys.platform.startswith("linux"):
    pytest.skip("reads /proc", allow_module_level=True)

N_ITEMS = 300
# Under AddressSanitizer (scripts/asan_test.sh) freed memory sits in its quarantine:
# the loaders still run and the descriptors are still checked, not the heap sizes.
SANITIZED = bool(os.environ.get("NEUROVFM_SANITIZERS"))
# the files a worker keeps mapped between items (neurovfm.datasets.dataset._MAP_CACHE_FILES)
MAPS = 32


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    root = tmp_path_factory.mktemp("load")
    make_dataset(root, n_ct=N_ITEMS // 2, n_mri=N_ITEMS // 2, size=(48, 48, 16))
    summary = CacheManager(root).build_cache(num_workers=2, progress=False)
    assert len(summary.done) == N_ITEMS and not summary.failed
    return root


def _dataset(root):
    from neurovfm.datasets import ImageDataset

    return ImageDataset(root, fallback_to_raw=False, random_crop=True, augment=True, max_crop_size=(3, 2, 2), seed=0)


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_persistent_workers_flat_memory_and_bounded_files(cached):
    runs = loadprobe.run_epochs(_dataset(cached), epochs=5, num_workers=3, persistent=True)
    assert [r["items"] for r in runs] == [N_ITEMS] * 5
    first, last = runs[1], runs[-1]  # epoch 0 warms up (imports, allocator pools)
    assert len(first["workers"]) == len(last["workers"]) == 3
    if not SANITIZED:
        for a, b in zip(first["workers"], last["workers"]):
            assert b["anon_mb"] - a["anon_mb"] < 8, runs  # no growth per epoch
        assert last["main"]["anon_mb"] - first["main"]["anon_mb"] < 16, runs
    # descriptors: none held per item or per file beyond the bounded map cache (a leak
    # would add hundreds: 600 files); tensors in flight to the main process hold a few,
    # hence the slack
    peaks = [r["peak_worker_fds"] for r in runs]
    assert max(peaks) <= min(peaks) + 16 and max(peaks) < 128 + MAPS, runs
    assert last["main"]["fds"] <= first["main"]["fds"] + 16, runs
    # a worker keeps at most MAPS files mapped (entry.MapCache) plus the item it is building
    assert max(r["peak_worker_cache_maps"] for r in runs) <= MAPS + 2, runs
    # the cache is read through the page cache, not copied into the workers
    cache_mb = loadprobe.cache_bytes(cached) / 2**20
    grown = max(b["anon_mb"] - a["anon_mb"] for a, b in zip(runs[0]["workers"], last["workers"]))
    assert SANITIZED or grown < cache_mb / 4, (grown, cache_mb)


def test_fresh_workers_every_epoch(cached):
    runs = loadprobe.run_epochs(_dataset(cached), epochs=3, num_workers=2, persistent=False)
    assert [r["items"] for r in runs] == [N_ITEMS] * 3
    anon = [sum(w["anon_mb"] for w in r["workers"]) for r in runs]
    assert SANITIZED or max(anon) - min(anon) < 8, runs
    fds = [r["peak_worker_fds"] for r in runs]
    assert max(fds) <= min(fds) + 16 and max(fds) < 128 + MAPS, runs
    assert SANITIZED or runs[-1]["main"]["anon_mb"] - runs[0]["main"]["anon_mb"] < 16, runs
