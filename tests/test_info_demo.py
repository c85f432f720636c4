"""`neurovfm info` (version, build, decoders, threads, extras) and `neurovfm demo DIR`
(the phantom dataset the README's quick starts run on)."""

from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import pytest
import SimpleITK as sitk

import neurovfm
from neurovfm import _core, phantom
from neurovfm.cli import main
from neurovfm.demo import DEMO_STUDIES, write_demo

# --- info ------------------------------------------------------------------------------------


def _info_json(capsys, *extra) -> dict:
    assert main(["info", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_info_json_reports_version_threads_and_extras(capsys):
    info = _info_json(capsys, "-j", "3")
    assert info["version"] == neurovfm.__version__
    assert info["threads"]["kernels"] == 3  # -j reaches the kernels
    assert info["threads"]["hardware_threads"] == _core.hardware_threads()
    for module in ("torch", "lightning", "matplotlib"):
        assert info["extras"][module]["installed"] == (importlib.util.find_spec(module) is not None)
    assert info["extras"]["matplotlib"]["extra"] == "qa"
    assert info["isa"]["in_use"] == _core.isa()


def test_info_decoders_agree_with_the_reader(capsys):
    """A decoder is 'built' exactly when the compiled reader decodes its syntaxes itself."""
    info = _info_json(capsys)
    by_key = {d["decoder"]: d for d in info["decoders"]}
    assert {"rle", "jpeg_lossless", "jpeg_lossy", "jpeg_ls", "jpeg2000", "htj2k"} <= set(by_key)
    for d in info["decoders"]:
        for uid in d["transfer_syntaxes"]:
            name, reason = _core.dicom_codec_status(uid, 8)
            assert d["built"] == bool(name and not reason), (d, uid, name, reason)
        assert d["fallback"] == ("" if d["built"] else "SimpleITK")
    assert by_key["rle"]["built"] and by_key["jpeg_lossless"]["built"]


def test_info_text_names_each_decoder_and_whether_built(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    from neurovfm._info import build_info

    info = build_info()
    for d in info["decoders"]:
        (line,) = [ln for ln in out.splitlines() if ln.strip().startswith(d["name"] + " ")]
        assert ("built in" in line) == d["built"] and ("not built" in line) == (not d["built"]), line
    assert "JPEG-LS" in out and "JPEG 2000" in out and "HTJ2K" in out
    assert f"neurovfm {neurovfm.__version__}" in out.splitlines()[0]
    assert "SimpleITK reads" in out and "kernel threads" in out


class _OlderCore:
    """The compiled module as it was before it reported codecs(): only dicom_codec_status."""

    def __init__(self, lacks=()):
        self.lacks = set(lacks)

    def dicom_codec_status(self, uid, bits):
        name, reason = _core.dicom_codec_status(uid, bits)
        return (name, "not built here") if uid in self.lacks else (name, reason)


def test_info_without_codecs_binding_asks_per_syntax():
    from neurovfm._info import _decoders

    jls = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
    out = {d["decoder"]: d for d in _decoders(_OlderCore(lacks=jls))}
    assert not out["jpeg_ls"]["built"] and out["jpeg_ls"]["fallback"] == "SimpleITK"
    assert "libcharls-dev" in out["jpeg_ls"]["source_build_needs"]
    assert out["rle"]["built"] and out["rle"]["library"] == "neurovfm"


# --- demo ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo(tmp_path_factory.mktemp("demo") / "demo")


def test_demo_files(demo):
    root = demo.root
    assert sorted(p.name for p in (root / "raw").iterdir()) == sorted(s[0] for s in DEMO_STUDIES)
    with open(root / "modes.csv", newline="") as f:
        assert {r["study"]: r["mode"] for r in csv.DictReader(f)} == {s[0]: s[1] for s in DEMO_STUDIES}
    with open(root / "labels.csv", newline="") as f:
        assert {r["study"]: int(r["label"]) for r in csv.DictReader(f)} == {s[0]: s[2] for s in DEMO_STUDIES}
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [s[0] for s in DEMO_STUDIES]
    assert all((root / r["path"]).exists() for r in rows)


@pytest.mark.parametrize("study", [s for s in DEMO_STUDIES if s[3] == "dicom"], ids=lambda s: s[0])
def test_demo_dicom_series_hold_the_phantom(demo, study):
    """Each DICOM series reads back as the phantom it was written from, voxel for voxel,
    with its modality (MR for the MR series)."""
    from neurovfm.data import find_series, load_image

    name, mode, _, _, _, seed = study
    ref = phantom.make_ct_phantom if mode == "ct" else phantom.make_mri_phantom
    from neurovfm import demo as demo_mod

    shape, spacing = (
        (demo_mod._CT_SHAPE, demo_mod._CT_SPACING) if mode == "ct" else (demo_mod._MR_SHAPE, demo_mod._MR_SPACING)
    )
    want = ref(shape=shape, spacing=spacing, seed=seed)
    got = load_image(demo.scans[name], preprocess=False)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(got), sitk.GetArrayViewFromImage(want))
    np.testing.assert_allclose(got.GetDirection(), want.GetDirection(), atol=1e-6)
    (rec,) = find_series(demo.scans[name])
    assert rec.usable and rec.modality == ("CT" if mode == "ct" else "MR")


def test_demo_is_a_dataset_and_a_manifest(demo, tmp_path):
    from neurovfm.data import DatasetMetadata, prepare_many

    meta = DatasetMetadata.from_directory(demo.root, demo.modes_csv)
    assert len(meta) == 4 and meta.num_images() == 4
    summary = prepare_many([], tmp_path / "out", manifest=demo.manifest_csv, progress=False)
    assert (summary.ok, summary.failed, summary.mode_warnings) == (4, 0, 0)


def test_demo_cli_prints_and_refuses_to_overwrite(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "raw/mr_dicom/t1/" in out and "manifest.csv" in out and "wrote 4 studies" in out
    assert main(["demo", str(tmp_path / "d")]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["demo", str(tmp_path / "d"), "--force"]) == 0


def test_mr_dicom_values_are_checked(tmp_path):
    from neurovfm.errors import InvalidArgumentError

    img = sitk.GetImageFromArray(np.full((4, 8, 8), 5000, np.uint16))
    with pytest.raises(InvalidArgumentError, match="0..4095"):
        phantom.write_dicom_series(img, tmp_path / "x", modality="MR")
    with pytest.raises(InvalidArgumentError, match="modality"):
        phantom.write_dicom_series(img, tmp_path / "x", modality="PT")


def test_series_shows_a_dash_for_a_nifti_modality(demo, capsys):
    assert main(["series", str(demo.root / "raw")]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert rows["t1"][1] == "-" and rows["head"][1] == "-"  # NIfTI files
    assert {r[1] for name, r in rows.items() if name not in ("t1", "head")} == {"CT", "MR"}
