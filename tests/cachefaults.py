"""Small synthetic datasets and checks shared by the cache fault-injection tests.

Importable both by pytest and by the child scripts those tests run (under
``unshare`` or killed with SIGKILL), so it needs nothing but neurovfm and NumPy.
"""

from __future__ import annotations

import json
import os

import numpy as np
import SimpleITK as sitk

from neurovfm.data import load_image, prepare_for_inference
from neurovfm.data.cache import CacheManager
from neurovfm.data.metadata import DatasetMetadata


def make_dataset(root, n_ct: int = 6, n_mri: int = 6, size=(64, 64, 16), seed: int = 0) -> dict:
    """``root/raw/<study>/<image>.nii.gz`` small CT (int16, 1x1x4 mm) and MRI (float32)
    volumes, ``metadata.json`` saved; returns {study: mode}."""
    rng = np.random.default_rng(seed)
    modes = {}
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in size[::-1]), indexing="ij")
    head = (x**2 + y**2 + z**2) < 0.8
    for i in range(n_ct + n_mri):
        mode = "ct" if i < n_ct else "mri"
        study = f"{mode}{i:02d}"
        folder = os.path.join(root, "raw", study)
        os.makedirs(folder, exist_ok=True)
        if mode == "ct":
            arr = np.where(head, rng.normal(40, 30, head.shape), -1000).astype(np.int16)
        else:
            arr = (head * rng.gamma(4.0, 50.0, head.shape)).astype(np.float32)
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.0, 1.0, 4.0))
        sitk.WriteImage(img, os.path.join(folder, f"scan{i}.nii.gz"))
        modes[study] = mode
    DatasetMetadata.from_directory(root, modes).save()
    return modes


def expected_u8(root) -> dict:
    """{(study, image, key): uint8 array} straight from the pipeline, no cache."""
    out = {}
    meta = DatasetMetadata.from_file(os.path.join(root, "metadata.json"))
    for study in meta:
        for rec in study.images:
            arrs, mask, _ = prepare_for_inference(load_image(os.path.join(root, rec.path)), study.mode, quantize=True)
            keys = ["brain", "blood", "bone"] if study.mode == "ct" else ["volume"]
            for key, a in zip(keys, arrs):
                out[(study.name, rec.name, key)] = np.asarray(a)
            out[(study.name, rec.name, "mask")] = np.asarray(mask)
    return out


def served(cm: CacheManager, study: str, image: str):
    """What ``load_image`` serves as uint8-exact arrays {key: array}, or None."""
    got = cm.load_image(study, image, as_numpy=True)
    if got is None:
        return None
    items = got if isinstance(got, list) else [got]
    out = {}
    for d in items:
        key = d["window"] or "volume"
        out[key] = np.rint(np.asarray(d["data"], dtype=np.float64) * 255).astype(np.uint8)
        out["mask"] = np.asarray(d["mask"]).reshape(-1)
    return out


def check_never_corrupt(root, expected: dict) -> set:
    """Every entry ``load_image`` serves equals the pipeline's numbers, and every entry
    ``entry_status(verify=True)`` calls valid is served; returns the set of valid entries."""
    cm = CacheManager(root)
    valid = set()
    for study in cm.metadata:
        for rec in study.images:
            got = served(cm, study.name, rec.name)
            status = cm.entry_status(study.name, rec.name, verify=True)
            if status == "valid":
                assert got is not None, f"{study.name}/{rec.name}: valid but not served"
                valid.add(f"{study.name}/{rec.name}")
            if got is not None:
                for key, arr in got.items():
                    want = expected[(study.name, rec.name, key)].reshape(arr.shape)
                    assert np.array_equal(arr, want), f"{study.name}/{rec.name} {key}: served wrong numbers"
    with open(os.path.join(root, "metadata.json")) as f:
        json.load(f)  # never torn
    return valid


def leftovers(root) -> list:
    return sorted(f for _r, _d, fs in os.walk(os.path.join(root, "processed")) for f in fs if f.endswith(".tmp"))
