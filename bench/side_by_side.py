#!/usr/bin/env python3
"""The published NeuroVFM code and neurovfm side by side, on real scans: one markdown table.

    PYTHONPATH=python python bench/side_by_side.py                 # ~50 s on 2 shared cores
    PYTHONPATH=python python bench/side_by_side.py --repeats 3 --json out.json --keep /tmp/sbs

The published code (GitHub ``MLNeurosurg/neurovfm``) is exported from the local git
mirror (``$NEUROVFM_PUBLISHED_REPO``, default ``/work/.mirror/MLNeurosurg+neurovfm/repo``:
``git archive HEAD neurovfm examples``) into a temporary folder. Its top-level
``neurovfm/__init__.py`` and ``neurovfm/pipelines/__init__.py`` import the models
(flash_attn, timm, transformers, ...): in the export they are replaced by minimal ones
(no imports; ``StudyPreprocessor`` only). Its data code needs SimpleITK, torch, numpy,
einops, pandas, tqdm, omegaconf and pytorch_lightning. Both packages are named
``neurovfm``, so the published side runs in a subprocess (``sys.executable`` with
``PYTHONPATH`` = the export: this file with ``--published-worker``), which writes its
outputs (``torch.save``, ``.nii``, JSON) to the work folder; this process imports
neurovfm and compares. The published collators are also imported in this process, on
their own (``bench/_common.published_module``: they need only torch), for interleaved
timings. Nothing of the published code is copied into this repository.

The dataset (``raw/<study>/`` symlinks to the corpus, ``$NEUROVFM_TEST_DATA``): ``ct_body``
(``ct/body_small.nii.gz``), ``ct_head`` (``ct/phantom_head_5mm``, extension-less DICOM),
``ct_tilt`` (``ct/head_tilt_ge``, DICOM, gantry tilt), ``mr_stroke``
(``mr/stroke/T1.nii.gz``, ``FLAIR.nii.gz``), ``mr_gd`` (``mr/MR_Gd.nii.gz``); labels from a
small CSV (``study,label``; ``study,label1,label2`` for ``mil.yaml``).

Rows (one per check):

1. ``metadata.json`` written by the published ``DatasetMetadata.from_directory``; our
   ``from_directory`` on the same ``raw/``; our ``DatasetMetadata.from_file`` of the
   published file; the published ``CacheManager.build_cache`` and ours (from the published
   ``metadata.json``, in a second folder): the share of cache bytes equal per image and
   window, and of the token background flags (ours) equal to the published voxel mask
   reduced per 4x16x16 token. A difference is traced in the notes below the table: the
   published resampled image (``load_image``) against ours (voxels differing, largest
   difference, and for integer pixel types how many differing voxels are *not* where
   SimpleITK's own float64 result lies within 1e-6 of an integer, ``tests/reference.py``),
   and our ``prepare_for_inference(quantize=True)`` of the *published* resampled image
   against the published cache bytes.
2. ``neurovfm cache import DATA_DIR --trust-pickle`` on a copy of the published cache, then
   published ``ImageDataset`` items (``random_crop=False``, ``augment=False``,
   ``ct_window_probs`` one-hot per window) against ours over every index and window: every
   key of the published item (``img``, ``coords``, ``filtered``, ``size``, ``path``,
   ``label``, ``study``, ``mode``, ``window``, ``conversation``); items/s of both (median
   of passes over the dataset, each library in its own process).
3. ``MultiViewCollator`` (published module vs ``neurovfm.datasets.MultiViewCollator``) on
   the published items, ``patch_drop_rate`` 0 and 0.3, ``apply_masks_internally`` False
   and True, ``torch.manual_seed`` the same before each call: every key (tensors:
   ``torch.equal`` and dtype). Times: median of interleaved repeats.
4. ``MultiBlockCollator`` with the published pretraining mask configuration
   (``datasets/datamodule.py``), ``drop_rate`` 0 and 0.3, both ``apply_masks_internally``:
   6 consecutive steps (batches rotated), every index tensor, cu_seqlens and batch
   tensor equal (as ``bench/bench_masks.py``, on real items). Times: median of
   interleaved repeats of the 6 steps.
5. ``StudyPreprocessor.load_study``: ``mr/stroke`` (a folder: FLAIR, T1, T2) as ``mri``,
   ``ct/body_small.nii.gz`` as ``ct``, also with ``remove_background=False``: every key,
   tensors exactly (dtype, shape), float tokens to 1e-6 (largest difference). A
   difference is traced as in 1, per series: our ``prepare_for_inference`` + ``tokenize``
   of the published resampled images against the published series.
6. ``ImageDataModule``: the published ``examples/config/pretrain.yaml`` and ``mil.yaml``
   (from the export; ``data.data_dir`` set, ``num_workers`` 0, ``batch_size`` 2 (the
   dataset is small and the published sampler drops its last batch), ``study_labels``
   for ``mil``), with ``mode_filter`` as in the YAML (``mri``) and null: the first train
   and val batches (global generators seeded the same before each) have the same
   structure (types, keys, dtypes, tensor ranks, nesting of the mask tuples); the val
   batches (no augmentation, no shuffle) of the MRI-only runs are also compared value
   by value.

Timing columns are each library's own time; on a shared machine they are noisy (the
ratio of one run is what to compare). Collators and masks alternate (published, ours,
published, ..., 3x ``--repeats`` each); cache builds, items and the preprocessor run in the two processes one
after the other. ``--threads`` (default 1) sets torch's, SimpleITK's and neurovfm's
thread counts in both processes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

#: study -> (mode, [corpus paths]); each study is raw/<study>/ of symlinks.
STUDIES: dict[str, tuple[str, list[str]]] = {
    "ct_body": ("ct", ["ct/body_small.nii.gz"]),
    "ct_head": ("ct", ["ct/phantom_head_5mm"]),
    "ct_tilt": ("ct", ["ct/head_tilt_ge"]),
    "mr_stroke": ("mri", ["mr/stroke/T1.nii.gz", "mr/stroke/FLAIR.nii.gz"]),
    "mr_gd": ("mri", ["mr/MR_Gd.nii.gz"]),
}
LABELS = {"ct_body": 1, "ct_head": 0, "ct_tilt": 0, "mr_stroke": 1, "mr_gd": 0}
MULTILABELS = {"ct_body": (1, 0), "ct_head": (0, 1), "ct_tilt": (0, 0), "mr_stroke": (1, 1), "mr_gd": (0, 1)}
WINDOWS = ("brain", "blood", "bone")
#: (label, corpus path, modality, remove_background) of the StudyPreprocessor check.
PREPROCESSOR_CASES = [
    ("mr/stroke/ (FLAIR, T1, T2)", "mr/stroke", "mri", True),
    ("ct/body_small.nii.gz", "ct/body_small.nii.gz", "ct", True),
    ("ct/body_small.nii.gz, remove_background=False", "ct/body_small.nii.gz", "ct", False),
]
#: (YAML of the published examples/config, mode_filter) of the ImageDataModule check.
DATAMODULE_CASES = [("pretrain", "mri"), ("pretrain", None), ("mil", "mri"), ("mil", None)]
#: Python modules the published data code imports (beside torch, numpy, SimpleITK).
PUBLISHED_NEEDS = ("einops", "pandas", "tqdm", "omegaconf", "pytorch_lightning")
MIRROR = os.environ.get("NEUROVFM_PUBLISHED_REPO", "/work/.mirror/MLNeurosurg+neurovfm/repo")

_TOP_INIT = '"""The published NeuroVFM package, trimmed by bench/side_by_side.py: no model imports."""\n'
_PIPELINES_INIT = (
    '"""Trimmed by bench/side_by_side.py: the preprocessor only."""\n\nfrom .preprocessor import StudyPreprocessor\n'
)


# --- shared helpers (both processes) ---------------------------------------------------------


def seed_all(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def volume_key(rel: str) -> str:
    """A file name for a corpus path (its resampled image in the work folder)."""
    return rel.replace("/", "__").replace(".nii.gz", "")


def set_threads_both(n: int) -> None:
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(n)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)


# --- the published side (subprocess, PYTHONPATH = the export) ------------------------------------


def published_worker(spec_path: str) -> None:
    """Everything the published code computes, written under spec['out']."""
    import numpy as np
    import SimpleITK as sitk
    import torch

    spec = json.loads(Path(spec_path).read_text())
    set_threads_both(spec["threads"])
    out = Path(spec["out"])
    data_dir = Path(spec["data_dir"])
    repeats = spec["repeats"]
    res: dict[str, Any] = {}

    import neurovfm

    assert str(Path(neurovfm.__file__).resolve()).startswith(str(Path(spec["export"]).resolve())), neurovfm.__file__
    from neurovfm.data.cache import CacheManager
    from neurovfm.data.io import load_image
    from neurovfm.data.metadata import DatasetMetadata

    # 1. metadata.json and the cache (the published code prints a lot: kept in the log)
    meta = DatasetMetadata.from_directory(data_dir, spec["modes"])
    meta.save(data_dir / "metadata.json")
    t0 = time.perf_counter()
    CacheManager(data_dir).build_cache(num_workers=1)
    res["build_s"] = time.perf_counter() - t0
    # the resampled images (load_image), for the notes
    for rel in spec["volumes"]:
        img = load_image(Path(spec["corpus"]) / rel, preprocess=True)
        sitk.WriteImage(img, str(out / f"resampled_{volume_key(rel)}.nii"))

    # 2. items, one window at a time; then items/s with the default window draws
    from neurovfm.datasets.dataset import ImageDataset

    for w in range(3):
        probs = [float(i == w) for i in range(3)]
        ds = ImageDataset(
            data_dir, random_crop=False, augment=False, ct_window_probs=probs, study_labels=spec["labels"]
        )
        torch.save([ds[i] for i in range(len(ds))], out / f"items_{WINDOWS[w]}.pt")
    ds = ImageDataset(data_dir, random_crop=False, augment=False, study_labels=spec["labels"])
    np.random.seed(0)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        times.append(time.perf_counter() - t0)
    res["items"] = {"n": len(ds), "pass_s": times}

    # 5. StudyPreprocessor
    from neurovfm.pipelines import StudyPreprocessor

    res["preprocessor_s"] = []
    for k, (_label, rel, modality, remove_bg) in enumerate(spec["preprocessor"]):
        pre = StudyPreprocessor(remove_background=remove_bg)
        path = str(Path(spec["corpus"]) / rel)
        torch.save(pre.load_study(path, modality), out / f"study_{k}.pt")
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            pre.load_study(path, modality)
            times.append(time.perf_counter() - t0)
        res["preprocessor_s"].append(times)

    # 6. ImageDataModule: first train and val batches
    from neurovfm.datasets.datamodule import ImageDataModule
    from omegaconf import OmegaConf

    for k, cfg_path in enumerate(spec["configs"]):
        dm = ImageDataModule(OmegaConf.load(cfg_path))
        dm.setup("fit")
        batches = {}
        for split in ("train", "val"):
            loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
            seed_all(0)
            batches[split] = next(iter(loader))
        torch.save(batches, out / f"datamodule_{k}.pt")
    (out / "published.json").write_text(json.dumps(res))


def make_export(dest: Path) -> Path:
    """The published code's ``neurovfm`` and ``examples`` in ``dest``, the two heavy
    ``__init__.py`` files replaced."""
    tar = subprocess.run(
        ["git", "-C", MIRROR, "archive", "HEAD", "neurovfm", "examples"], capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as tf:
        try:
            tf.extractall(dest, filter="data")
        except TypeError:  # a Python without extraction filters (our own git archive: trusted)
            tf.extractall(dest)
    (dest / "neurovfm" / "__init__.py").write_text(_TOP_INIT)
    (dest / "neurovfm" / "pipelines" / "__init__.py").write_text(_PIPELINES_INIT)
    return dest


# --- comparison -----------------------------------------------------------------------------------


def tname(x: Any) -> str:
    t = type(x)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"


def compare(a: Any, b: Any, path: str = "", values: bool = True, tol: float = 0.0) -> list[str]:
    """Differences of ``a`` (published) and ``b`` (ours): with ``values``, every value
    (tensors: dtype, shape, ``torch.equal``, or float tensors within ``tol``); without,
    the structure only (types, keys, dtypes, tensor ranks, tuple arity, the structures
    of list elements)."""
    import torch

    where = path or "<top>"
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return [f"{where}: {brief(a)} vs {brief(b)}"]
        if a.dtype != b.dtype:
            return [f"{where}: dtype {a.dtype} vs {b.dtype}"]
        if not values:
            return [] if a.dim() == b.dim() else [f"{where}: {a.dim()}-d vs {b.dim()}-d"]
        if a.shape != b.shape:
            return [f"{where}: shape {tuple(a.shape)} vs {tuple(b.shape)}"]
        if torch.equal(a, b):
            return []
        if a.is_floating_point():
            d = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
            return [] if d <= tol else [f"{where}: max |diff| {d:.3g}"]
        n = int((a != b).sum())
        return [f"{where}: {n}/{a.numel()} elements differ"]
    if type(a) is not type(b):
        return [f"{where}: {brief(a)} vs {brief(b)}"]
    if isinstance(a, dict):
        out = []
        if a.keys() != b.keys():
            out.append(
                f"{where}: keys only published {sorted(a.keys() - b.keys())}, only ours {sorted(b.keys() - a.keys())}"
            )
        for k in a:
            if k in b:
                out += compare(a[k], b[k], f"{path}.{k}" if path else str(k), values, tol)
        return out
    if isinstance(a, (list, tuple)):
        if values or isinstance(a, tuple):
            if len(a) != len(b):
                return [f"{where}: length {len(a)} vs {len(b)}"]
            return [m for i, (x, y) in enumerate(zip(a, b)) for m in compare(x, y, f"{path}[{i}]", values, tol)]
        sa, sb = structure(a), structure(b)
        if sa == sb:
            return []
        if len(a) == len(b):  # positional lists (the mask triples): find where
            return [m for i, (x, y) in enumerate(zip(a, b)) for m in compare(x, y, f"{path}[{i}]", values, tol)]
        return [f"{where}: {sa} vs {sb}"]
    if values and a != b:
        return [f"{where}: {a!r} vs {b!r}"]
    return []


def structure(x: Any) -> str:
    """A hashable description of ``x``'s structure (see :func:`compare`)."""
    import torch

    if isinstance(x, torch.Tensor):
        return f"Tensor({x.dtype}, {x.dim()}-d)"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k}: {structure(v)}" for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))) + "}"
    if isinstance(x, tuple):
        return "(" + ", ".join(structure(v) for v in x) + ")"
    if isinstance(x, list):
        kinds = [structure(v) for v in x]
        if len(set(kinds)) <= 1:  # a list of like elements (paths, modes, one mask per config)
            return "[" + (kinds[0] + ", ..." if kinds else "") + "]"
        return "[" + ", ".join(kinds) + "]"  # positional (a mask triple: indices, cu_seqlens, max)
    return tname(x)


def brief(x: Any) -> str:
    """``x`` in a few words: its type, a tensor's dtype and shape, a short list's values."""
    import torch

    if isinstance(x, torch.Tensor):
        return f"Tensor({x.dtype}, {tuple(x.shape)})"
    if isinstance(x, (list, tuple)) and len(repr(x)) <= 40:
        return f"{tname(x)} {x!r}"
    return tname(x)


def verdict(diffs: list[str], shown: int = 2) -> str:
    if not diffs:
        return "equal"
    more = f"; +{len(diffs) - shown} more" if len(diffs) > shown else ""
    return "differs (" + "; ".join(diffs[:shown]) + more + ")"


def ms(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def median_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, before: Callable[[], None]) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            before()
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []
        self.notes: list[str] = []

    def add(self, check: str, result: str, ours: float | str | None = None, pub: float | str | None = None) -> None:
        o = ours if isinstance(ours, str) else ms(ours)
        p = pub if isinstance(pub, str) else ms(pub)
        ratio = (
            f"{pub / ours:.1f}x"
            if isinstance(ours, float) and isinstance(pub, float) and ours > 0 and pub is not None
            else "-"
        )
        self.rows.append((check, result, o, p, ratio))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def markdown(self) -> str:
        lines = [
            "| # | check | result | neurovfm | published | published / neurovfm |",
            "|---|---|---|---|---|---|",
        ]
        for i, (c, r, o, p, x) in enumerate(self.rows, 1):
            lines.append(f"| {i} | {c} | {r} | {o} | {p} | {x} |")
        if self.notes:
            lines.append("")
            lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines)


# --- the dataset -----------------------------------------------------------------------------


def make_raw(root: Path, corpus: Path) -> None:
    for study, (_mode, paths) in STUDIES.items():
        d = root / "raw" / study
        d.mkdir(parents=True, exist_ok=True)
        for p in paths:
            os.symlink(corpus / p, d / os.path.basename(p))


def write_configs(export: Path, work: Path, data_dir: Path, labels: Path) -> list[Path]:
    from omegaconf import OmegaConf

    out = []
    for k, (name, mode_filter) in enumerate(DATAMODULE_CASES):
        cfg = OmegaConf.load(export / "examples" / "config" / f"{name}.yaml")
        cfg.data.data_dir = str(data_dir)
        for split in ("train", "val"):
            cfg.data.loader[split].num_workers = 0
            cfg.data.loader[split].batch_size = 2
            cfg.data.dataset[split].params.mode_filter = mode_filter
        if name == "mil":
            cfg.data.study_labels = str(labels)
        path = work / f"config_{k}_{name}.yaml"
        OmegaConf.save(cfg, path)
        out.append(path)
    return out


# --- the checks (this process: neurovfm) ---------------------------------------------------------


def resampling_note(rel: str, mode: str, corpus: Path, work: Path) -> tuple[str, Any]:
    """Published against our resampled image of a corpus volume: a note, and the
    published image (SimpleITK)."""
    import numpy as np
    import reference as R  # tests/reference.py
    import SimpleITK as sitk

    from neurovfm.data import load_image

    pub = sitk.ReadImage(str(work / "out" / f"resampled_{volume_key(rel)}.nii"))
    a = sitk.GetArrayFromImage(pub)
    b = sitk.GetArrayFromImage(load_image(corpus / rel))
    if a.shape != b.shape:
        return f"resampled shapes {a.shape} vs {b.shape}", pub
    diff = a != b
    n = int(diff.sum())
    text = f"resampled {a.dtype}: {n} of {a.size} voxels ({100 * n / a.size:.2f} %) differ"
    if n:
        text += f", max |diff| {float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()):.3g}"
        if np.issubdtype(a.dtype, np.integer):
            v = sitk.GetArrayFromImage(R.ref_resample_float64(R.ref_read(corpus / rel)))
            near = np.abs(v - np.round(v)) <= 1e-6
            text += f", {int((diff & ~near).sum())} of them where SimpleITK's float64 value is not within 1e-6 of an integer"
        else:
            both = np.abs(a[diff]).max()
            text += f" (all where |value| <= {float(both):.3g}: summation-order noise)"
    if mode == "mri":
        pa, pb = np.percentile(a.astype(np.float64), 10), np.percentile(b.astype(np.float64), 10)
        text += f"; MRI background threshold (10th percentile) {pa:.4g} vs {pb:.4g}"
        if pa != pb and max(abs(pa), abs(pb)) < 1e-6:
            text += (
                " (inside that noise: the background is 0 in the scan, so `arr > p10` sorts background voxels "
                "by the sign and size of their noise)"
            )
    return text, pub


def check_metadata_and_cache(t: Table, work: Path, pub_dir: Path, pub_res: dict[str, Any], corpus: Path) -> Path:
    """Row group 1. Returns our dataset folder (built from the published metadata.json)."""
    import warnings

    import numpy as np
    import torch

    from neurovfm.data import prepare_for_inference
    from neurovfm.data.cache import CacheManager
    from neurovfm.data.metadata import DatasetMetadata

    pub_meta = json.loads((pub_dir / "metadata.json").read_text())["studies"]
    pub_images = {(s, im) for s, info in pub_meta.items() for im in info["images"]}
    modes = {s: m for s, (m, _) in STUDIES.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours_scan = DatasetMetadata.from_directory(pub_dir, modes)
    ours_images = {(s.name, im.name) for s in ours_scan for im in s.images}
    extra = sorted(f"{s}/{i}" for s, i in ours_images - pub_images)
    missing = sorted(f"{s}/{i}" for s, i in pub_images - ours_images)
    t.add(
        "metadata: `DatasetMetadata.from_directory` on the same raw/ "
        f"(published: {len(pub_meta)} studies, {len(pub_images)} images)",
        "equal"
        if not extra and not missing
        else f"differs (ours also: {', '.join(extra) or '-'}; published only: {', '.join(missing) or '-'})",
    )
    if extra:
        t.note(
            f"row {len(t.rows)}: the published `_scan_images` takes a folder as a DICOM series only when a file in it "
            "ends in .dcm/.dicom; ct/phantom_head_5mm's files (I10, I100, ...) have no extension, so the published "
            "metadata has no ct_head study (a study without images is dropped). neurovfm reads the files' DICOM "
            "headers (README: folders with any file name)."
        )

    ours_dir = work / "ours_ds"
    ours_dir.mkdir()
    make_raw(ours_dir, corpus)
    shutil.copy(pub_dir / "metadata.json", ours_dir / "metadata.json")
    meta = DatasetMetadata.from_file(ours_dir / "metadata.json")
    got = {(s.name, im.name): (s.mode, im.path) for s in meta for im in s.images}  # path: raw/<study>/<filename>
    want = {
        (s, im): (info["mode"], f"raw/{s}/{rec['filename']}")
        for s, info in pub_meta.items()
        for im, rec in info["images"].items()
    }
    t.add(
        f"metadata: our `DatasetMetadata.from_file` of the published metadata.json ({len(want)} images)",
        "equal" if got == want else f"differs ({sorted(set(got.items()) ^ set(want.items()))[:3]})",
    )

    t0 = time.perf_counter()
    summary = CacheManager(ours_dir).build_cache(num_workers=1, progress=False)
    build_s = time.perf_counter() - t0
    n_img = len(want)
    t.add(
        f"cache build from the published metadata.json ({n_img} images, 1 worker)",
        f"{len(summary.done)}/{n_img} built, {len(summary.failed)} failed"
        + (f" {summary.failed}" if summary.failed else ""),
        build_s,
        pub_res["build_s"],
    )

    cm = CacheManager(ours_dir)
    for study, info in pub_meta.items():
        mode = info["mode"]
        for image, rec in info["images"].items():
            keys = list(WINDOWS) if mode == "ct" else ["volume"]
            parts, diffs = [], []
            pub_bytes = []
            for k in keys:
                f = pub_dir / "processed" / study / (f"{image}_{k}.pt" if mode == "ct" else f"{image}.pt")
                p = torch.load(f, weights_only=False)["data"].numpy()
                pub_bytes.append(p)
                o, _side = cm.open_uint8(study, image, k)
                o = np.asarray(o)[0]
                if p.shape != o.shape:
                    parts.append(f"{k} shape {p.shape} vs {o.shape}")
                    diffs.append(True)
                    continue
                eq = float((p == o).mean())
                mx = int(np.abs(p.astype(np.int16) - o.astype(np.int16)).max())
                parts.append(f"{k} {100 * eq:.2f} %" + (f" (max {mx})" if mx else ""))
                diffs.append(eq < 1)
            vox = torch.load(pub_dir / "processed" / study / f"{image}_mask.pt", weights_only=False).numpy()
            d, h, w = vox.shape
            pub_flags = vox.reshape(d // 4, 4, h // 16, 16, w // 16, 16).max(axis=(1, 3, 5))
            flags, _ = cm.open_uint8(study, image, "mask")
            feq = float((pub_flags == np.asarray(flags)).mean())
            parts.append(f"token flags {100 * feq:.2f} %")
            diffs.append(feq < 1)
            result = ("equal" if not any(diffs) else "differs") + " (bytes equal: " + ", ".join(parts) + ")"
            t.add(f"cache bytes {study}/{image} ({mode})", result)
            if any(diffs):
                rel = STUDIES[study][1][[Path(p).name for p in STUDIES[study][1]].index(rec["filename"])]
                text, pub_img = resampling_note(rel, mode, corpus, work)
                arrs, fl, _view = prepare_for_inference(pub_img, mode, quantize=True)
                same_bytes = all(np.array_equal(np.asarray(x)[0], y) for x, y in zip(arrs, pub_bytes))
                same_flags = np.array_equal(np.asarray(fl), pub_flags.reshape(-1))
                t.note(
                    f"row {len(t.rows)} ({rel}): {text}. Our `prepare_for_inference(quantize=True)` of the published "
                    f"resampled image: bytes {'equal' if same_bytes else 'DIFFER'}, token flags "
                    f"{'equal' if same_flags else 'DIFFER'} to the published cache."
                )
    return ours_dir


def run_import(t: Table, pub_dir: Path, work: Path, threads: int) -> Path | None:
    """Row: `neurovfm cache import --trust-pickle` on a copy of the published cache."""
    imp = work / "imported_ds"
    shutil.copytree(pub_dir, imp, symlinks=True)
    import _common

    env = dict(os.environ, PYTHONPATH=str(_common.ROOT / "python"), NEUROVFM_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "neurovfm", "cache", "import", str(imp), "--trust-pickle", "-w", "1", "--no-progress"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    out = (p.stdout + p.stderr).strip()
    if p.returncode != 0 and ("invalid choice" in out or "No module named" in out):
        t.add("`neurovfm cache import --trust-pickle` (copy of the published cache)", "pending (no import command)")
        return None
    summary = next((ln for ln in out.splitlines() if ln.startswith("cache import")), out[-200:])
    t.add(
        "`neurovfm cache import --trust-pickle` (copy of the published cache)",
        ("ok" if p.returncode == 0 else f"FAILED (exit {p.returncode})") + f": {summary.split(',')[0]}",
        f"{dt:.2f} s (process)",
    )
    if p.returncode != 0:
        t.note(f"row {len(t.rows)}: {out[-600:]}")
        return None
    return imp


def check_items(t: Table, imp: Path | None, work: Path, labels: Path, pub_res: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows group 2; returns the published brain-window items (for the collators)."""
    import numpy as np
    import torch

    from neurovfm.datasets import ImageDataset

    pub_items = {w: torch.load(work / "out" / f"items_{w}.pt", weights_only=False) for w in WINDOWS}
    n = len(pub_items["brain"])
    if imp is None:
        t.add(f"ImageDataset items, {n} images x 3 windows (imported cache)", "pending (needs `neurovfm cache import`)")
        return pub_items["brain"]
    diffs: list[str] = []
    window_types = set()
    for wi, w in enumerate(WINDOWS):
        probs = [float(i == wi) for i in range(3)]
        ds = ImageDataset(
            imp, random_crop=False, augment=False, ct_window_probs=probs, study_labels=labels, fallback_to_raw=False
        )
        if len(ds) != n:
            diffs.append(f"{w}: {len(ds)} items vs {n}")
            continue
        for i in range(n):
            a = dict(pub_items[w][i])
            b = ds[i]
            if isinstance(a.get("window"), np.str_):  # np.random.choice's result
                window_types.add(f"{tname(a['window'])} vs {tname(b.get('window'))}")
                a["window"] = str(a["window"])
            b = {k: b[k] for k in b if k in a} | {k: "<missing>" for k in a if k not in b}
            diffs += [f"{w}[{i}] {m}" for m in compare(a, b)]
    extra = sorted(set(ds[0]) - set(pub_items["brain"][0]))
    t.add(
        f"ImageDataset items, {n} images x 3 windows, every published key (imported cache)",
        verdict(diffs) + (f"; `window` types {', '.join(sorted(window_types))}" if window_types else ""),
    )
    if window_types:
        t.note(
            f"row {len(t.rows)}: the published item's `window` is what `np.random.choice` returns, a numpy.str_ "
            "(a str subclass, equal as a string); ours is a str. Compared as strings. "
            f"Our items carry extra keys {extra} (not compared)."
        )
    # items/s
    ds = ImageDataset(imp, random_crop=False, augment=False, study_labels=labels, fallback_to_raw=False, seed=0)
    times = []
    for _ in range(len(pub_res["items"]["pass_s"])):
        t0 = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        times.append(time.perf_counter() - t0)
    ours_s = statistics.median(times) / len(ds)
    pub_s = statistics.median(pub_res["items"]["pass_s"]) / pub_res["items"]["n"]
    t.add(
        "ImageDataset item (cached, no crop/augment, default window draws): time per item",
        f"{1 / ours_s:.0f} vs {1 / pub_s:.0f} items/s (ours vs published)",
        ours_s,
        pub_s,
    )
    return pub_items["brain"]


def check_multiview(t: Table, pub_mod: Any, items: list[dict[str, Any]], repeats: int) -> None:
    import torch

    from neurovfm.datasets import MultiViewCollator

    for drop in (0.0, 0.3):
        for internal in (False, True):
            kw = dict(remove_background=True, patch_drop_rate=drop, apply_masks_internally=internal)
            ours, theirs = MultiViewCollator(**kw), pub_mod.MultiViewCollator(**kw)
            torch.manual_seed(7)
            a = theirs(items)
            torch.manual_seed(7)
            b = ours(items)
            med = median_interleaved(
                {"published": lambda: theirs(items), "ours": lambda: ours(items)}, repeats, lambda: torch.manual_seed(7)
            )
            t.add(
                f"MultiViewCollator, {len(items)} items, patch_drop_rate={drop}, apply_masks_internally={internal}",
                verdict(compare(a, b)),
                med["ours"],
                med["published"],
            )


def pretrain_mask_cfg(drop: float) -> dict[str, Any]:
    """The mask configuration the published DataModule builds for VisionPretrainingSystem."""
    import bench_masks

    return bench_masks.pretrain_cfg(drop_rate=drop)


def check_multiblock(t: Table, pub_mod: Any, items: list[dict[str, Any]], repeats: int, steps: int = 6) -> None:
    import torch

    from neurovfm.datasets import MultiBlockCollator

    batches = [items[k % len(items) :] + items[: k % len(items)] for k in range(steps)]
    for drop in (0.0, 0.3):
        cfg = pretrain_mask_cfg(drop)
        for internal in (False, True):
            ours = MultiBlockCollator([cfg], apply_masks_internally=internal)
            theirs = pub_mod.MultiBlockCollator([cfg], apply_masks_internally=internal)
            diffs: list[str] = []
            for step, batch in enumerate(batches):
                torch.manual_seed(1000 + step)
                a = theirs(batch)
                torch.manual_seed(1000 + step)
                b = ours(batch)
                for part, x, y in zip(("batch", "pred", "pred_init", "enc"), a, b):
                    diffs += [f"step {step}: {m}" for m in compare(x, y, part)]

            def block(coll: Any) -> Callable[[], None]:
                def run() -> None:
                    for step, batch in enumerate(batches):
                        torch.manual_seed(1000 + step)
                        coll(batch)

                return run

            med = median_interleaved(
                {
                    "published": block(pub_mod.MultiBlockCollator([cfg], apply_masks_internally=internal)),
                    "ours": block(MultiBlockCollator([cfg], apply_masks_internally=internal)),
                },
                repeats,
                lambda: None,
            )
            t.add(
                f"MultiBlockCollator (published pretraining masks), drop_rate={drop}, "
                f"apply_masks_internally={internal}: {steps} consecutive steps",
                verdict(diffs),
                med["ours"] / steps,
                med["published"] / steps,
            )
    t.note("MultiBlockCollator times are per step (batch of all the items).")


def check_preprocessor(t: Table, work: Path, corpus: Path, pub_res: dict[str, Any], repeats: int) -> None:
    import numpy as np
    import torch

    from neurovfm.data import prepare_for_inference, tokenize
    from neurovfm.pipelines import StudyPreprocessor

    for k, (label, rel, modality, remove_bg) in enumerate(PREPROCESSOR_CASES):
        pub = torch.load(work / "out" / f"study_{k}.pt", weights_only=False)
        pre = StudyPreprocessor(remove_background=remove_bg)
        path = str(corpus / rel)
        ours = pre.load_study(path, modality)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            pre.load_study(path, modality)
            times.append(time.perf_counter() - t0)
        diffs = compare(pub, ours, tol=1e-6)
        tokens = ""
        if pub["img"].shape == ours["img"].shape:
            tokens = f"; tokens max |diff| {float((pub['img'] - ours['img']).abs().max()):.3g}"
        elif pub["series_cu_seqlens"].shape == ours["series_cu_seqlens"].shape:
            tokens = (
                f"; tokens per series {pub['series_cu_seqlens'].diff().tolist()} (published) vs "
                f"{ours['series_cu_seqlens'].diff().tolist()} (ours)"
            )
        t.add(
            f"StudyPreprocessor.load_study: {label} ({modality})",
            verdict(diffs, 3) + tokens,
            statistics.median(times),
            statistics.median(pub_res["preprocessor_s"][k]),
        )
        if not diffs:
            continue
        # trace it: per series, our prepare_for_inference + tokenize of the published resampled images
        vols = sorted(Path(path).glob("*.nii*")) if Path(path).is_dir() else [Path(path)]
        cu = pub["series_cu_seqlens"].tolist()
        series = 0
        for v in vols:
            vrel = str(v.relative_to(corpus))
            text, pub_img = resampling_note(vrel, modality, corpus, work)
            arrs, flags, _view = prepare_for_inference(pub_img, modality)
            same = True
            for arr in arrs:
                tok = tokenize(arr)
                keep = np.asarray(flags) == 0 if remove_bg else slice(None)
                mine = torch.from_numpy(np.ascontiguousarray(tok.img[keep])).float()
                theirs = pub["img"][cu[series] : cu[series + 1]]
                same = same and mine.shape == theirs.shape and bool(torch.equal(mine, theirs))
                series += 1
            t.note(
                f"row {len(t.rows)} ({vrel}): {text}. Our `prepare_for_inference` + `tokenize` of the published "
                f"resampled image: tokens {'equal' if same else 'DIFFER'} to the published series."
            )


def check_datamodule(t: Table, work: Path, configs: list[Path], imp: Path | None) -> None:
    import torch
    from omegaconf import OmegaConf

    from neurovfm.datasets import ImageDataModule

    for k, ((name, mode_filter), cfg_path) in enumerate(zip(DATAMODULE_CASES, configs)):
        label = f"ImageDataModule `{name}.yaml`, mode_filter={mode_filter}: first train and val batches"
        if imp is None:
            t.add(label, "pending (needs `neurovfm cache import`)")
            continue
        pub = torch.load(work / "out" / f"datamodule_{k}.pt", weights_only=False)
        cfg = OmegaConf.load(cfg_path)
        cfg.data.data_dir = str(imp)
        dm = ImageDataModule(cfg)
        dm.setup("fit")
        ours = {}
        for split in ("train", "val"):
            loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
            seed_all(0)
            ours[split] = next(iter(loader))
        diffs = compare(pub, ours, values=False)
        result = "same structure" if not diffs else "structure " + verdict(diffs)
        if mode_filter == "mri":
            vd = compare(pub["val"], ours["val"], "val")
            result += "; val batch values " + verdict(vd)
        t.add(label, result)

        def part(b: Any) -> dict[str, Any]:
            return b[0] if isinstance(b, tuple) else b

        pl, ol = part(pub["val"])["label"], part(ours["val"])["label"]
        if isinstance(pl, torch.Tensor) and isinstance(ol, list) and all(v is None for v in ol):
            t.note(
                f"row {len(t.rows)}: no study_labels (pretraining): the published ImageDataset gives every item "
                f"label 0 (`label = 0` when a study has no label) and its MultiBlockCollator makes "
                f"{brief(pl)} of them; neurovfm's ImageDataset gives label None and its MultiBlockCollator keeps "
                f"them as a list ({brief(ol)}). Nothing else differs in structure"
                + (", nor in the val batch's values (masks included)." if mode_filter == "mri" else ".")
            )
        ps, os_ = part(pub["train"])["study"], part(ours["train"])["study"]
        if ps != os_:
            t.note(
                f"row {len(t.rows)}: first train batch studies {ps} (published) vs {os_} (ours): the shuffled "
                "study order comes from `torch.randperm` seeded `seed + epoch` in the published sampler, from "
                "`np.random.default_rng([seed, epoch])` in ours (and the train items' flips from torch's global "
                "generator there, from `(seed, epoch, index)` here): train batches are compared by structure only."
            )
        if k == 0:
            t.note(f"row {len(t.rows)}: the batch structure compared: `{structure(pub['train'])}`")


# --- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of each timing (default 5)")
    ap.add_argument("--threads", type=int, default=1, help="torch/SimpleITK/neurovfm threads, both sides (default 1)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR (created, must not exist) and keep it")
    ap.add_argument("--json", metavar="OUT", help="also write the rows and notes as JSON")
    ap.add_argument("--published-worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.published_worker:
        published_worker(args.published_worker)
        return 0

    import importlib.util

    import _common  # import paths (python/, tests/), the corpus

    t_start = time.perf_counter()
    corpus = _common.corpus_dir()
    missing_data = [p for _, (_, ps) in STUDIES.items() for p in ps if not (corpus / p).exists()]
    if missing_data:
        print(f"corpus files missing under {corpus}: {missing_data}; nothing compared")
        return 0
    if not Path(MIRROR).exists():
        print(f"no published NeuroVFM mirror at {MIRROR} ($NEUROVFM_PUBLISHED_REPO); nothing compared")
        return 0
    need = [m for m in PUBLISHED_NEEDS if importlib.util.find_spec(m) is None]
    if need:
        print(f"the published data code needs {need}: pip install {' '.join(need)}")
        return 1

    _common.set_threads(args.threads, torch_too=True)
    t = Table()
    with contextlib.ExitStack() as stack:
        if args.keep:
            work = Path(args.keep).resolve()
            work.mkdir(parents=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="side_by_side_")))
        export = make_export(work / "published")
        pub_dir = work / "published_ds"
        make_raw(pub_dir, corpus)
        labels = work / "labels.csv"
        labels.write_text("study,label\n" + "".join(f"{s},{v}\n" for s, v in LABELS.items()))
        mlabels = work / "mil_labels.csv"
        mlabels.write_text("study,label1,label2\n" + "".join(f"{s},{a},{b}\n" for s, (a, b) in MULTILABELS.items()))
        configs = write_configs(export, work, pub_dir, mlabels)
        (work / "out").mkdir()
        volumes = sorted(
            {p for s, (m, ps) in STUDIES.items() if s != "ct_head" for p in ps}
            | {
                str(v.relative_to(corpus))
                for _, rel, _, _ in PREPROCESSOR_CASES
                for v in ((corpus / rel).glob("*.nii*") if (corpus / rel).is_dir() else [corpus / rel])
            }
        )
        spec = {
            "export": str(export),
            "out": str(work / "out"),
            "data_dir": str(pub_dir),
            "corpus": str(corpus),
            "modes": {s: m for s, (m, _) in STUDIES.items()},
            "labels": str(labels),
            "volumes": volumes,
            "preprocessor": PREPROCESSOR_CASES,
            "configs": [str(c) for c in configs],
            "repeats": args.repeats,
            "threads": args.threads,
        }
        (work / "spec.json").write_text(json.dumps(spec))
        env = dict(os.environ, PYTHONPATH=str(export), NEUROVFM_NUM_THREADS=str(args.threads))
        log = work / "published.log"
        print(f"published side: running in a subprocess (log {log}) ...", file=sys.stderr)
        t0 = time.perf_counter()
        with open(log, "w") as f:
            rc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--published-worker", str(work / "spec.json")],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=work,
            ).returncode
        if rc != 0:
            print(log.read_text()[-3000:])
            print(f"the published side failed (exit {rc}); log above")
            return 1
        print(f"published side: {time.perf_counter() - t0:.1f} s; neurovfm side ...", file=sys.stderr)
        pub_res = json.loads((work / "out" / "published.json").read_text())

        check_metadata_and_cache(t, work, pub_dir, pub_res, corpus)
        imp = run_import(t, pub_dir, work, args.threads)
        items = check_items(t, imp, work, labels, pub_res)
        pub_mod = _common.published_module("neurovfm/datasets/collators.py", work)
        # collators and masks take milliseconds: 3x the repeats, for steadier medians
        check_multiview(t, pub_mod, items, 3 * args.repeats)
        check_multiblock(t, pub_mod, items, 3 * args.repeats)
        check_preprocessor(t, work, corpus, pub_res, args.repeats)
        check_datamodule(t, work, configs, imp)

    total = time.perf_counter() - t_start
    head = (
        f"neurovfm {_common.neurovfm.__version__} vs published NeuroVFM "
        f"({subprocess.run(['git', '-C', MIRROR, 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()}), "
        f"threads {args.threads}, {args.repeats} repeats, corpus {corpus}"
    )
    print(head + "\n")
    print(t.markdown())
    print(f"\ntotal {total:.1f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "header": head,
                    "rows": [dict(zip(("check", "result", "neurovfm", "published", "ratio"), r)) for r in t.rows],
                    "notes": t.notes,
                    "seconds": total,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
