"""`neurovfm cache import` and CacheManager.import_published: a cache built by the published
NeuroVFM code (GitHub MLNeurosurg/neurovfm) converted in place into this library's entries.

The fixtures are this module's own: small phantom scans in a dataset folder described
with DatasetMetadata, and the published files made here as the published
``CacheManager._process_image`` makes them (``torch.save`` of a dict per volume, the uint8
voxel background mask, the ``<image>_metadata.json`` sidecar), their bytes from the
literal reference pipeline (tests/reference.py: read, preprocess, ``ref_cache``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import reference as R
from conftest import corpus_dir, package_env
from itemdata import reference_item
from neurovfm import phantom
from neurovfm.cli import main
from neurovfm.data import CacheManager, DatasetMetadata, ImportSummary
from neurovfm.data.cache import entry, ptfile
from neurovfm.data.cache.entry import PIPELINE_VERSION
from neurovfm.data.preprocess import CT_WINDOW_NAMES
from neurovfm.data.metadata import ImageRecord
from neurovfm.data.cache.published import token_flags

torch = pytest.importorskip("torch")

# study -> (mode, raw file name, the phantom)
SCANS = {
    "ct1": ("ct", "head.nii.gz", lambda: phantom.make_ct_phantom(shape=(64, 64, 24), spacing=(3.0, 3.0, 5.0))),
    "mr1": ("mri", "t1.nii.gz", lambda: phantom.make_mri_phantom(shape=(32, 64, 64), spacing=(4.0, 3.0, 3.0))),
    # equal spacings: the published view is a Python int (an int64 otherwise)
    "mr_iso": ("mri", "iso.nii.gz", lambda: phantom.make_mri_phantom(shape=(48, 48, 48), spacing=(2.0, 2.0, 2.0))),
}
KEYS = ["ct1/head", "mr1/t1", "mr_iso/iso"]


# --- the published cache, made as the published code makes it ------------------------------------


def publish(root: Path, study: str, image: str, mode: str, scan: Path) -> dict:
    """Write the published files of one image; returns what its entry must hold:
    {"volumes": {key: uint8 [1, D, H, W]}, "flags": uint8 token grid, "view", "spacing"}."""
    img = R.ref_preprocess(R.ref_read(scan))
    volumes, token_mask, view = R.ref_cache(img, mode)
    *_, foreground = R.ref_prepare(img, mode, return_foreground=True)
    spacing = img.GetSpacing()
    # The published prepare_for_inference: z_dim = np.argmax(spacing) unless all are equal.
    z_dim = 2 if len(set(spacing)) == 1 else np.argmax(spacing)
    pub_view = 2 - z_dim
    assert pub_view == view
    folder = root / "processed" / study
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(CT_WINDOW_NAMES) if mode == "ct" else ["volume"]
    for key, u8 in zip(keys, volumes):
        arr = u8[0]  # [D, H, W], strided as the reference left it (the published code saves it so)
        payload = {
            "data": torch.from_numpy(arr),
            "view": pub_view,
            "shape": arr.shape,
            "spacing": tuple(spacing),
            "mode": mode,
            "window": key if mode == "ct" else None,
        }
        torch.save(payload, folder / (f"{image}_{key}.pt" if mode == "ct" else f"{image}.pt"))
    background = (~foreground).astype(np.uint8)
    torch.save(torch.from_numpy(background), folder / f"{image}_mask.pt")
    shape = list(volumes[0].shape[1:])
    side = {
        "source_file": f"raw/{study}/{scan.name}",
        "mode": mode,
        "shape": shape,
        "spacing": list(spacing),
        "view": int(view),
        "processed_date": "2025-01-01T12:00:00",
        "version": "1.0",
    }
    if mode == "ct":
        side["windows"] = list(CT_WINDOW_NAMES)
    (folder / f"{image}_metadata.json").write_text(json.dumps(side, indent=2))
    # The test's own reduction of the voxel mask: a token is background when any voxel is.
    d, h, w = background.shape
    flags = background.reshape(d // 4, 4, h // 16, 16, w // 16, 16).max(axis=(1, 3, 5)).astype(np.uint8)
    np.testing.assert_array_equal(flags.reshape(-1), token_mask)  # the reference agrees
    return {
        "volumes": {k: np.ascontiguousarray(v) for k, v in zip(keys, volumes)},
        "flags": flags,
        "view": int(view),
        "spacing": list(spacing),
        "mode": mode,
    }


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """(dataset folder with raw/, metadata.json and the published processed/, expected entries)."""
    root = tmp_path_factory.mktemp("published_ds")
    expected = {}
    for study, (_mode, name, make) in SCANS.items():
        (root / "raw" / study).mkdir(parents=True)
        sitk.WriteImage(make(), str(root / "raw" / study / name), useCompression=True)
    DatasetMetadata.from_directory(root, {s: m for s, (m, _, _) in SCANS.items()}).save()
    for study, (mode, name, _) in SCANS.items():
        image = name.replace(".nii.gz", "")
        expected[f"{study}/{image}"] = publish(root, study, image, mode, root / "raw" / study / name)
    return root, expected


@pytest.fixture
def ds(pristine, tmp_path):
    """A private copy of the published dataset, and the expected entries."""
    root, expected = pristine
    dst = tmp_path / "ds"
    shutil.copytree(root, dst)
    return dst, expected


def _files(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def check_entry(root: Path, key: str, exp: dict) -> dict:
    """The entry of ``key`` holds exactly the expected bytes; returns its sidecar."""
    study, image = key.split("/")
    folder = root / "processed" / study
    side = json.loads((folder / f"{image}.json").read_text())
    assert side["version"] == PIPELINE_VERSION and side["mode"] == exp["mode"]
    assert side["view"] == exp["view"] and side["spacing"] == exp["spacing"]
    names = entry.file_names(image, exp["mode"])
    for k, vol in exp["volumes"].items():
        got = ptfile.open_tensor(folder / names[k], verify=True)
        assert got.dtype == np.uint8 and got.shape == vol.shape
        assert got.tobytes() == vol.tobytes(), f"{key} {k}: bytes differ"
        assert side["shape"] == list(vol.shape)
        # torch reads it safely too
        t = torch.load(folder / names[k], weights_only=True)
        assert t.dtype == torch.uint8 and tuple(t.shape) == vol.shape
    flags = ptfile.open_tensor(folder / names["mask"], verify=True)
    assert flags.dtype == np.uint8 and flags.tobytes() == exp["flags"].tobytes()
    assert flags.shape == entry.token_grid(side["shape"])
    assert side["imported"]["from"] == "the published NeuroVFM cache"
    assert side["imported"]["published_sidecar"]["processed_date"] == "2025-01-01T12:00:00"
    assert not (folder / f"{image}_metadata.json").exists()
    leftovers = [p for p in os.listdir(folder) if p.startswith(f".{image}.") and p != f".{image}.lock"]
    assert not leftovers  # no temporary file, no second name of a published file
    return side


# --- the import -------------------------------------------------------------------------------------


def test_import_converts_in_place_and_the_cache_serves_it(ds):
    root, expected = ds
    cm = CacheManager(root)
    assert cm.verify() == {k: "missing" for k in KEYS}
    summary = cm.import_published(num_workers=2, progress=False)
    assert isinstance(summary, ImportSummary)
    assert sorted(summary.imported) == KEYS and not summary.failed and not summary.missing
    assert summary.trusted == []  # int64 views load with weights_only=True
    assert "3 imported, 0 already cached, 0 missing" in str(summary)
    for key, exp in expected.items():
        check_entry(root, key, exp)
    assert cm.verify() == {}
    stats = cm.get_cache_stats()
    assert stats["cached_images"] == 3 and stats["failed_images"] == 0
    flags = {
        f"{s['name']}/{im['name']}": im["processed"]
        for s in json.loads((root / "metadata.json").read_text())["studies"]
        for im in s["images"]
    }
    assert flags == {k: True for k in KEYS}

    # CacheManager.load_image: u / 255 and the token flags.
    ct = cm.load_image("ct1", "head")
    assert [d["window"] for d in ct] == list(CT_WINDOW_NAMES)
    for d in ct:
        vol = expected["ct1/head"]["volumes"][d["window"]]
        np.testing.assert_array_equal(d["data"].numpy(), vol.astype(np.float32) / np.float32(255))
        np.testing.assert_array_equal(d["mask"].numpy(), expected["ct1/head"]["flags"])
        assert d["view"] == expected["ct1/head"]["view"]
    mr = cm.load_image("mr1", "t1", as_numpy=True)
    np.testing.assert_array_equal(mr["data"], expected["mr1/t1"]["volumes"]["volume"] / np.float32(255))

    # ImageDataset serves the entries from the cache.
    from neurovfm.datasets import ImageDataset

    dset = ImageDataset(root, fallback_to_raw=False, ct_window_probs=(0, 0, 1), seed=0)
    assert sorted(it["path"] for it in dset) == KEYS
    for item in dset:
        exp = expected[item["path"]]
        vol = exp["volumes"]["bone" if exp["mode"] == "ct" else "volume"]
        ref = reference_item(vol, exp["flags"])
        np.testing.assert_array_equal(item["img"].numpy(), ref["img"])
        np.testing.assert_array_equal(item["filtered"].numpy(), ref["filtered"])
        assert item["geometry"] is None  # a published cache records no origin or direction

    # A second import finds nothing new and changes nothing.
    before = {s: _files(root / "processed" / s) for s in SCANS}
    again = cm.import_published(num_workers=1, progress=False)
    assert sorted(again.skipped) == KEYS and not again.imported and not again.failed
    assert {s: _files(root / "processed" / s) for s in SCANS} == before


def test_cli_import_and_rerun(ds, capsys):
    root, expected = ds
    assert main(["cache", "import", str(root), "--no-progress", "-w", "1"]) == 0
    out = capsys.readouterr().out
    assert "cache import: 3 imported, 0 already cached, 0 missing (no published files), 0 failed" in out
    for key, exp in expected.items():
        check_entry(root, key, exp)
    assert main(["cache", "import", str(root), "--no-progress"]) == 0
    assert "0 imported, 3 already cached" in capsys.readouterr().out
    assert main(["cache", "verify", str(root)]) == 0


def test_cli_progress_bar_and_exit_code_in_a_child_process(ds):
    """A failed image: exit code 1, the summary (after the bar) on stderr names it."""
    root, _ = ds
    (root / "processed" / "mr1" / "t1_mask.pt").unlink()
    res = subprocess.run(
        [sys.executable, "-m", "neurovfm", "cache", "import", str(root), "--study", "mr1", "--study", "ct1"],
        env=package_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 1, res.stderr
    assert "neurovfm import" in res.stderr  # the bar
    assert "1 imported, 0 already cached, 0 missing (no published files), 1 failed" in res.stderr
    assert "failed mr1/t1: CacheEntryError:" in res.stderr and "no t1_mask.pt" in res.stderr


def test_study_and_shard_select_images(ds):
    root, expected = ds
    cm = CacheManager(root)
    s = cm.import_published(study_names=["mr1"], progress=False)
    assert s.imported == ["mr1/t1"]
    parts = [cm.import_published(shard=(i, 2), num_workers=1, progress=False) for i in range(2)]
    assert sorted(parts[0].imported + parts[1].imported) == ["ct1/head", "mr_iso/iso"]
    assert not set(parts[0].imported) & set(parts[1].imported)
    for key, exp in expected.items():
        check_entry(root, key, exp)


def test_images_without_published_files_are_missing_not_failed(ds, capsys):
    root, expected = ds
    folder = root / "processed" / "mr_iso"
    for p in folder.iterdir():
        p.unlink()
    assert main(["cache", "import", str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 imported, 0 already cached, 1 missing (no published files), 0 failed" in out
    assert "missing mr_iso/iso: no published files" in out
    shutil.rmtree(root / "processed" / "ct1")  # no study folder at all: missing too
    summary = CacheManager(root).import_published(progress=False)
    assert sorted(summary.missing) == ["ct1/head", "mr_iso/iso"] and summary.skipped == ["mr1/t1"]
    assert not (root / "processed" / "ct1").exists()  # nothing created for it
    check_entry(root, "mr1/t1", expected["mr1/t1"])


def test_an_entry_built_by_cache_build_is_skipped(ds):
    root, expected = ds
    cm = CacheManager(root)
    assert cm.build_cache(study_names=["mr_iso"], num_workers=1, progress=False).done == ["mr_iso/iso"]
    built = _files(root / "processed" / "mr_iso")
    summary = cm.import_published(progress=False)
    assert summary.skipped == ["mr_iso/iso"] and sorted(summary.imported) == ["ct1/head", "mr1/t1"]
    assert "2 imported, 1 already cached" in str(summary)
    assert _files(root / "processed" / "mr_iso") == built


def test_help_and_no_torch(ds, capsys, monkeypatch):
    assert main(["cache", "import", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: neurovfm cache import") and "examples:" in out and "--trust-pickle" in out
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    root, _ = ds
    assert main(["cache", "import", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs PyTorch" in err[0] and "neurovfm[torch]" in err[0]
    with pytest.raises(ImportError, match="needs PyTorch"):
        CacheManager(root).import_published()


# --- refusals: the image is failed with the file and the reason, nothing is written ------------


def _load(path: Path):
    return torch.load(path, weights_only=False)


def _edit_dict(path: Path, **changes) -> None:
    d = _load(path)
    d.update(changes)
    torch.save(d, path)


def _mri_data(root: Path) -> Path:
    return root / "processed" / "mr1" / "t1.pt"


def _mri_mask(root: Path) -> Path:
    return root / "processed" / "mr1" / "t1_mask.pt"


def _ct(root: Path, window: str) -> Path:
    return root / "processed" / "ct1" / f"head_{window}.pt"


def _crop_mri(root: Path) -> None:
    """H cut by 8: not whole tokens (the mask and the declared shape follow)."""
    d = _load(_mri_data(root))
    data = d["data"][:, 8:, :].contiguous()
    _edit_dict(_mri_data(root), data=data, shape=tuple(data.shape))
    torch.save(_load(_mri_mask(root))[:, 8:, :].contiguous(), _mri_mask(root))


def _truncate(path: Path) -> None:
    b = path.read_bytes()
    path.write_bytes(b[: len(b) // 2])


def _flip_a_data_byte(path: Path) -> None:
    b = bytearray(path.read_bytes())
    b[len(b) // 2] ^= 0xFF
    path.write_bytes(bytes(b))


def _edit_json(path: Path, edit) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _set_mask_voxel(root: Path, value: int) -> None:
    m = _load(_mri_mask(root)).clone()
    m[0, 0, 0] = value
    torch.save(m, _mri_mask(root))


CASES = {
    # a dict holding an object that torch.load(weights_only=True) refuses
    "untrusted": (
        "mr1/t1",
        lambda r: _edit_dict(_mri_data(r), when=datetime.datetime(2024, 1, 1)),
        r"t1\.pt: holds Python objects that a safe load .* refuses.*datetime.*; "
        r"pass --trust-pickle .* only for a cache you built yourself",
    ),
    "not a dict": (
        "mr1/t1",
        lambda r: torch.save(_load(_mri_data(r))["data"][None].contiguous(), _mri_data(r)),
        r"t1\.pt: holds a \(1, \d+, \d+, \d+\) tensor, not the published dict",
    ),
    "4-D data": (
        "mr1/t1",
        lambda r: _edit_dict(_mri_data(r), data=_load(_mri_data(r))["data"][None]),
        r"t1\.pt: 'data' is a torch\.uint8 \(1, \d+, \d+, \d+\) tensor, expected a uint8 \[D, H, W\] tensor",
    ),
    "float data": (
        "mr1/t1",
        lambda r: _edit_dict(_mri_data(r), data=_load(_mri_data(r))["data"].float()),
        r"t1\.pt: 'data' is a torch\.float32 .* expected a uint8 \[D, H, W\]",
    ),
    "not whole tokens": ("mr1/t1", _crop_mri, r"t1\.pt: 'data' is \[\d+, \d+, \d+\], not whole 4x16x16 tokens"),
    "declared shape": (
        "mr1/t1",
        lambda r: _edit_dict(_mri_data(r), shape=(4, 16, 16)),
        r"t1\.pt: 'shape' is \(4, 16, 16\), 'data' is",
    ),
    "missing window": (
        "ct1/head",
        lambda r: _ct(r, "blood").unlink(),
        r"the published entry of 'head' is incomplete: no head_blood\.pt",
    ),
    "missing mask": ("ct1/head", lambda r: (r / "processed/ct1/head_mask.pt").unlink(), r"no head_mask\.pt"),
    "window shapes differ": (
        "ct1/head",
        lambda r: _edit_dict(
            _ct(r, "blood"),
            data=_load(_ct(r, "blood"))["data"][:-4].contiguous(),
            shape=tuple(_load(_ct(r, "blood"))["data"][:-4].shape),
        ),
        r"head_blood\.pt: the windows disagree: head_blood\.pt is \[\d+, \d+, \d+\]",
    ),
    "mode mismatch": (
        "mr1/t1",
        lambda r: _edit_dict(_mri_data(r), mode="ct"),
        r"t1\.pt: its mode is 'ct', metadata\.json says the study is 'mri'",
    ),
    "window name": (
        "ct1/head",
        lambda r: _edit_dict(_ct(r, "brain"), window="bone"),
        r"head_brain\.pt: its window is 'bone', expected 'brain'",
    ),
    "bad view": ("mr1/t1", lambda r: _edit_dict(_mri_data(r), view=3), r"'view' is 3, expected 0, 1 or 2"),
    "mask value 2": ("mr1/t1", lambda r: _set_mask_voxel(r, 2), r"t1_mask\.pt: mask values must be 0 or 1"),
    "mask shape": (
        "mr1/t1",
        lambda r: torch.save(_load(_mri_mask(r))[:-4].contiguous(), _mri_mask(r)),
        r"t1_mask\.pt: the mask is \[\d+, \d+, \d+\], the volume \[\d+, \d+, \d+\]",
    ),
    "mask dtype": (
        "mr1/t1",
        lambda r: torch.save(_load(_mri_mask(r)).float(), _mri_mask(r)),
        r"t1_mask\.pt: a torch\.float32 tensor, expected uint8",
    ),
    "mask inverted (MRI)": (
        "mr1/t1",
        lambda r: torch.save(1 - _load(_mri_mask(r)), _mri_mask(r)),
        r"t1_mask\.pt: .*background",
    ),
    "mask inverted (CT)": (
        "ct1/head",
        lambda r: torch.save(1 - _load(r / "processed/ct1/head_mask.pt"), r / "processed/ct1/head_mask.pt"),
        r"head_mask\.pt: the mask disagrees with the brain window",
    ),
    "mask all foreground": (
        "mr1/t1",
        lambda r: torch.save(0 * _load(_mri_mask(r)), _mri_mask(r)),
        r"t1_mask\.pt: 0 of \d+ voxels are background",
    ),
    "truncated": ("ct1/head", lambda r: _truncate(_ct(r, "bone")), r"head_bone\.pt: not a readable torch file"),
    "truncated mask": ("mr1/t1", lambda r: _truncate(_mri_mask(r)), r"t1_mask\.pt: not a readable torch file"),
    "flipped byte": ("mr1/t1", lambda r: _flip_a_data_byte(_mri_data(r)), r"t1\.pt: member .* fails its CRC-32"),
    "garbage": (
        "mr1/t1",
        lambda r: _mri_data(r).write_bytes(b"not a torch file at all"),
        r"t1\.pt: not a readable torch file",
    ),
    "published sidecar disagrees": (
        "mr1/t1",
        lambda r: _edit_json(r / "processed/mr1/t1_metadata.json", lambda d: {**d, "view": (d["view"] + 1) % 3}),
        r"t1_metadata\.json: the published sidecar disagrees: view \d, the files say \d",
    ),
    "published sidecar of another scan": (
        "mr1/t1",
        lambda r: _edit_json(r / "processed/mr1/t1_metadata.json", lambda d: {**d, "source_file": "raw/x/y"}),
        r"source_file 'raw/x/y', metadata\.json names 'raw/mr1/t1\.nii\.gz'",
    ),
    "published sidecar unreadable": (
        "mr1/t1",
        lambda r: (r / "processed/mr1/t1_metadata.json").write_text("{nope"),
        r"t1_metadata\.json: unreadable published sidecar",
    ),
    "scan gone": ("mr1/t1", lambda r: (r / "raw/mr1/t1.nii.gz").unlink(), r"t1\.nii\.gz: the scan is not there"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_a_bad_published_image_fails_alone_and_is_left_as_it_was(ds, case):
    root, expected = ds
    key, break_it, reason = CASES[case]
    study, image = key.split("/")
    break_it(root)
    folder = root / "processed" / study
    before = _files(folder)
    summary = CacheManager(root).import_published(num_workers=2, progress=False)
    assert list(summary.failed) == [key], summary
    assert re.search(reason, summary.failed[key]), summary.failed[key]
    assert sorted(summary.imported) == sorted(k for k in KEYS if k != key)
    for k in summary.imported:
        check_entry(root, k, expected[k])
    # nothing of the failed image was written or removed, except the failure record
    after = _files(folder)
    after.pop(f".{image}.lock")
    record = after.pop(f"{image}.failed.json")
    assert after == before
    assert json.loads((folder / f"{image}.failed.json").read_text())["reason"] == summary.failed[key]
    assert record and not (folder / f"{image}.json").exists()
    assert not [p for p in os.listdir(folder) if p.startswith(f".{image}.") and p != f".{image}.lock"]
    assert CacheManager(root).load_image(study, image) is None
    flags = {
        f"{s['name']}/{im['name']}": im["processed"]
        for s in json.loads((root / "metadata.json").read_text())["studies"]
        for im in s["images"]
    }
    assert flags[key] is False


def test_cli_reports_a_refusal_and_exits_1(ds, capsys):
    root, _ = ds
    _edit_dict(_mri_data(root), when=datetime.datetime(2024, 1, 1))
    assert main(["cache", "import", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "2 imported" in out and "1 failed" in out
    assert "failed mr1/t1: PtFormatError: " in out and "--trust-pickle" in out


def test_trust_pickle_loads_what_a_safe_load_refuses(ds, capsys):
    root, expected = ds
    _edit_dict(_mri_data(root), when=datetime.datetime(2024, 1, 1))
    assert main(["cache", "import", str(root), "--no-progress", "--trust-pickle"]) == 0
    out = capsys.readouterr().out
    assert "3 imported (1 of them loaded with --trust-pickle)" in out
    side = check_entry(root, "mr1/t1", expected["mr1/t1"])
    assert side["imported"]["trusted_pickle"] is True
    assert check_entry(root, "ct1/head", expected["ct1/head"])["imported"]["trusted_pickle"] is False


def test_a_stale_entry_of_this_library_is_not_taken_for_a_published_one(ds):
    """After a complete import the scan changes: the entry is stale, its files are this
    library's tensors; the import says so and points to cache build."""
    root, _ = ds
    cm = CacheManager(root)
    assert sorted(cm.import_published(progress=False).imported) == KEYS
    scan = root / "raw" / "mr1" / "t1.nii.gz"
    os.utime(scan, ns=(scan.stat().st_atime_ns, scan.stat().st_mtime_ns + 10**9))
    summary = CacheManager(root).import_published(progress=False)
    assert list(summary.failed) == ["mr1/t1"]
    assert "not the published dict" in summary.failed["mr1/t1"] and "cache build" in summary.failed["mr1/t1"]
    assert sorted(summary.skipped) == ["ct1/head", "mr_iso/iso"]
    assert CacheManager(root).build_cache(progress=False, num_workers=1).done == ["mr1/t1"]


# --- interruptions ------------------------------------------------------------------------------


def test_a_failure_between_the_renames_puts_the_published_files_back(ds, monkeypatch):
    root, expected = ds
    folder = root / "processed" / "ct1"
    before = _files(folder)
    real = os.replace

    failed = []

    def failing(src, dst, *a, **k):
        if str(dst).endswith("head_blood.pt") and not failed:  # the second rename of the entry
            failed.append(dst)
            raise OSError(28, "No space left on device")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(entry.os, "replace", failing)
    summary = CacheManager(root).import_published(study_names=["ct1"], num_workers=1, progress=False)
    monkeypatch.undo()
    assert list(summary.failed) == ["ct1/head"] and "No space left" in summary.failed["ct1/head"]
    after = _files(folder)
    after.pop("head.failed.json")
    after.pop(".head.lock")
    assert after == before  # head_brain.pt was replaced, then put back
    summary = CacheManager(root).import_published(progress=False)
    assert sorted(summary.imported) == KEYS
    check_entry(root, "ct1/head", expected["ct1/head"])


def test_an_import_killed_between_the_renames_is_undone_by_the_next(ds):
    """The state a kill leaves: second names of the published files, some names already
    holding the new files, no sidecar."""
    root, expected = ds
    folder = root / "processed" / "ct1"
    for key in (*CT_WINDOW_NAMES, "mask"):
        os.link(folder / f"head_{key}.pt", folder / f".head.published-{key}.pt")
    # the new file is written under another name and renamed (entry.write_entry), so the second
    # name keeps the published bytes
    ptfile.write_tensor(folder / ".head.new.tmp", expected["ct1/head"]["volumes"]["brain"])
    os.replace(folder / ".head.new.tmp", folder / "head_brain.pt")
    summary = CacheManager(root).import_published(progress=False)
    assert sorted(summary.imported) == KEYS, summary
    check_entry(root, "ct1/head", expected["ct1/head"])


def test_leftovers_of_an_import_killed_after_its_sidecar_are_removed(ds):
    root, expected = ds
    folder = root / "processed" / "ct1"
    published_side = (folder / "head_metadata.json").read_text()
    assert sorted(CacheManager(root).import_published(progress=False).imported) == KEYS
    (folder / "head_metadata.json").write_text(published_side)
    os.link(folder / "head_bone.pt", folder / ".head.published-bone.pt")
    summary = CacheManager(root).import_published(progress=False)
    assert sorted(summary.skipped) == KEYS
    check_entry(root, "ct1/head", expected["ct1/head"])


def test_an_image_named_like_a_published_sidecar_keeps_its_sidecar(ds):
    """``<image>_metadata.json`` is also the sidecar name of an image ``<image>_metadata``:
    then it is neither read as published nor removed."""
    root, expected = ds
    meta = DatasetMetadata.from_file(root / "metadata.json")
    study = meta.get_study("mr1")
    study.images.append(ImageRecord("t1_metadata", "raw/mr1/t1.nii.gz", "nifti"))
    meta.save()
    (root / "processed" / "mr1" / "t1_metadata.json").write_text("{}")  # not a published sidecar
    summary = CacheManager(root).import_published(progress=False)
    assert "mr1/t1" in summary.imported and summary.missing == ["mr1/t1_metadata"]
    assert (root / "processed" / "mr1" / "t1_metadata.json").read_text() == "{}"


def test_token_flags_is_any_background_voxel():
    rng = np.random.default_rng(0)
    bg = rng.random((8, 32, 48)) < 0.002
    flags = token_flags(bg)
    assert flags.dtype == np.uint8 and flags.shape == (2, 2, 3)
    for d, h, w in np.ndindex(*flags.shape):
        assert flags[d, h, w] == bg[d * 4 : d * 4 + 4, h * 16 : h * 16 + 16, w * 16 : w * 16 + 16].any()


# --- the real corpus ------------------------------------------------------------------------------


@pytest.mark.skipif(corpus_dir() is None, reason="real-scan corpus not available: set NEUROVFM_TEST_DATA")
def test_real_scans_published_then_imported(tmp_path, capsys):
    """Two corpus scans published by the reference pipeline, imported by the CLI: the
    entries hold the published bytes, verify passes, and their geometry is what this
    library's own build gives."""
    corpus = corpus_dir()
    assert corpus is not None
    studies = {"ct_body": ("ct", "ct/body_small.nii.gz"), "mr_t1": ("mri", "mr/stroke/T1.nii.gz")}
    for study, (_mode, rel) in studies.items():
        (tmp_path / "raw" / study).mkdir(parents=True)
        os.symlink(corpus / rel, tmp_path / "raw" / study / os.path.basename(rel))
    DatasetMetadata.from_directory(tmp_path, {s: m for s, (m, _) in studies.items()}).save()
    expected = {}
    for study, (mode, rel) in studies.items():
        image = os.path.basename(rel).replace(".nii.gz", "")
        expected[f"{study}/{image}"] = publish(tmp_path, study, image, mode, corpus / rel)
    assert main(["cache", "import", str(tmp_path), "--no-progress"]) == 0
    assert "2 imported" in capsys.readouterr().out
    assert main(["cache", "verify", str(tmp_path)]) == 0
    for key, exp in expected.items():
        side = check_entry(tmp_path, key, exp)
        study, image = key.split("/")
        ours = entry.encode_scan(str(tmp_path / "raw" / study / os.path.basename(studies[study][1])), exp["mode"])
        assert ours.view == side["view"] and list(ours.spacing) == side["spacing"]
        assert all(v.shape == tuple(side["shape"]) for v in ours.volumes.values())
