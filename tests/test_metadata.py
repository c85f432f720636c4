"""DatasetMetadata's messages: an empty dataset is an error naming the mapping and raw/,
a study the mapping names but raw/ lacks is a warning naming it, and every error is
both a NeuroVFMError and the builtin a caller catches."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import package_env

from neurovfm.data.metadata import (
    DatasetMetadata,
    EmptyDatasetError,
    MetadataError,
    MetadataNotFoundError,
    StudyNotFoundError,
    load_mode_mapping,
)
from neurovfm.errors import NeuroVFMError


def _study(root: Path, name: str, image: str = "t1.nii.gz") -> None:
    d = root / "raw" / name
    d.mkdir(parents=True)
    img = sitk.GetImageFromArray(np.zeros((8, 32, 32), np.int16))
    sitk.WriteImage(img, str(d / image))


@pytest.fixture
def ds(tmp_path) -> Path:
    for name in ("s001", "s002"):
        _study(tmp_path, name)
    return tmp_path


def test_error_family():
    for cls, builtin in (
        (MetadataError, ValueError),
        (EmptyDatasetError, ValueError),
        (MetadataNotFoundError, FileNotFoundError),
        (StudyNotFoundError, KeyError),
    ):
        assert issubclass(cls, NeuroVFMError) and issubclass(cls, builtin), cls
    assert str(StudyNotFoundError("no study 'x'")) == "no study 'x'"  # not KeyError's quoted repr


@pytest.mark.parametrize("kind", ["dict", "csv", "json"])
def test_mapping_that_matches_no_study_is_an_error(ds, kind):
    mapping = {"other1": "ct", "other2": "mri"}
    if kind == "csv":
        (ds / "modes.csv").write_text("study,mode\nother1,ct\nother2,mri\n")
        arg, named = ds / "modes.csv", re.escape(str(ds / "modes.csv"))
    elif kind == "json":
        (ds / "modes.json").write_text(json.dumps(mapping))
        arg, named = ds / "modes.json", re.escape(str(ds / "modes.json"))
    else:
        arg, named = mapping, "the mode mapping"
    raw = re.escape(str(ds / "raw"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the error says it all: no warnings beside it
        with pytest.raises(EmptyDatasetError, match=rf"{named} \(2 studies\) matches none of the 2 studies in {raw}"):
            DatasetMetadata.from_directory(ds, arg)
    assert not (ds / "metadata.json").exists()


def test_empty_mapping_and_empty_raw_are_errors(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(EmptyDatasetError, match=r"holds no study folder"), warnings.catch_warnings():
        warnings.simplefilter("error")
        DatasetMetadata.from_directory(tmp_path, {"s001": "ct"})
    _study(tmp_path, "s001")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(EmptyDatasetError, match=r"the mode mapping \(0 studies\) names no study"):
            DatasetMetadata.from_directory(tmp_path, {})


def test_all_matched_studies_skipped_is_an_error(ds):
    with pytest.raises(
        EmptyDatasetError, match=r"every study of .*raw that .* names was skipped: study 's001' has mode 'pet'"
    ):
        DatasetMetadata.from_directory(ds, {"s001": "pet"})


def test_study_missing_from_raw_is_a_warning_naming_it(ds):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        meta = DatasetMetadata.from_directory(ds, {"s001": "mri", "s002": "mri", "s009": "ct"})
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 1, msgs
    assert re.search(r"1 study of the mode mapping \(3 studies\) not in .*raw: skipped \('s009'\)", msgs[0])
    assert [s.name for s in meta] == ["s001", "s002"]


def test_many_missing_studies_are_listed_briefly(ds):
    mapping = {"s001": "mri", "s002": "mri", **{f"x{i:02d}": "ct" for i in range(25)}}
    with pytest.warns(UserWarning, match=r"25 studies .* \('x00', .*'x09' and 15 more\)"):
        DatasetMetadata.from_directory(ds, mapping)


def test_lookup_and_file_errors(ds, tmp_path):
    meta = DatasetMetadata.from_directory(ds, {"s001": "mri", "s002": "ct"})
    with pytest.raises(StudyNotFoundError, match="no study 'nope'"):
        meta.get_study("nope")
    with pytest.raises(KeyError, match="has no image 'nope'"):
        meta.get_study("s001").image("nope")
    with pytest.raises(MetadataError, match="mode must be 'ct' or 'mri', got 'pet'"):
        meta.get_studies_by_mode("pet")
    with pytest.raises(MetadataNotFoundError, match="no raw/ folder"):
        DatasetMetadata.from_directory(tmp_path / "nothing", {"a": "ct"})
    with pytest.raises(FileNotFoundError, match="mode mapping file not found"):
        load_mode_mapping(tmp_path / "missing.csv")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MetadataError, match="not a JSON mode mapping"):
        load_mode_mapping(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be an object"):
        load_mode_mapping(tmp_path / "list.json")
    (tmp_path / "short.csv").write_text("s001\n")
    with pytest.raises(MetadataError, match="line 1 has no mode column"):
        load_mode_mapping(tmp_path / "short.csv")
    with pytest.raises(MetadataNotFoundError, match="metadata file not found"):
        DatasetMetadata.from_file(tmp_path / "metadata.json")
    (tmp_path / "metadata.json").write_text("{}")
    with pytest.raises(MetadataError, match="not a neurovfm metadata file"):
        DatasetMetadata.from_file(tmp_path / "metadata.json")


def test_cli_empty_dataset_exit_code_2_and_no_file(ds):
    (ds / "modes.csv").write_text("study,mode\nother,ct\n")
    res = subprocess.run(
        [sys.executable, "-m", "neurovfm", "metadata", str(ds), "--modes", str(ds / "modes.csv")],
        capture_output=True,
        text=True,
        env=package_env(),
        timeout=120,
        check=False,
    )
    assert res.returncode == 2, res
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("neurovfm: error: no usable study") and str(ds / "modes.csv") in last, res.stderr
    assert str(ds / "raw") in last
    assert not (ds / "metadata.json").exists()


def test_cli_warns_about_a_study_missing_from_raw(ds):
    (ds / "modes.csv").write_text("study,mode\ns001,mri\ns002,mri\ns003,ct\n")
    res = subprocess.run(
        [sys.executable, "-m", "neurovfm", "metadata", str(ds), "--modes", str(ds / "modes.csv")],
        capture_output=True,
        text=True,
        env=package_env(),
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert re.search(r"neurovfm: warning: 1 study of the mode mapping .*modes.csv .* skipped \('s003'\)", res.stderr)
    assert "2 studies" in res.stdout and (ds / "metadata.json").is_file()
