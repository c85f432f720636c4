"""A small cached dataset of real corpus scans, built once per test session, and a
short NumPy reference of a training item (shared by test_datasets, test_sampler
and test_collate)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

# study -> (mode, [corpus paths]); small scans so that the cache builds in seconds.
STUDIES = {
    "ct_body": ("ct", ["ct/body_small.nii.gz"]),
    "ct_head": ("ct", ["ct/phantom_head_5mm"]),
    "mr_stroke": ("mri", ["mr/stroke/T1.nii.gz", "mr/stroke/FLAIR.nii.gz"]),
    "mr_t1": ("mri", ["mr/stroke/T1.nii.gz"]),
}
LABELS = {"ct_body": 1, "ct_head": 0, "mr_stroke": 1, "mr_t1": 0}

_built: dict = {}


def make_dataset(root: Path, corpus: Path, studies=STUDIES) -> dict:
    """raw/<study>/ of symlinks to corpus files, and metadata.json. Returns {study: mode}."""
    from neurovfm.data.metadata import DatasetMetadata

    for study, (_mode, paths) in studies.items():
        d = root / "raw" / study
        d.mkdir(parents=True, exist_ok=True)
        for p in paths:
            os.symlink(corpus / p, d / os.path.basename(p))
    modes = {s: m for s, (m, _) in studies.items()}
    DatasetMetadata.from_directory(root, modes).save()
    return modes


def cached_dataset(tmp_path_factory, corpus: Path) -> Path:
    """The session's cached dataset (built on first use; treat it as read-only)."""
    key = str(corpus)
    if key not in _built:
        from neurovfm.data.cache import CacheManager

        root = tmp_path_factory.mktemp("items_ds")
        make_dataset(root, corpus)
        summary = CacheManager(root).build_cache(num_workers=2, progress=False)
        assert not summary.failed, summary.failed
        _built[key] = root
    return _built[key]


def copy_dataset(src: Path, dst: Path) -> Path:
    """A private copy (symlinked raw files, copied cache) a test may modify."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


# --- the reference item --------------------------------------------------------------------------


def reference_item(
    volume_u8, flags, start=(0, 0, 0), size=None, transpose=False, flips=(False, False, False), dtype=np.float32
):
    """Tokens, flags, coords and grid of a cached uint8 volume ``[1, D, H, W]`` (or
    ``[D, H, W]``) and its token flags ``[d, h, w]``: crop the token box, swap H/W,
    flip, convert (``x / 255`` as float32), cut into 4x16x16 tokens."""
    v = np.asarray(volume_u8)
    v = v[0] if v.ndim == 4 else v
    f = np.asarray(flags)
    if size is None:
        size = f.shape
    (d0, h0, w0), (sd, sh, sw) = start, size
    v = v[d0 * 4 : (d0 + sd) * 4, h0 * 16 : (h0 + sh) * 16, w0 * 16 : (w0 + sw) * 16]
    f = f[d0 : d0 + sd, h0 : h0 + sh, w0 : w0 + sw]
    if transpose:
        v, f = v.transpose(0, 2, 1), f.transpose(0, 2, 1)
    for k in range(3):
        if flips[k]:
            v, f = np.flip(v, k), np.flip(f, k)
    x = v.astype(np.float32) / np.float32(255) if dtype == np.float32 else v.copy()
    d, h, w = f.shape
    tokens = x.reshape(d, 4, h, 16, w, 16).transpose(0, 2, 4, 1, 3, 5).reshape(-1, 1024)
    coords = np.stack(np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 3)
    return {
        "img": tokens,
        "volume": x[None],
        "filtered": f.ravel().copy(),
        "coords": coords,
        "size": np.array([d, h, w]),
    }
