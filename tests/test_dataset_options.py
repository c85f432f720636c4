"""The published ImageDataset options: ct_window_probs=None, class_to_idx with
use_original_labels, labels from a DataFrame (duck-typed: pandas is optional),
study_conversations; and the sampler's drop_last."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from itemdata import LABELS, cached_dataset  # noqa: E402
from neurovfm.datasets import ImageDataset, StudyAwareBatchSampler, load_study_labels  # noqa: E402
from neurovfm.datasets.labels import read_study_labels  # noqa: E402
from neurovfm.datasets.options import DEFAULT_CT_WINDOW_PROBS  # noqa: E402
from neurovfm.errors import DatasetError, InvalidTypeError, MissingFileError  # noqa: E402


@pytest.fixture(scope="module")
def ds_root(tmp_path_factory, scan_dir):
    return cached_dataset(tmp_path_factory, scan_dir)


class Frame:
    """The part of a pandas DataFrame the dataset reads (columns, itertuples)."""

    def __init__(self, columns, rows):
        self.columns = list(columns)
        self.rows = [tuple(r) for r in rows]

    def itertuples(self, index=True, name="Pandas"):
        assert index is False and name is None
        return iter(self.rows)


def test_ct_window_probs_none_is_the_published_default(ds_root):
    assert DEFAULT_CT_WINDOW_PROBS == (0.7, 0.15, 0.15)
    a = ImageDataset(ds_root, ct_window_probs=None, seed=5, mode_filter="ct")
    b = ImageDataset(ds_root, ct_window_probs=(0.7, 0.15, 0.15), seed=5, mode_filter="ct")
    c = ImageDataset(ds_root, seed=5, mode_filter="ct")
    assert a.ct_window_probs == b.ct_window_probs == c.ct_window_probs == (0.7, 0.15, 0.15)
    for ep in range(4):
        for i in range(len(a)):
            assert a.get_item(i, ep)["window"] == b.get_item(i, ep)["window"] == c.get_item(i, ep)["window"]


def test_class_to_idx_maps_string_labels_only_when_asked(ds_root):
    names = {"ct_body": "bleed", "ct_head": "normal", "mr_stroke": "bleed", "mr_t1": "normal"}
    idx = {"normal": 0, "bleed": 1}
    kept = ImageDataset(ds_root, study_labels=names, class_to_idx=idx, seed=0)
    assert {kept[i]["study"]: kept[i]["label"] for i in range(len(kept))} == names
    mapped = ImageDataset(ds_root, study_labels=names, class_to_idx=idx, use_original_labels=False, seed=0)
    assert {mapped[i]["study"]: mapped[i]["label"] for i in range(len(mapped))} == {s: idx[v] for s, v in names.items()}
    assert mapped.class_to_idx == idx and mapped.use_original_labels is False
    # numbers pass through; no class_to_idx: labels as given
    nums = ImageDataset(ds_root, study_labels=LABELS, class_to_idx=idx, use_original_labels=False, seed=0)
    assert {nums[i]["study"]: nums[i]["label"] for i in range(len(nums))} == LABELS
    plain = ImageDataset(ds_root, study_labels=names, use_original_labels=False, seed=0)
    assert plain[0]["label"] in ("bleed", "normal")
    with pytest.raises(DatasetError, match=r"labels \['bleed'\] are not in class_to_idx"):
        ImageDataset(ds_root, study_labels=names, class_to_idx={"normal": 0}, use_original_labels=False)
    with pytest.raises(InvalidTypeError, match="class_to_idx must be a dict"):
        ImageDataset(ds_root, class_to_idx=[("normal", 0)])  # type: ignore[arg-type]


def test_labels_from_a_duck_typed_dataframe(ds_root):
    single = Frame(["study_id", "y"], [(s, np.int64(v)) for s, v in LABELS.items()])
    ds = ImageDataset(ds_root, study_labels=single, seed=0)
    got = {ds[i]["study"]: ds[i]["label"] for i in range(len(ds))}
    assert got == LABELS and all(type(v) is int for v in got.values())
    assert ds.label_columns == ["y"]
    multi = Frame(["study", "a", "b"], [(s, np.int64(v), np.float64(1 - v)) for s, v in LABELS.items()])
    ds = ImageDataset(ds_root, study_labels=multi, seed=0)
    assert {ds[i]["study"]: ds[i]["label"] for i in range(len(ds))} == {s: [v, 1 - v] for s, v in LABELS.items()}
    assert ds.label_columns == ["a", "b"]
    assert load_study_labels(Frame(["id", "y"], [(7, 0.5)])) == {"7": 0.5}


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (Frame(["study"], [("a",)]), "at least one label column"),
        (Frame(["study", "y"], [("a", 1), ("a", 2)]), "holds study 'a' twice"),
        (Frame(["study", "a", "b"], [("s", 1, 0.5)]), "multilabel row of study 's' must hold integers"),
        (Frame(["study", "a", "b"], [("s", 1, float("nan"))]), "multilabel row of study 's' must hold integers"),
    ],
)
def test_a_bad_dataframe_is_refused(frame, message):
    with pytest.raises(DatasetError, match=message):
        load_study_labels(frame)


def test_label_columns_of_a_csv_header(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("study,x,y\na,1,0\nb,0,1\n")
    assert read_study_labels(p) == ({"a": [1, 0], "b": [0, 1]}, ["x", "y"])
    p.write_text("a,1\nb,0\n")
    assert read_study_labels(p) == ({"a": 1, "b": 0}, None)
    with pytest.raises(InvalidTypeError, match="study_labels must be"):
        load_study_labels(3)  # type: ignore[arg-type]


def test_study_conversations_come_with_the_items(ds_root, tmp_path):
    turns = [{"role": "user", "content": "Describe."}, {"role": "assistant", "content": "A head."}]
    ds = ImageDataset(ds_root, study_conversations={"ct_head": turns}, seed=0)
    assert ds.study_conversations == {"ct_head": turns}
    for i in range(len(ds)):
        item = ds[i]
        assert item["conversation"] == (turns if item["study"] == "ct_head" else [])
    p = tmp_path / "conv.json"
    p.write_text(json.dumps({"mr_t1": turns}))
    ds = ImageDataset(ds_root, study_conversations=str(p), mode_filter="mri", seed=0)
    assert [ds[i]["conversation"] for i in range(len(ds))] == [[], [], turns]
    assert ImageDataset(ds_root, seed=0)[0]["conversation"] == []
    # collate keeps it, in batch order
    batch = ds.collate_fn([ds[0], ds[2]])
    assert batch["conversation"] == [[], turns]


def test_bad_study_conversations_are_refused(ds_root, tmp_path):
    with pytest.raises(MissingFileError, match="conversations file not found"):
        ImageDataset(ds_root, study_conversations=tmp_path / "none.json")
    txt = tmp_path / "conv.txt"
    txt.write_text("{}")
    with pytest.raises(DatasetError, match=r"must be a \.json file"):
        ImageDataset(ds_root, study_conversations=txt)
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    with pytest.raises(DatasetError, match="must be a JSON object"):
        ImageDataset(ds_root, study_conversations=bad)
    with pytest.raises(DatasetError, match="conversation of study 'a' must be a list"):
        ImageDataset(ds_root, study_conversations={"a": "hi"})
    with pytest.raises(InvalidTypeError, match="study_conversations must be"):
        ImageDataset(ds_root, study_conversations=5)  # type: ignore[arg-type]


def test_image_index_is_the_published_attribute(ds_root):
    ds = ImageDataset(ds_root, seed=0)
    assert ds.image_index == [(ds[i]["study"], ds[i]["image"], ds[i]["mode"]) for i in range(len(ds))]


def test_sampler_drop_last_drops_only_a_short_last_batch():
    studies = ["a", "b", "c", "d"]  # one image each
    full = StudyAwareBatchSampler(studies, batch_size=2, shuffle=False, drop_last=True, num_replicas=1, rank=0)
    assert list(full) == [[0, 1], [2, 3]]  # the published sampler would drop [2, 3] too
    short = StudyAwareBatchSampler(studies[:3], batch_size=2, shuffle=False, drop_last=True, num_replicas=1, rank=0)
    assert list(short) == [[0, 1]] and len(short) == 1
    keep = StudyAwareBatchSampler(studies[:3], batch_size=2, shuffle=False, drop_last=False, num_replicas=1, rank=0)
    assert list(keep) == [[0, 1], [2]]
