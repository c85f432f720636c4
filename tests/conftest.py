"""Shared fixtures and helpers: the real corpus, synthetic images, the parity rule."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import reference as R

# --- forks under the sanitizers -----------------------------------------------------------

if os.environ.get("NEUROVFM_SANITIZERS") and hasattr(os, "register_at_fork"):
    import threading

    def _settle_queue_feeders() -> None:
        """Under scripts/asan_test.sh every process allocates through the preloaded ASan
        runtime, whose allocator (GCC 12's libasan) is not locked around fork: a child forked
        while another thread of the parent is inside malloc inherits a locked size class and
        hangs at its first allocation from it (one CI run hung so, in a DataLoader worker of
        test_loader_load). The threads that allocate while a DataLoader forks its workers are
        the multiprocessing queue feeders of the previous loader, still flushing: give each a
        moment to finish first. glibc's malloc locks itself around fork, so the wheel stage
        and users need nothing of the kind."""
        me = threading.current_thread()
        for t in threading.enumerate():
            if t is not me and t.name == "QueueFeederThread":
                t.join(0.05)

    os.register_at_fork(before=_settle_queue_feeders)

# --- the real corpus ----------------------------------------------------------------------


def corpus_dir() -> Path | None:
    """The corpus folder from NEUROVFM_TEST_DATA, or None when unset or missing."""
    env = os.environ.get("NEUROVFM_TEST_DATA")
    if not env or not Path(env).is_dir():
        return None
    return Path(env).resolve()  # absolute: tests symlink corpus files from other folders


# --- child processes ------------------------------------------------------------------------


def package_env(*first: str, **variables: str) -> dict:
    """``os.environ`` for a child Python that imports the neurovfm this process imported
    (the source tree, the sanitizer stage of scripts/asan_test.sh; an installed wheel is
    found by itself), with the folders ``first`` ahead on PYTHONPATH and ``variables`` set."""
    import neurovfm

    paths = list(first)
    if os.environ.get("NEUROVFM_EXPECT_INSTALLED") != "1":
        paths.append(str(Path(neurovfm.__file__).resolve().parents[1]))
    paths.append(os.environ.get("PYTHONPATH", ""))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), **variables}


def copy_series(src: Path, dst: Path, number: int, description: str, keep=None, **attrs) -> str:
    """A copy of the DICOM series in ``src`` as a new series (new UIDs) in ``dst``: slices
    ``keep`` (indices of the files sorted by name; all by default), ``attrs`` set on every
    file (e.g. ``ImageType=["DERIVED", "SECONDARY"]``). Returns the new SeriesInstanceUID."""
    import pydicom

    dst.mkdir(parents=True)
    uid = pydicom.uid.generate_uid()
    for i, f in enumerate(sorted(src.iterdir())):
        if keep is not None and i not in keep:
            continue
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, pydicom.uid.generate_uid()
        ds.SeriesNumber, ds.SeriesDescription = number, description
        for k, v in attrs.items():
            setattr(ds, k, v)
        ds.save_as(dst / f.name)
    return uid


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = corpus_dir()
    if d is None:
        pytest.skip("real-scan corpus not available: set NEUROVFM_TEST_DATA to its folder")
    return d


@pytest.fixture(scope="session")
def scan_dir(tmp_path_factory) -> Path:
    """The real corpus when NEUROVFM_TEST_DATA is set, else phantom stand-ins at the same
    relative paths (tests/phantomcorpus.py, written once per session): for tests that need
    a scan of a kind (a CT DICOM series, an 8-bit NIfTI, ...), not one real scanner's file.
    Tests of a property only a real file has use ``data_dir`` instead."""
    d = corpus_dir()
    if d is not None:
        return d
    from phantomcorpus import write_phantom_corpus

    return write_phantom_corpus(tmp_path_factory.mktemp("phantom_corpus"))


def is_phantom(scan_root: Path) -> bool:
    """Whether ``scan_root`` (from ``scan_dir``) holds the phantom stand-ins, not the corpus."""
    return corpus_dir() is None or Path(scan_root).resolve() != corpus_dir()


def scan_path(scan_root: Path, rel: str) -> Path:
    """``scan_root / rel``; skips, saying so, where ``scan_root`` holds the phantom stand-ins
    and ``rel`` has none (a real file whose own properties the test needs)."""
    path = Path(scan_root) / rel
    if is_phantom(scan_root) and not path.exists():
        pytest.skip(f"{rel}: a real file without a phantom stand-in; set NEUROVFM_TEST_DATA to the corpus")
    return path


@pytest.fixture(scope="module")
def quiet_itk():
    """ITK's warnings off for a module (use with ``pytest.mark.usefixtures("quiet_itk")``)."""
    old = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    yield
    sitk.ProcessObject.SetGlobalWarningDisplay(old)


# --- synthetic images ---------------------------------------------------------------------

DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.float32, np.float64]


def make_image(arr, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    """A SimpleITK image from a NumPy array in (z, y, x) order; geometry in (x, y, z)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    if direction is not None:
        img.SetDirection([float(v) for v in np.asarray(direction, float).ravel()])
    return img


def random_volume(rng, shape, dtype):
    """Smooth structure plus noise, spanning a good part of the dtype's range."""
    dtype = np.dtype(dtype)
    z, y, x = np.meshgrid(*[np.linspace(0, 3, n) for n in shape], indexing="ij")
    smooth = np.sin(x + 0.3) * np.cos(1.7 * y) + np.sin(2.3 * z)
    noisy = smooth + 0.5 * rng.standard_normal(shape)
    if dtype.kind == "f":
        return (noisy * 700.0).astype(dtype)
    info = np.iinfo(dtype)
    lo, hi = max(info.min, -30000), min(info.max, 30000)
    v = (noisy - noisy.min()) / (np.ptp(noisy) + 1e-12) * (hi - lo) + lo
    return np.clip(np.round(v), info.min, info.max).astype(dtype)


def signed_permutations():
    """The 48 direction matrices that are permutations of the axes with flips."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            for i, p in enumerate(perm):
                m[i, p] = signs[i]
            out.append(m)
    return out


def rotation(ax, ay, az):
    """A rotation matrix from three angles in radians."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


# --- the parity rule ----------------------------------------------------------------------


def _boundary_planes(source: sitk.Image):
    """Per numpy axis of the cropped output: bool per index, True where the exact continuous
    input index is n - 0.5 (outside by the spec; SimpleITK may round it either way)."""
    rpi = sitk.DICOMOrient(source, "RPI")
    z, t, size = R.target_grid(rpi)
    crops = R.crop_slices(size, z)
    s, n = rpi.GetSpacing(), rpi.GetSize()
    planes = []
    for k in range(3):
        j = np.arange(crops[k].start, crops[k].stop, dtype=np.float64)
        planes.append(np.abs(j * t[k] / s[k] - (n[k] - 0.5)) < 1e-9)
    return planes[::-1]


def compare_resampled(ours: sitk.Image, ref: sitk.Image, ref64: sitk.Image, source=None, values=True):
    """Assert the library's resampled image matches the reference (the parity rule).

    Same size, spacing, origin, direction (1e-9), same pixel type. Integer types: equal,
    except where the reference's float64 value is within 1e-6 of an integer (truncation may
    go either way), and never more than 1 apart. Float types: within 1e-5 of the value range.
    With ``source`` (the image before preprocessing), output planes whose continuous input
    index is exactly n - 0.5 may be 0 in ours whatever the reference says there.
    ``values=False`` compares the geometry only.
    """
    assert ours.GetSize() == ref.GetSize()
    assert ours.GetPixelID() == ref.GetPixelID(), (ours.GetPixelIDTypeAsString(), ref.GetPixelIDTypeAsString())
    np.testing.assert_allclose(ours.GetSpacing(), ref.GetSpacing(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.GetOrigin(), ref.GetOrigin(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.GetDirection(), ref.GetDirection(), rtol=0, atol=1e-9)
    if not values:
        return
    a = sitk.GetArrayFromImage(ours).astype(np.float64)
    b = sitk.GetArrayFromImage(ref).astype(np.float64)
    v = sitk.GetArrayFromImage(ref64)
    exempt = np.zeros(a.shape, bool)
    if source is not None:
        pz, py, px = _boundary_planes(source)
        exempt = pz[:, None, None] | py[None, :, None] | px[None, None, :]
        exempt &= a == 0
    if np.issubdtype(sitk.GetArrayViewFromImage(ref).dtype, np.integer):
        near_int = np.abs(v - np.round(v)) <= 1e-6
        bad = (a != b) & ~near_int & ~exempt
        far = (np.abs(a - b) > 1) & ~exempt
        assert not bad.any() and not far.any(), _report(a, b, v, bad | far)
    else:
        scale = max(float(np.ptp(b)) if b.size else 0.0, 1e-30)
        bad = (np.abs(a - b) > 1e-5 * scale) & ~exempt
        assert not bad.any(), _report(a, b, v, bad)


def _report(a, b, v, bad):
    idx = np.argwhere(bad)
    first = tuple(idx[0])
    return (
        f"{len(idx)} of {a.size} voxels differ; first at {first}: ours={a[first]!r} ref={b[first]!r} ref64={v[first]!r}"
    )
