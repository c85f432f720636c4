"""Fault injection for the cache: SIGKILL at random points of builds, a full disk,
a read-only ``processed/``, files corrupted after the build.

The invariants, checked after every fault:
  * ``load_image`` serves either nothing or exactly the pipeline's numbers;
  * an entry that was valid stays valid (nothing already cached is lost);
  * the build reports what it could not do, and a rerun completes the cache.

The full-disk and read-only cases need to mount a small tmpfs / a read-only bind
mount: they run in a child process inside a new user and mount namespace
(``unshare -rm``), so they need no root; where user namespaces are disabled and we
are not root they skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from cachefaults import check_never_corrupt, expected_u8, leftovers, make_dataset
from conftest import package_env
from neurovfm.data.cache import CacheManager
from neurovfm.data.cache.entry import unlink as _unlink

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A dataset of 12 small synthetic images, its expected numbers, and a clean build's time."""
    root = tmp_path_factory.mktemp("faults")
    make_dataset(root)
    exp = expected_u8(root)
    t0 = time.perf_counter()
    CacheManager(root).build_cache(num_workers=2, progress=False)
    return root, exp, time.perf_counter() - t0


def _fresh(tmp_path, built):
    """A copy of the dataset with nothing cached."""
    root, exp, seconds = built
    dst = tmp_path / "ds"
    shutil.copytree(root / "raw", dst / "raw", symlinks=True)
    meta = (root / "metadata.json").read_text().replace(str(root), str(dst))
    (dst / "metadata.json").write_text(meta)
    return dst, exp, seconds


_BUILDER = textwrap.dedent(
    """
    import sys
    from neurovfm.data.cache import CacheManager
    import neurovfm.data.io, neurovfm.data.preprocess  # imported before "ready": the kill lands in the build
    cm = CacheManager(sys.argv[1])
    print("ready", flush=True)
    cm.build_cache(num_workers=2, force=sys.argv[2] == "force", progress=False)
    """
)


def _child_env():
    return package_env(HERE, NEUROVFM_NUM_THREADS="1")  # HERE: cachefaults.py


def test_sigkill_at_random_points(tmp_path, built):
    """20 builds killed with SIGKILL at random moments: never a corrupt entry served,
    no valid entry lost by a normal build, a rerun completes the cache.

    Even runs rebuild everything (``force``); before each odd run a random half of
    the entries is dropped, so that a normal build has work to be killed in while
    the other half must survive it untouched."""
    root, exp, seconds = _fresh(tmp_path, built)
    rng = np.random.default_rng(1)
    CacheManager(root).build_cache(num_workers=2, progress=False)
    interrupted = 0
    for k in range(20):
        force = k % 2 == 0
        if not force:
            cm = CacheManager(root)
            for study in cm.metadata:
                for rec in study.images:
                    if rng.random() < 0.5:
                        _unlink(cm.sidecar_path(study.name, rec.name))
        valid = check_never_corrupt(root, exp)
        p = subprocess.Popen(
            [sys.executable, "-c", _BUILDER, str(root), "force" if force else "-"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_child_env(),
        )
        assert p.stdout.readline().strip() == b"ready", p.stderr.read().decode()
        time.sleep(rng.uniform(0, (1.0 if force else 0.5) * seconds))
        p.send_signal(signal.SIGKILL)
        p.communicate()
        now = check_never_corrupt(root, exp)
        if not force:
            assert valid <= now, f"kill {k}: entries lost: {sorted(valid - now)}"
        interrupted += len(now) < 12 or bool(leftovers(root))
    assert interrupted >= 3, f"only {interrupted} of 20 kills landed inside a build"
    summary = CacheManager(root).build_cache(num_workers=2, progress=False)
    assert not summary.failed, summary
    assert len(check_never_corrupt(root, exp)) == 12
    assert leftovers(root) == []
    assert CacheManager(root).verify() == {}


def _corrupt_cases(d):
    """(name, function that damages the entry of study ct00, the windows (brain, blood,
    bone) whose dataset items are refused). Damage outside the tensor bytes (zip header
    or directory) refuses none: the numbers are read at the recorded offset and
    CRC-checked, so they are served; only verify() and the next build see the damage."""
    import json

    side = json.loads((d / "scan0.json").read_text())
    data_at = {
        info["name"]: (info["offset"], info["offset"] + int(np.prod(info["shape"]))) for info in side["files"].values()
    }

    def flip(name, where):
        def f():
            b = bytearray((d / name).read_bytes())
            b[where(len(b))] ^= 0x5A
            (d / name).write_bytes(bytes(b))

        return f

    def truncate():
        b = (d / "scan0_blood.pt").read_bytes()
        (d / "scan0_blood.pt").write_bytes(b[:-100])

    def extend():
        with open(d / "scan0_bone.pt", "ab") as f:
            f.write(b"\0" * 64)

    def swap():  # two files of the same size, each intact: the per-file CRC tells them apart
        a, b = d / "scan0_brain.pt", d / "scan0_blood.pt"
        tmp = d / "x"
        os.replace(a, tmp)
        os.replace(b, a)
        os.replace(tmp, b)

    def sidecar_garbage():
        (d / "scan0.json").write_bytes(b"{not json")

    lo, hi = data_at["scan0_brain.pt"]
    mlo, mhi = data_at["scan0_mask.pt"]
    return [
        ("bit flip in the data", flip("scan0_brain.pt", lambda n: (lo + hi) // 2), {"brain"}),
        ("bit flip in the mask", flip("scan0_mask.pt", lambda n: mhi - 1), {"brain", "blood", "bone"}),
        ("bit flip in the zip header", flip("scan0_brain.pt", lambda n: 10), set()),
        ("bit flip in the zip directory", flip("scan0_blood.pt", lambda n: n - 300), set()),
        ("truncated", truncate, {"blood"}),
        ("extended", extend, {"bone"}),
        ("swapped windows", swap, {"brain", "blood"}),
        ("deleted", lambda: os.unlink(d / "scan0_bone.pt"), {"bone"}),
        ("sidecar garbage", sidecar_garbage, {"brain", "blood", "bone"}),
    ]


def test_corruption_after_build_is_never_served_and_rerun_repairs(tmp_path, built):
    root, exp, _ = _fresh(tmp_path, built)
    torch = pytest.importorskip("torch")
    from neurovfm.datasets import ImageDataset
    from neurovfm.errors import ImageNotFoundError, ImageReadError

    cm = CacheManager(root)
    cm.build_cache(num_workers=2, progress=False)
    d = root / "processed" / "ct00"
    others = {
        p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (root / "processed").rglob("*.pt") if p.parent.name != "ct00"
    }
    for name, damage, refuse in _corrupt_cases(d):
        damage()
        cm = CacheManager(root)
        # Damage outside the tensor bytes leaves the served numbers right (they are
        # read at the recorded offset and CRC-checked), but torch.load may fail on
        # the file: verify() and the next build find it.
        assert (cm.load_image("ct00", "scan0") is None) == bool(refuse), name
        status = "missing" if name == "sidecar garbage" else "corrupt"  # an unreadable sidecar reads as missing
        assert cm.entry_status("ct00", "scan0", verify=True) == status, name
        assert cm.verify().get("ct00/scan0") == status, name
        refused = set()
        for w, probs in enumerate(np.eye(3)):  # each window in turn
            window = ("brain", "blood", "bone")[w]
            ds = ImageDataset(root, fallback_to_raw=False, ct_window_probs=probs, tokenize=False, seed=0)
            i = _index(ds, "ct00")
            try:
                item = ds.get_item(i, 0)
            except (ImageNotFoundError, ImageReadError) as err:  # the library's errors, naming the entry
                assert "ct00" in str(err), err
                assert isinstance(err, ImageNotFoundError) == (name == "sidecar garbage"), (name, err)
                refused.add(window)
                continue
            want = exp[("ct00", "scan0", window)].astype(np.float32) / np.float32(255)
            assert np.array_equal(item["img"].numpy(), want.reshape(item["img"].shape)), name
        assert refused == refuse, name
        check_never_corrupt(root, exp)
        summary = CacheManager(root).build_cache(num_workers=2, progress=False)
        assert summary.done == ["ct00/scan0"] and not summary.failed, (name, summary)
        if name != "sidecar garbage":  # an unreadable sidecar reads as missing
            assert summary.repaired == ["ct00/scan0"], (name, summary)
            assert "repaired ct00/scan0" in str(summary)
        assert len(check_never_corrupt(root, exp)) == 12, name
        assert ds.get_item(i, 0)["img"].dtype == torch.float32
    # nothing else was touched
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in others} == others


def _index(ds, study):
    return next(k for k in range(len(ds)) if ds.study_of(k) == study)


# --- full disk and read-only processed/: in a private mount namespace --------------------------

_NAMESPACE_SCENARIO = textwrap.dedent(
    """
    import errno, os, subprocess, sys
    import numpy as np
    from cachefaults import check_never_corrupt, expected_u8, leftovers
    from neurovfm.data.cache import CacheManager

    root = sys.argv[1]
    proc = os.path.join(root, "processed")
    os.makedirs(proc, exist_ok=True)
    exp = expected_u8(root)
    run = lambda *cmd: subprocess.run(cmd, check=True)

    # 1. a 3 MiB tmpfs as processed/: three entries fit, then the disk is made full
    run("mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", proc)
    first = ["ct00", "mri06", "mri07"]
    s = CacheManager(root).build_cache(num_workers=2, study_names=first, progress=False)
    assert len(s.done) == 3 and not s.failed, s
    before = check_never_corrupt(root, exp)
    filler = os.path.join(proc, "filler")
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\\0" * 65536)
                f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC, err
    os.truncate(filler, os.path.getsize(filler) - 100_000)  # room for part of one image
    s = CacheManager(root).build_cache(num_workers=2, progress=False)
    assert len(s.failed) >= 8 and set(s.skipped) == before, s
    assert all("No space left" in r and proc in r for r in s.failed.values()), s.failed
    assert "failed" in str(s)
    # a forced rebuild on the full disk fails, but keeps the old entries
    s = CacheManager(root).build_cache(num_workers=2, study_names=first, force=True, progress=False)
    assert len(s.failed) == 3, s
    assert check_never_corrupt(root, exp) >= before
    assert leftovers(root) == []
    # space again: the rerun completes it, nothing lost
    os.unlink(filler)
    run("mount", "-o", "remount,size=64m", proc)
    s = CacheManager(root).build_cache(num_workers=2, progress=False)
    assert not s.failed and set(s.skipped) >= before, s
    assert len(check_never_corrupt(root, exp)) == 12
    print("full disk: ok", flush=True)

    # 2. processed/ read-only (a read-only bind mount): one entry missing
    cm = CacheManager(root)
    os.unlink(cm.sidecar_path("mri11", "scan11"))
    run("mount", "--bind", proc, proc)
    run("mount", "-o", "remount,bind,ro", proc)
    s = CacheManager(root).build_cache(num_workers=2, progress=False)
    assert list(s.failed) == ["mri11/scan11"] and len(s.skipped) == 11, s
    reason = s.failed["mri11/scan11"]
    assert "Read-only file system" in reason and "mri11" in reason, reason
    assert len(check_never_corrupt(root, exp)) == 11
    # metadata.json unwritable too: a warning in the summary, no exception
    run("mount", "--rbind", root, root)
    run("mount", "-o", "remount,bind,ro", root)
    s = CacheManager(root).build_cache(num_workers=1, progress=False)
    assert len(s.skipped) == 11 and list(s.failed) == ["mri11/scan11"], s
    assert s.warnings and "metadata.json" in s.warnings[0], s
    print("read-only: ok", flush=True)
    """
)


def _unshare_works() -> str | None:
    if shutil.which("unshare") is None:
        return "no unshare(1)"
    r = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if r.returncode != 0:
        return f"unshare -rm fails here ({r.stderr.decode().strip()})"
    return None


def test_full_disk_and_read_only_processed(tmp_path, built):
    why = _unshare_works()
    if why:
        pytest.skip(f"needs a private mount namespace: {why}")
    root, _, _ = _fresh(tmp_path, built)
    r = subprocess.run(
        ["unshare", "-rm", sys.executable, "-c", _NAMESPACE_SCENARIO, str(root)],
        capture_output=True,
        env=_child_env(),
        timeout=300,
    )
    out = r.stdout.decode() + r.stderr.decode()
    assert r.returncode == 0, out
    assert "full disk: ok" in out and "read-only: ok" in out


@pytest.mark.parametrize("make", [lambda a: a[None], lambda a: a[:, None], lambda a: a.reshape(1, *a.shape, 1)])
def test_ptfile_records_contiguous_strides_for_size_one_axes(tmp_path, make):
    """numpy may report any stride for an axis of size 1 (``a[None]``: 0); the file must
    carry the row-major strides torch and the reader expect."""
    import torch
    from neurovfm.data.cache import ptfile

    arr = make(np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4))
    path = str(tmp_path / "a.pt")
    ptfile.write_tensor(path, arr)
    got = ptfile.open_tensor(path)
    view = got[0] if isinstance(got, tuple) else got
    np.testing.assert_array_equal(np.asarray(view), arr)
    np.testing.assert_array_equal(torch.load(path, weights_only=True).numpy(), arr)


def test_map_cache_reuses_unchanged_files_and_remaps_replaced_ones(tmp_path):
    from neurovfm.data.cache import entry, ptfile

    paths = []
    for k in range(4):
        p = str(tmp_path / f"f{k}.pt")
        ptfile.write_tensor(p, np.full((3, 5), k, np.uint8))
        paths.append(p)
    size = os.path.getsize(paths[0])
    maps = entry.MapCache(capacity=2)
    a, _ = maps.map(paths[0], size)
    again, _ = maps.map(paths[0], size)
    assert again is a and len(maps) == 1  # unchanged: the same mapping
    maps.map(paths[1], size)
    maps.map(paths[2], size)
    assert len(maps) == 2  # bounded: paths[0] evicted
    assert maps.map(paths[0], size)[0] is not a
    # replaced by a rename (a rebuild): a new inode, a new mapping with the new bytes
    before, _ = maps.map(paths[0], size)
    ptfile.write_tensor(str(tmp_path / "new.pt"), np.full((3, 5), 9, np.uint8))
    os.replace(tmp_path / "new.pt", paths[0])
    after, _ = maps.map(paths[0], size)
    assert after is not before and bytes(after).count(9) >= 15
    # a file that changed size is refused as by ptfile.map_file
    with pytest.raises(ptfile.PtFormatError):
        maps.map(paths[0], size + 1)
    assert entry.MapCache(capacity=0).map(paths[1], size)[0] is not entry.MapCache(capacity=0).map(paths[1], size)[0]
