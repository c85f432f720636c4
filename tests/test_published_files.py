"""metadata.json files of the published NeuroVFM layout (GitHub MLNeurosurg/neurovfm,
``DatasetMetadata.save``): read by DatasetMetadata, CacheManager and ImageDataset, written
back in that layout; and the published keys of ``CacheManager.get_cache_stats``.

The fixtures are hand-written JSON in that layout (``{"dataset_name", "version",
"created", "num_studies", "studies": {study: {"mode", "images": {image: {"filename",
"processed"}}}}}``), over raw/ files symlinked from the corpus."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from itemdata import STUDIES, make_dataset
from neurovfm.data.metadata import DatasetMetadata
from neurovfm.errors import MetadataError

PUBLISHED = {
    "dataset_name": "pub",
    "version": "1.0",
    "created": "2024-05-01T12:00:00",
    "num_studies": 4,
    "studies": {
        "ct_body": {"mode": "ct", "images": {"body_small": {"filename": "body_small.nii.gz", "processed": False}}},
        "ct_head": {
            "mode": "ct",
            "images": {"phantom_head_5mm": {"filename": "phantom_head_5mm", "processed": True}},
        },
        "mr_stroke": {
            "mode": "mri",
            "images": {
                "T1": {"filename": "T1.nii.gz", "processed": False},
                "FLAIR": {"filename": "FLAIR.nii.gz", "processed": False},
            },
        },
        "mr_t1": {"mode": "mri", "images": {"T1": {"filename": "T1.nii.gz", "processed": False}}},
    },
}


def _raw(root: Path, corpus: Path) -> None:
    for study, (_mode, paths) in STUDIES.items():
        d = root / "raw" / study
        d.mkdir(parents=True, exist_ok=True)
        for p in paths:
            os.symlink(corpus / p, d / os.path.basename(p))


@pytest.fixture
def pub_root(tmp_path, scan_dir) -> Path:
    root = tmp_path / "pub"
    _raw(root, scan_dir)
    (root / "metadata.json").write_text(json.dumps(PUBLISHED, indent=2))
    return root


def test_published_metadata_is_mapped_onto_records(pub_root):
    meta = DatasetMetadata.from_file(pub_root / "metadata.json")
    assert meta.data_dir == str(pub_root)
    assert [s.name for s in meta] == ["ct_body", "ct_head", "mr_stroke", "mr_t1"]
    assert [s.mode for s in meta] == ["ct", "ct", "mri", "mri"]
    head = meta.get_study("ct_head").image("phantom_head_5mm")
    assert (head.path, head.kind, head.processed) == (
        os.path.join("raw", "ct_head", "phantom_head_5mm"),
        "dicom_dir",
        True,
    )
    t1 = meta.get_study("mr_stroke").image("T1")
    assert (t1.path, t1.kind, t1.processed) == (os.path.join("raw", "mr_stroke", "T1.nii.gz"), "nifti", False)
    assert [im.name for im in meta.get_study("mr_stroke").images] == ["T1", "FLAIR"]
    assert meta.num_images() == 5
    assert meta.published is not None and meta.published["dataset_name"] == "pub"


def test_published_metadata_is_saved_in_its_layout(pub_root):
    meta = DatasetMetadata.from_file(pub_root / "metadata.json")
    meta.get_study("mr_t1").image("T1").processed = True
    meta.save()
    data = json.loads((pub_root / "metadata.json").read_text())
    expected = json.loads(json.dumps(PUBLISHED))
    expected["studies"]["mr_t1"]["images"]["T1"]["processed"] = True
    assert data == expected


def test_our_layout_is_still_read_and_written(tmp_path, scan_dir):
    make_dataset(tmp_path, scan_dir)
    meta = DatasetMetadata.from_file(tmp_path / "metadata.json")
    assert meta.published is None and len(meta) == 4
    data = json.loads((tmp_path / "metadata.json").read_text())
    assert isinstance(data["studies"], list)


def test_cache_and_dataset_read_a_published_file(pub_root, tmp_path, scan_dir):
    torch = pytest.importorskip("torch")
    from neurovfm.data.cache import CacheManager
    from neurovfm.datasets import ImageDataset

    cm = CacheManager(pub_root)
    before = cm.get_cache_stats()
    assert before["cache_coverage"] == before["coverage"] == 0.0
    assert (before["total_studies"], before["total_images"], before["cached_images"]) == (4, 5, 0)
    summary = cm.build_cache(num_workers=2, progress=False)
    assert not summary.failed
    stats = cm.get_cache_stats()
    assert stats["cache_coverage"] == stats["coverage"] == 1.0 and stats["cached_images"] == 5
    for key in ("failed_images", "stale_images", "bytes_on_disk"):
        assert key in stats
    # The processed flags are written in the published layout.
    data = json.loads((pub_root / "metadata.json").read_text())
    assert data["num_studies"] == 4 and data["created"] == PUBLISHED["created"]
    assert all(im["processed"] for s in data["studies"].values() for im in s["images"].values())

    ours = tmp_path / "ours"
    make_dataset(ours, scan_dir)
    # Item draws depend on the index, and the two files order a study's images differently:
    # compare the items without draws (one CT window), from the cache and from raw.
    a = ImageDataset(pub_root, seed=3, ct_window_probs=(0, 0, 1), fallback_to_raw=False)
    b = ImageDataset(ours, seed=3, ct_window_probs=(0, 0, 1), use_cache=False)
    assert len(a) == len(b) == 5
    by_path = {b[i]["path"]: b[i] for i in range(len(b))}
    for i in range(len(a)):
        x = a[i]
        y = by_path[x["path"]]
        assert x["window"] == y["window"] and x["window"] in (None, "bone")
        assert torch.equal(x["img"], y["img"]) and torch.equal(x["filtered"], y["filtered"])


def test_a_missing_raw_file_is_kind_other(pub_root):
    data = json.loads(json.dumps(PUBLISHED))
    data["studies"]["mr_t1"]["images"]["T2"] = {"filename": "T2", "processed": False}
    (pub_root / "metadata.json").write_text(json.dumps(data))
    meta = DatasetMetadata.from_file(pub_root / "metadata.json")
    assert meta.get_study("mr_t1").image("T2").kind == "other"


def _broken(edit):
    data = json.loads(json.dumps(PUBLISHED))
    edit(data)
    return data


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["studies"].__setitem__("ct_body", []), "studies.ct_body"),
        (lambda d: d["studies"]["ct_body"].pop("mode"), "studies.ct_body.mode"),
        (lambda d: d["studies"]["ct_body"].__setitem__("mode", "pet"), "studies.ct_body.mode"),
        (lambda d: d["studies"]["ct_body"].__setitem__("mode", 3), "studies.ct_body.mode"),
        (lambda d: d["studies"]["ct_body"].pop("images"), "studies.ct_body.images"),
        (lambda d: d["studies"]["ct_body"].__setitem__("images", ["a"]), "studies.ct_body.images"),
        (lambda d: d["studies"]["mr_t1"]["images"].__setitem__("T1", "T1.nii.gz"), "studies.mr_t1.images.T1"),
        (lambda d: d["studies"]["mr_t1"]["images"]["T1"].pop("filename"), "studies.mr_t1.images.T1.filename"),
        (
            lambda d: d["studies"]["mr_t1"]["images"]["T1"].__setitem__("filename", 5),
            "studies.mr_t1.images.T1.filename",
        ),
        (
            lambda d: d["studies"]["mr_t1"]["images"]["T1"].__setitem__("filename", "../x.nii"),
            "studies.mr_t1.images.T1.filename",
        ),
        (
            lambda d: d["studies"]["mr_t1"]["images"]["T1"].__setitem__("filename", "/etc/x.nii"),
            "studies.mr_t1.images.T1.filename",
        ),
        (
            lambda d: d["studies"]["mr_t1"]["images"]["T1"].__setitem__("processed", "yes"),
            "studies.mr_t1.images.T1.processed",
        ),
        (lambda d: d["studies"].__setitem__("../up", d["studies"].pop("mr_t1")), "studies.../up"),
    ],
)
def test_a_malformed_published_file_names_the_file_and_the_field(tmp_path, edit, field):
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(_broken(edit)))
    with pytest.raises(MetadataError, match=rf"{tmp_path}.*metadata\.json.*field '{field}'"):
        DatasetMetadata.from_file(path)


@pytest.mark.parametrize("text", ["[1, 2]", '{"studies": 3}', '{"studies": [{"name": "a"}]}', "{nope"])
def test_a_file_of_neither_layout_is_refused(tmp_path, text):
    path = tmp_path / "metadata.json"
    path.write_text(text)
    with pytest.raises(MetadataError, match="not a neurovfm metadata file"):
        DatasetMetadata.from_file(path)
