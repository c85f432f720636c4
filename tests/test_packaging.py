"""Packaging: importing neurovfm does not import torch (or matplotlib); and, when the
suite runs against an installed wheel (``scripts/wheel.sh test`` and cibuildwheel set
NEUROVFM_EXPECT_INSTALLED=1), that the package really comes from site-packages, with
its compiled module, type information and console script; with
NEUROVFM_EXPECT_NO_BUILD_TOOLS=1 (``scripts/wheel.sh test``), that no compiler or
build system is reachable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import package_env

import neurovfm

REPO = Path(__file__).resolve().parents[1]
EXPECT_INSTALLED = os.environ.get("NEUROVFM_EXPECT_INSTALLED") == "1"
EXPECT_NO_BUILD_TOOLS = os.environ.get("NEUROVFM_EXPECT_NO_BUILD_TOOLS") == "1"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=package_env(), timeout=120)


def test_import_does_not_import_torch():
    res = _run(
        "import sys\n"
        "import neurovfm, neurovfm.data, neurovfm.qa, neurovfm.cli, neurovfm.phantom\n"
        "from neurovfm.data import load_image, prepare_for_inference, tokenize, CacheManager, DatasetMetadata\n"
        "heavy = sorted(m for m in ('torch', 'matplotlib') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_cache_files_are_written_without_torch_and_load_with_it(tmp_path):
    pytest.importorskip("torch")
    res = _run(
        "import sys, numpy as np\n"
        "from neurovfm.data.cache import ptfile\n"
        f"ptfile.write_tensor({str(tmp_path / 'a.pt')!r}, np.zeros((2, 3), np.uint8))\n"
        "assert 'torch' not in sys.modules  # writing the cache format does not need torch\n"
        "import torch\n"
        f"t = torch.load({str(tmp_path / 'a.pt')!r}, weights_only=True)\n"
        "assert tuple(t.shape) == (2, 3)\n"
        "print('ok')\n"
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def _site_dirs() -> set:
    paths = sysconfig.get_paths()
    return {Path(paths["purelib"]).resolve(), Path(paths["platlib"]).resolve()}


@pytest.mark.skipif(not EXPECT_INSTALLED, reason="runs against an installed wheel (scripts/wheel.sh test)")
def test_suite_runs_against_the_installed_wheel():
    pkg = Path(neurovfm.__file__).resolve().parent
    assert pkg.parent in _site_dirs(), f"neurovfm imported from {pkg}, not from site-packages {_site_dirs()}"
    assert pkg != REPO / "python" / "neurovfm", f"neurovfm imported from the source tree: {pkg}"
    from neurovfm import _core

    assert Path(_core.__file__).resolve().parent == pkg
    for name in ("py.typed", "_core.pyi"):
        assert (pkg / name).is_file(), f"{name} is not installed"
    # the wheel's own record: installed by pip from a wheel, not in development mode
    from importlib import metadata

    dist = metadata.distribution("neurovfm")
    assert dist.read_text("WHEEL") is not None
    assert dist.read_text("direct_url.json") is None or '"editable": true' not in dist.read_text("direct_url.json")
    extras = set(dist.metadata.get_all("Provides-Extra") or [])
    assert {"qa", "test", "torch"} <= extras


@pytest.mark.skipif(not EXPECT_INSTALLED, reason="runs against an installed wheel (scripts/wheel.sh test)")
def test_console_script():
    scripts = Path(sysconfig.get_paths()["scripts"])
    exe = scripts / ("neurovfm.exe" if os.name == "nt" else "neurovfm")
    assert exe.is_file(), f"console script {exe} missing"
    res = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == f"neurovfm {neurovfm.__version__}", res.stderr


@pytest.mark.skipif(not EXPECT_NO_BUILD_TOOLS, reason="only where build tools are hidden (scripts/wheel.sh test)")
def test_no_build_tools_reachable():
    found = {t: shutil.which(t) for t in ("cmake", "ninja", "cc", "c++", "gcc", "g++", "clang", "clang++", "make")}
    assert not any(found.values()), f"build tools reachable while testing the wheel: {found}"
