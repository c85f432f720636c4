"""DatasetMetadata and CacheManager on a dataset made of real corpus scans (their phantom
stand-ins without the corpus: conftest.scan_dir)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import reference as R
from conftest import copy_series, package_env
from neurovfm.data import load_image
from neurovfm.data.cache import PIPELINE_VERSION, CacheManager, shard_from_env
from neurovfm.data.metadata import DatasetMetadata, load_mode_mapping

torch = pytest.importorskip("torch")

# study -> (mode, [corpus paths]) ; kept small so the suite stays quick.
STUDIES = {
    "ct_head": ("ct", ["ct/phantom_head_5mm"]),
    "ct_body": ("ct", ["ct/body_small.nii.gz"]),
    "mr_stroke": ("mri", ["mr/stroke/T1.nii.gz", "mr/stroke/FLAIR.nii.gz"]),
    "mr_thick": ("mri", ["mr/sag_t1_2d_thick"]),
    "bad_4d": ("mri", ["edge/nifti/example4d.nii.gz"]),
    # a study whose only series says ImageType DERIVED\SECONDARY (as conversion and
    # anonymisation tools write): a copy of a real series, made by _make_dataset
    "mr_derived": ("mri", ["mr/sag_t1_2d_thick"]),
}
#: Studies whose series _make_dataset copies as derived/secondary instead of linking.
DERIVED_STUDIES = {"mr_derived"}


def _make_dataset(root, corpus, studies=STUDIES, extra_unmapped=True):
    raw = root / "raw"
    for study, (_mode, paths) in studies.items():
        d = raw / study
        d.mkdir(parents=True)
        for p in paths:
            src = corpus / p
            if study in DERIVED_STUDIES:
                copy_series(src, d / os.path.basename(p), 7, "t1 derived", ImageType=["DERIVED", "SECONDARY"])
            else:
                os.symlink(src, d / os.path.basename(p))
    if extra_unmapped:
        (raw / "not_in_mapping").mkdir()
        os.symlink(corpus / "ct/body_small.nii.gz", raw / "not_in_mapping" / "x.nii.gz")
        (raw / "bad_mode").mkdir()
        os.symlink(corpus / "ct/body_small.nii.gz", raw / "bad_mode" / "x.nii.gz")
    modes = {s: m for s, (m, _) in studies.items()}
    modes["bad_mode"] = "pet"
    return modes


@pytest.fixture
def dataset(tmp_path, scan_dir):
    modes = _make_dataset(tmp_path, scan_dir)
    with pytest.warns(UserWarning) as rec:
        meta = DatasetMetadata.from_directory(tmp_path, modes)
    msgs = " ".join(str(w.message) for w in rec)
    assert "not_in_mapping" in msgs and "bad_mode" in msgs
    meta.save()
    return tmp_path, meta


def test_metadata_scan_and_round_trip(dataset):
    root, meta = dataset
    assert len(meta) == len(STUDIES)
    # the derived-only study is used under the default policy, and its record says why
    (im,) = meta.get_study("mr_derived").images
    assert im.name == "sag_t1_2d_thick" and "no usable acquisition" in im.note and "derived='auto'" in im.note
    assert meta.derived == "auto" and not meta.skipped_series
    assert {s.name for s in meta.get_studies_by_mode("ct")} == {"ct_head", "ct_body"}
    st = meta.get_study("mr_stroke")
    assert [im.name for im in st.images] == ["FLAIR", "T1"]
    assert meta.get_study("ct_head").images[0].kind == "dicom_dir"
    again = DatasetMetadata.from_file(root / "metadata.json")
    assert [s.name for s in again.get_all_studies()] == [s.name for s in meta.get_all_studies()]
    with pytest.raises(KeyError, match="nope"):
        meta.get_study("nope")
    with pytest.raises(ValueError, match="mode must be 'ct' or 'mri', got 'pet'"):
        meta.get_studies_by_mode("pet")


def test_mode_mapping_files(tmp_path):
    (tmp_path / "m.csv").write_text("study,mode\na,CT\nb,mri\n")
    (tmp_path / "m.json").write_text(json.dumps({"a": "ct", "b": "MRI"}))
    assert load_mode_mapping(tmp_path / "m.csv") == {"a": "CT", "b": "mri"}
    assert load_mode_mapping(tmp_path / "m.json") == {"a": "ct", "b": "MRI"}
    with pytest.raises(FileNotFoundError, match="missing.csv: mode mapping file not found"):
        load_mode_mapping(tmp_path / "missing.csv")


def test_cache_manager_needs_metadata(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata"):
        CacheManager(tmp_path)


def _expected_uint8(path, mode):
    """The reference's cache bytes (docs/numbers.md 4, in float64) of the library's resampled image."""
    return R.ref_cache(load_image(path), mode)


def test_build_values_layout_and_flags(dataset, scan_dir):
    root, meta = dataset
    cm = CacheManager(root)
    summary = cm.build_cache(num_workers=2, progress=False)
    assert sorted(summary.done) == sorted(
        f"{s}/{im.name}" for s in STUDIES if s != "bad_4d" for im in meta.get_study(s).images
    )
    assert list(summary.failed) == ["bad_4d/example4d"]
    assert "4D" in summary.failed["bad_4d/example4d"]
    # processed flags written by this process
    flags = {
        f"{s['name']}/{im['name']}": im["processed"]
        for s in json.loads((root / "metadata.json").read_text())["studies"]
        for im in s["images"]
    }
    assert flags.pop("bad_4d/example4d") is False
    assert all(flags.values())
    # exact layout
    assert sorted(os.listdir(root / "processed" / "ct_head")) == [
        ".phantom_head_5mm.lock",
        "phantom_head_5mm.json",
        "phantom_head_5mm_blood.pt",
        "phantom_head_5mm_bone.pt",
        "phantom_head_5mm_brain.pt",
        "phantom_head_5mm_mask.pt",
    ]
    assert sorted(f for f in os.listdir(root / "processed" / "mr_stroke") if f.endswith(".pt")) == [
        "FLAIR.pt",
        "FLAIR_mask.pt",
        "T1.pt",
        "T1_mask.pt",
    ]
    # values: the core pipeline's output quantised; every file loads with weights_only + mmap
    for study, (mode, paths) in STUDIES.items():
        if study == "bad_4d":
            continue
        for p in paths:
            name = os.path.basename(p).replace(".nii.gz", "")
            exp, mask, view = _expected_uint8(str(scan_dir / p), mode)
            files = [f"{name}_{w}.pt" for w in ("brain", "blood", "bone")] if mode == "ct" else [f"{name}.pt"]
            for f, e in zip(files, exp):
                t = torch.load(root / "processed" / study / f, weights_only=True, mmap=True)
                assert t.dtype == torch.uint8 and tuple(t.shape) == e.shape
                assert np.array_equal(t.numpy(), e)
            m = torch.load(root / "processed" / study / f"{name}_mask.pt", weights_only=True, mmap=True)
            assert np.array_equal(m.numpy().ravel(), mask)
            side = json.loads((root / "processed" / study / f"{name}.json").read_text())
            assert side["version"] == PIPELINE_VERSION and side["view"] == view and side["mode"] == mode
            got = cm.load_image(study, name)
            got = got if isinstance(got, list) else [got]
            for g, e in zip(got, exp):
                assert g["data"].dtype == torch.float32
                assert np.array_equal(g["data"].numpy(), e.astype(np.float32) / np.float32(255))
    stats = cm.get_cache_stats()
    assert stats["total_studies"] == len(STUDIES)
    assert stats["cached_images"] == stats["total_images"] - 1 and stats["failed_images"] == 1
    assert stats["bytes_on_disk"] > 0
    # idempotent
    again = cm.build_cache(num_workers=2, progress=False)
    assert not again.done and len(again.skipped) == stats["cached_images"]


def test_ct_windows_and_mri_window_errors(dataset):
    root, _ = dataset
    cm = CacheManager(root)
    cm.build_cache(num_workers=1, study_names=["ct_body", "mr_thick"], progress=False)
    one = cm.load_image("ct_body", "body_small", window="blood")
    assert one["window"] == "blood" and one["mode"] == "ct"
    assert len(cm.load_image("ct_body", "body_small")) == 3
    with pytest.raises(ValueError, match="window"):
        cm.load_image("ct_body", "body_small", window="lung")
    with pytest.raises(ValueError, match="MRI"):
        cm.load_image("mr_thick", "sag_t1_2d_thick", window="brain")
    assert cm.load_image("mr_stroke", "T1") is None  # not built
    with pytest.raises(KeyError, match="nope"):
        cm.build_cache(num_workers=1, study_names=["nope"], progress=False)


def test_corrupt_and_truncated_files_are_detected_and_rebuilt(dataset):
    root, _ = dataset
    cm = CacheManager(root)
    cm.build_cache(num_workers=1, study_names=["ct_body"], progress=False)
    d = root / "processed" / "ct_body"
    brain = d / "body_small_brain.pt"
    good = brain.read_bytes()
    # truncated: never served, status corrupt, rebuilt
    brain.write_bytes(good[: len(good) // 2])
    assert cm.entry_status("ct_body", "body_small") == "corrupt"
    assert cm.load_image("ct_body", "body_small", window="brain") is None
    s = cm.build_cache(num_workers=1, study_names=["ct_body"], progress=False)
    assert s.done == ["ct_body/body_small"] and brain.read_bytes() == good
    # same size, flipped bytes in the data: the CRC check finds it
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    brain.write_bytes(bytes(bad))
    assert cm.verify()["ct_body/body_small"] == "corrupt"
    s = cm.build_cache(num_workers=1, study_names=["ct_body"], progress=False)
    assert s.done == ["ct_body/body_small"] and brain.read_bytes() == good
    assert "ct_body/body_small" not in cm.verify()
    # a changed source makes the entry stale
    src = root / "raw" / "ct_body" / "body_small.nii.gz"
    target = os.readlink(src)
    os.unlink(src)
    import shutil

    shutil.copy(target, src)
    os.utime(src, ns=(1, 1))
    assert cm.entry_status("ct_body", "body_small") == "stale"
    s = cm.build_cache(num_workers=1, study_names=["ct_body"], progress=False)
    assert s.done == ["ct_body/body_small"] and cm.entry_status("ct_body", "body_small") == "valid"


def test_entries_of_an_older_pipeline_are_stale_and_rebuilt(dataset, tmp_path):
    """An entry built by an older pipeline (neurovfm-2: another pass order for thin slices)
    is never served: `cache verify` reports it stale, load_image and ImageDataset do not
    read it, build_cache rebuilds it."""
    root, _ = dataset
    cm = CacheManager(root)
    cm.build_cache(num_workers=1, study_names=["ct_body"], progress=False)
    sidecar = root / "processed" / "ct_body" / "body_small.json"
    side = json.loads(sidecar.read_text())
    assert side["version"] == PIPELINE_VERSION == "neurovfm-3"
    side["version"] = "neurovfm-2"
    sidecar.write_text(json.dumps(side))
    cm = CacheManager(root)
    assert cm.entry_status("ct_body", "body_small") == "stale"
    assert cm.verify()["ct_body/body_small"] == "stale"
    assert cm.load_image("ct_body", "body_small") is None
    out = subprocess.run(
        [sys.executable, "-m", "neurovfm", "cache", "verify", str(root)],
        capture_output=True,
        text=True,
        env=package_env(),
    )
    assert out.returncode == 1, out.stderr
    assert "ct_body/body_small: stale" in out.stdout and "older pipeline version" in out.stdout
    from neurovfm.datasets import ImageDataset
    from neurovfm.errors import ImageNotFoundError

    strict = ImageDataset(root, fallback_to_raw=False, mode_filter="ct")
    idx = next(i for i in range(len(strict)) if strict.study_of(i) == "ct_body")
    with pytest.raises(ImageNotFoundError, match="ct_body/body_small"):
        strict[idx]
    s = cm.build_cache(num_workers=1, study_names=["ct_body"], progress=False)
    assert s.done == ["ct_body/body_small"] and cm.entry_status("ct_body", "body_small") == "valid"


def test_shard_assignment_and_env():
    assert shard_from_env({}) is None
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}) == (
        2,
        4,
    )
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MAX": "7"}) == (2, 8)
    assert shard_from_env({"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    assert shard_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None


def test_shards_partition_the_dataset(dataset):
    root, meta = dataset
    cm = CacheManager(root)
    keys = [f"{s.name}/{im.name}" for s in meta for im in s.images]
    seen = []
    for i in range(3):
        seen += [f"{s}/{r.name}" for s, _m, r in cm._targets(None, (i, 3))]
    assert sorted(seen) == sorted(keys)
    with pytest.raises(ValueError, match="shard"):
        cm.build_cache(num_workers=1, shard=(3, 3), progress=False)


_BUILDER = textwrap.dedent(
    """
    import sys
    from neurovfm.data.cache import CacheManager
    shard = None if sys.argv[2] == "-" else tuple(int(x) for x in sys.argv[2].split("/"))
    CacheManager(sys.argv[1]).build_cache(num_workers=int(sys.argv[3]), shard=shard, progress=False)
    """
)


def _spawn(root, shard="-", workers=2):
    return subprocess.Popen(
        [sys.executable, "-c", _BUILDER, str(root), shard, str(workers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "NEUROVFM_NUM_THREADS": "1"},
    )


def _assert_complete(root, meta):
    cm = CacheManager(root)
    problems = cm.verify()
    assert problems == {"bad_4d/example4d": "missing"}
    for s in meta:
        for im in s.images:
            if s.name != "bad_4d":
                assert cm.load_image(s.name, im.name, as_numpy=True) is not None
    leftovers = [f for _r, _d, fs in os.walk(root / "processed") for f in fs if f.endswith(".tmp")]
    assert leftovers == []


def test_kill_and_resume(dataset):
    root, meta = dataset
    rng = np.random.default_rng(0)
    for delay in rng.uniform(0.3, 2.5, size=4):
        p = _spawn(root)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.communicate()
        # whatever is there now must either be valid or not read as valid
        cm = CacheManager(root)
        for s in meta:
            for im in s.images:
                if cm.entry_status(s.name, im.name) == "valid":
                    assert cm.verify().get(f"{s.name}/{im.name}") is None
    p = _spawn(root)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()
    _assert_complete(root, meta)
    flags = json.loads((root / "metadata.json").read_text())
    assert all(im["processed"] for s in flags["studies"] if s["name"] != "bad_4d" for im in s["images"])


def test_concurrent_builders(dataset):
    root, meta = dataset
    procs = [_spawn(root, "-", 1), _spawn(root, "-", 2), _spawn(root, "0/2", 1), _spawn(root, "1/2", 1)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    _assert_complete(root, meta)
    flags = json.loads((root / "metadata.json").read_text())
    assert all(im["processed"] for s in flags["studies"] if s["name"] != "bad_4d" for im in s["images"])


def test_cli_metadata_cache_build_stats_verify(tmp_path, scan_dir, capsys):
    from neurovfm.cli import main

    studies = {"ct_body": ("ct", ["ct/body_small.nii.gz"]), "mr_t1": ("mri", ["mr/stroke/T1.nii.gz"])}
    modes = _make_dataset(tmp_path, scan_dir, studies, extra_unmapped=False)
    (tmp_path / "modes.csv").write_text("study,mode\n" + "".join(f"{k},{v}\n" for k, v in modes.items()))
    assert main(["metadata", str(tmp_path), "--modes", str(tmp_path / "modes.csv")]) == 0
    assert "2 studies (1 CT, 1 MRI), 2 images" in capsys.readouterr().out
    assert main(["cache", "build", str(tmp_path), "-w", "2", "--no-progress"]) == 0
    assert "2 built" in capsys.readouterr().out
    assert main(["cache", "stats", str(tmp_path)]) == 0
    assert "cached         2 (100.0%)" in capsys.readouterr().out
    assert main(["cache", "verify", str(tmp_path)]) == 0
    assert main(["cache", "build", str(tmp_path), "--shard", "2/2"]) == 2
    assert "shard" in capsys.readouterr().err
    assert main(["cache", "stats", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metadata.json" in err[0]


def test_too_small_to_tokenise_is_one_error_type(tmp_path):
    """A scan with fewer than 4 slices after resampling: ImageTooSmallError from the cache build
    (recorded as the failure) and from the dataset's raw fallback alike."""
    import SimpleITK as sitk

    from neurovfm.errors import ImageTooSmallError

    d = tmp_path / "raw" / "tiny"
    d.mkdir(parents=True)
    img = sitk.GetImageFromArray(np.full((3, 32, 32), 100, np.int16))  # 3 slices of 4 mm: D = 3 < 4
    img.SetSpacing((1.0, 1.0, 4.0))
    sitk.WriteImage(img, str(d / "scan.nii.gz"))
    DatasetMetadata.from_directory(tmp_path, {"tiny": "ct"}).save()
    summary = CacheManager(tmp_path).build_cache(num_workers=1, progress=False)
    assert list(summary.failed) == ["tiny/scan"]
    assert summary.failed["tiny/scan"].startswith("ImageTooSmallError: "), summary.failed
    assert "too small for one 4x16x16 token after resampling to 1x1x4 mm" in summary.failed["tiny/scan"]
    failed = json.loads((tmp_path / "processed" / "tiny" / "scan.failed.json").read_text())
    assert failed["reason"] == summary.failed["tiny/scan"]
    from neurovfm.datasets import ImageDataset

    with pytest.raises(
        ImageTooSmallError,
        match=r"scan\.nii\.gz: too small for one 4x16x16 token after resampling to 1x1x4 mm \(size .*\)",
    ):
        ImageDataset(tmp_path)[0]


def test_cache_errors_are_the_library_family(dataset):
    from neurovfm.data.metadata import MetadataNotFoundError
    from neurovfm.errors import InvalidArgumentError, NotInDatasetError
    from neurovfm.errors import NeuroVFMError

    root, _ = dataset
    cm = CacheManager(root)
    cases = [
        (lambda: cm.build_cache(num_workers=0, progress=False), InvalidArgumentError, ValueError, "num_workers"),
        (lambda: cm.build_cache(shard=(2, 2), progress=False), InvalidArgumentError, ValueError, r"shard must be"),
        (lambda: cm.build_cache(study_names=["nope"], progress=False), NotInDatasetError, KeyError, "nope"),
        (lambda: CacheManager(root / "raw"), MetadataNotFoundError, FileNotFoundError, "no metadata.json"),
    ]
    for call, family, builtin, message in cases:
        with pytest.raises(family, match=message) as err:
            call()
        assert isinstance(err.value, NeuroVFMError) and isinstance(err.value, builtin), message
    cm.build_cache(num_workers=1, study_names=["ct_body"], progress=False)
    with pytest.raises(InvalidArgumentError, match="window must be one of"):
        cm.load_image("ct_body", "body_small", window="lung")


def test_changed_dicom_folder_is_stale_for_reads_of_the_same_manager(tmp_path, scan_dir):
    """CacheManager reads reuse a DICOM folder's walk while the folder is unchanged (one
    stat instead of one per file); a file added to the series makes the entry stale."""
    import shutil

    series = tmp_path / "raw" / "ct_head" / "phantom_head_5mm"
    shutil.copytree(scan_dir / "ct" / "phantom_head_5mm", series)
    DatasetMetadata.from_directory(tmp_path, {"ct_head": "ct"}).save()
    cm = CacheManager(tmp_path)
    assert cm.build_cache(num_workers=1, progress=False).done == ["ct_head/phantom_head_5mm"]
    assert cm.load_image("ct_head", "phantom_head_5mm", window="brain") is not None
    assert cm.load_image("ct_head", "phantom_head_5mm", window="brain") is not None  # the walk reused
    one = series / "I10" if (series / "I10").exists() else sorted(series.iterdir())[9]  # (a phantom's IM0010.dcm)
    shutil.copy(one, series / f"{one.name}_copy")  # one more file: the folder's mtime changes
    assert cm.load_image("ct_head", "phantom_head_5mm", window="brain") is None
    assert cm.entry_status("ct_head", "phantom_head_5mm") == "stale"
