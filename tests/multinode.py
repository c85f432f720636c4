"""Shared by tests/test_slurm.py and tests/test_torchrun.py: a dataset folder of real
scans (six studies of two images), build summaries read from a builder's output, the
shards a builder takes, and snapshots of the cache."""

from __future__ import annotations

import json
import os
import re
import sys
import zlib
from pathlib import Path

from neurovfm.data.cache import CacheManager
from neurovfm.data.metadata import DatasetMetadata

#: study -> (mode, corpus paths): 12 images, one a 30 MB CT (a build slow enough to kill); without
#: the corpus, their phantom stand-ins (conftest.scan_dir).
STUDIES = {
    "ct_head": ("ct", ["ct/phantom_head_1mm.nii.gz", "ct/phantom_head_5mm"]),
    "ct_body": ("ct", ["ct/body_small.nii.gz", "ct/body_j2k"]),
    "mr_stroke": ("mri", ["mr/stroke/T1.nii.gz", "mr/stroke/FLAIR.nii.gz"]),
    "mr_mix": ("mri", ["mr/stroke/T2.nii.gz", "mr/MR_Gd.nii.gz"]),
    "mr_sag": ("mri", ["mr/sag_t1_2d_thick", "mr/enhanced_multiframe_t1.dcm"]),
    "mr_avg": ("mri", ["edge/nifti/avg152T1_LR_nifti.nii.gz", "edge/nifti/anatomical.nii"]),
}

#: The slowest image to build (phantom_head_1mm: 30 MB of gzip).
SLOW_IMAGE = "ct_head/phantom_head_1mm"


def make_dataset(root: Path, corpus: Path) -> list[str]:
    """``root/raw/<study>/`` links to corpus scans and ``root/metadata.json``; returns the
    images (``study/image``), sorted."""
    for study, (_mode, paths) in STUDIES.items():
        d = root / "raw" / study
        d.mkdir(parents=True)
        for p in paths:
            os.symlink(corpus / p, d / os.path.basename(p))
    meta = DatasetMetadata.from_directory(root, {s: m for s, (m, _) in STUDIES.items()})
    meta.save()
    keys = image_keys(root)
    assert len(keys) == 12 and SLOW_IMAGE in keys, keys
    return keys


def image_keys(root: Path) -> list[str]:
    meta = DatasetMetadata.from_file(root / "metadata.json")
    return sorted(f"{s.name}/{im.name}" for s in meta for im in s.images)


def shards(keys: list[str], n: int) -> list[list[str]]:
    """The images builder i of n takes (the cache's rule, computed here independently:
    CRC-32 of ``study/image`` modulo n)."""
    return [[k for k in keys if zlib.crc32(k.encode()) % n == i] for i in range(n)]


_SUMMARY = re.compile(
    r"cache build: (\d+) built(?: \(\d+ of them were corrupt\))?, (\d+) already cached, "
    r"(\d+) failed(?:, (\d+) skipped \(another builder is building them\))?"
)


def build_summary(text: str, where: str) -> dict[str, int]:
    """The counts of the one build summary in a builder's output."""
    found = _SUMMARY.findall(text)
    assert len(found) == 1, f"{where}: expected one build summary, found {len(found)}:\n{text[-3000:]}"
    built, skipped, failed, busy = (int(v or 0) for v in found[0])
    return {"built": built, "skipped": skipped, "failed": failed, "busy": busy}


def check_complete(root: Path, keys: list[str]) -> None:
    """Every entry valid (CRC-32 of every file checked), metadata.json lists every image
    and flags it processed, no temporary file left."""
    cm = CacheManager(root)
    assert cm.verify() == {}, f"{root}: entries not valid: {cm.verify()}"
    assert image_keys(root) == keys
    meta = json.loads((root / "metadata.json").read_text())
    flags = {f"{s['name']}/{im['name']}": im["processed"] for s in meta["studies"] for im in s["images"]}
    assert sorted(flags) == keys and all(flags.values()), f"{root}/metadata.json: processed flags {flags}"
    leftovers = [str(p) for p in (root / "processed").rglob("*") if p.is_file() and ".tmp" in p.name]
    assert leftovers == [], leftovers
    stats = cm.get_cache_stats()
    assert stats["cached_images"] == len(keys) and stats["coverage"] == 1.0, stats


def valid_entries(root: Path, keys: list[str]) -> list[str]:
    cm = CacheManager(root)
    return [k for k in keys if cm.entry_status(*k.split("/"), verify=True) == "valid"]


def entry_files(root: Path) -> dict[str, tuple]:
    """{path under processed/: (inode, mtime_ns, size)} of every file of the cache but the locks."""
    out = {}
    for p in sorted((root / "processed").rglob("*")):
        if p.is_file() and not p.name.endswith(".lock"):
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def tensor_bytes(root: Path) -> dict[str, bytes]:
    """{path under processed/: bytes} of the cached tensors (sidecars hold times and hosts)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "processed").rglob("*.pt"))}


def python_shims(where: Path) -> Path:
    """A folder holding ``python`` and ``python3`` that run this interpreter (put it first on PATH)."""
    where.mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):
        f = where / name
        f.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        f.chmod(0o755)
    return where


def banner(title: str, text: str) -> str:
    """``text`` indented under a title, for the report a test prints."""
    body = "\n".join("    " + line for line in text.rstrip().splitlines())
    return f"--- {title}\n{body}"
