"""The intensity kernels' fast paths (value tables for 8/16-bit input, fused
uint8 quantisation, table-driven dequantisation, AVX2 variants) give exactly the
straightforward computation's bytes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from neurovfm import _core

WINDOWS = [(80.0, 40.0), (200.0, 80.0), (2800.0, 600.0)]


def _ref_windows(x):
    """The reference's float64 windows ``[1, D, H, W]``."""
    x = x.astype(np.float64)
    out = []
    for w, lv in WINDOWS:
        lo, hi = lv - w / 2, lv + w / 2
        out.append(((np.clip(x, lo, hi) - lo) / (hi - lo + 1e-8))[None])
    return out


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.uint8, np.int8, np.int32, np.float32])
@pytest.mark.parametrize("shape", [(4, 16, 16), (8, 64, 48), (12, 128, 160)])  # tables used for the larger ones
def test_ct_windows_tables_and_quantisation(dtype, shape):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    lo, hi = (info.min, info.max) if info else (-3000, 3000)
    x = rng.integers(max(lo, -3000), min(hi, 3000), size=shape, endpoint=True).astype(dtype)
    x = x[:, ::-1, :]  # strided view
    floats, flags, fg = _core.ct_windows(x, WINDOWS, -500.0, True, True, 2)
    ref = _ref_windows(x)
    for a, r in zip(floats, ref):
        assert np.array_equal(a, r.astype(np.float32))
    q, qflags, qfg = _core.ct_windows(x, WINDOWS, -500.0, True, True, 2, True)
    for a, r in zip(q, ref):
        assert a.dtype == np.uint8
        assert np.array_equal(a, (r * 255).astype(np.uint8))  # from float64, as the reference
    assert np.array_equal(flags, qflags) and np.array_equal(fg, qfg)
    assert np.array_equal(fg, x > -500)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float64])
def test_mri_normalise_quantised(dtype):
    rng = np.random.default_rng(2)
    x = (rng.gamma(2.0, 300.0, size=(8, 64, 64))).astype(dtype)
    (lo, p10, hi), vmin, vmax = _core.percentiles(x, [0.5, 10.0, 99.5], 1)
    mn, mx = min(max(vmin, lo), hi), min(max(vmax, lo), hi)
    f, _, _ = _core.mri_normalise(x, lo, hi, mn, mx, p10, True, False, 2)
    q, _, _ = _core.mri_normalise(x, lo, hi, mn, mx, p10, True, False, 2, True)
    xf = np.clip(x.astype(np.float64), lo, hi)
    ref = ((xf - xf.min()) / (xf.max() - xf.min() + 1e-8))[None]
    assert np.array_equal(f, ref.astype(np.float32))
    assert np.array_equal(q, (ref * 255).astype(np.uint8))  # from float64, as the reference


def test_dequantise_all_values_and_threads():
    v = np.arange(256, dtype=np.uint8).reshape(1, 1, 256)
    assert np.array_equal(_core.dequantize_u8(v, 1), v.astype(np.float32) / np.float32(255))
    big = np.random.default_rng(3).integers(0, 256, size=(1, 40, 256, 256), dtype=np.uint8)
    ref = big.astype(np.float32) / np.float32(255)
    for t in (1, 2, 7):
        assert np.array_equal(_core.dequantize_u8(big, t), ref)


def test_avx2_and_baseline_give_the_same_bytes(tmp_path):
    """Run every kernel with an AVX2 variant (resampling, the item gathers, dequantisation)
    with NEUROVFM_DISABLE_AVX2=0 and =1 in subprocesses and compare: one switch turns all
    of them to the baseline, and the bytes do not change."""
    script = (
        "import numpy as np, sys\n"
        "from neurovfm import _core\n"
        "rng = np.random.default_rng(5)\n"
        "a = rng.integers(-1024, 3000, size=(37, 70, 53)).astype(np.int16)[:, ::-1]\n"
        "r = _core.resample_bspline(a, [9, 48, 32], [0, 3, 2], [4, 1, 1], [1.0, 0.7, 0.8], 2)\n"
        "d = _core.dequantize_u8(rng.integers(0, 256, (1, 8, 64, 64), dtype=np.uint8), 2)\n"
        "u = rng.integers(0, 256, (1, 16, 64, 48), dtype=np.uint8)\n"
        "fl = rng.integers(0, 2, (4, 4, 3), dtype=np.uint8)\n"
        "items = []\n"
        "for t in (False, True):\n"
        "    for f in ((False, False, False), (True, True, True), (False, True, False), (False, False, True)):\n"
        "        for tok in (True, False):\n"
        "            for dt in ('float32', 'uint8'):\n"
        "                items += list(_core.make_item(u, fl, [1, 0, 1], [2, 3, 2], t, f, dt, tok, 2)[:3])\n"
        "                items += list(_core.make_item(u[:, ::-1, :, ::-1], fl, [0, 1, 0], [3, 2, 3], t, f, dt, tok, 1)[:1])\n"
        "items.append(_core.make_item(u[0, :, ::2, :], None, None, None, False, (False,) * 3)[0])\n"
        "np.savez(sys.argv[1], r=r, d=d, isa=_core.isa(), risa=_core.resample_isa(),\n"
        "         **{f'i{k}': x for k, x in enumerate(items)})\n"
    )
    outs = []
    for disable in ("0", "1"):
        out = tmp_path / f"o{disable}.npz"
        env = {**os.environ, "NEUROVFM_DISABLE_AVX2": disable}
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, env=env)
        outs.append(np.load(out))
    assert str(outs[1]["isa"]) == str(outs[1]["risa"]) == "baseline"
    assert str(outs[0]["isa"]) == str(outs[0]["risa"]) == _core.isa() or "NEUROVFM_DISABLE_AVX2" in os.environ
    assert set(outs[0].files) == set(outs[1].files)
    for k in sorted(set(outs[0].files) - {"isa", "risa"}):
        assert np.array_equal(outs[0][k], outs[1][k]), k


def test_kernels_survive_fork():
    """The persistent thread pool is rebuilt in a forked child (DataLoader workers fork)."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    a = np.random.default_rng(6).integers(0, 256, size=(1, 16, 128, 128), dtype=np.uint8)
    ref = _core.dequantize_u8(a, 2)
    pid = os.fork()
    if pid == 0:  # child
        ok = np.array_equal(_core.dequantize_u8(a, 2), ref)
        r = _core.resample_bspline(a[0].astype(np.int16), [4, 32, 32], [0, 0, 0], [4, 1, 1], [1, 0.25, 0.25], 2)
        os._exit(0 if ok and r.shape == (4, 32, 32) else 3)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
