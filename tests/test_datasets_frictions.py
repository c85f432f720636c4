"""What a newcomer meets first in neurovfm.datasets: the hint when torch is missing, and
ScanDataset's collate_fn (torch's default collate fails with a hint, as for ImageDataset)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import SimpleITK as sitk
from conftest import package_env

from neurovfm import phantom
from neurovfm.errors import DatasetError


def test_import_without_torch_says_which_extra():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import neurovfm, neurovfm.data\n"  # these never need torch
        "try:\n    import neurovfm.datasets\n"
        "except ImportError as e:\n    print('ImportError:', e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], env=package_env(), capture_output=True, text=True, check=True)
    assert "ImportError:" in res.stdout, res.stdout + res.stderr
    assert "pip install 'neurovfm[torch]'" in res.stdout


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    d = tmp_path_factory.mktemp("scans")
    mr = phantom.make_mri_phantom(shape=(32, 64, 64), spacing=(4.0, 3.0, 3.0))
    ct = phantom.make_ct_phantom(shape=(64, 64, 24), spacing=(3.0, 3.0, 5.0))
    sitk.WriteImage(mr, str(d / "t1.nii.gz"), useCompression=True)
    sitk.WriteImage(ct, str(d / "ct.nii.gz"), useCompression=True)
    return d


def test_scan_dataset_default_collate_gives_the_hint(scans):
    torch = pytest.importorskip("torch")
    from neurovfm.datasets import ScanDataset

    ds = ScanDataset([scans / "t1.nii.gz", scans / "t1.nii.gz"], "mri")
    with pytest.raises(DatasetError, match=r"collate_fn=dataset\.collate_fn"):
        next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    # single items (batch_size=None) need no collate
    (item,) = list(torch.utils.data.DataLoader(ScanDataset([scans / "t1.nii.gz"], "mri"), batch_size=None))
    assert item["img"].ndim == 2


def test_scan_dataset_collate_fn_packs_the_items(scans):
    torch = pytest.importorskip("torch")
    from neurovfm.datasets import ScanDataset, collate_packed

    ds = ScanDataset(str(_manifest(scans)))
    assert ds.collate_fn is collate_packed
    items = [ds[0], ds[1]]
    (batch,) = list(torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=ds.collate_fn))
    n = [len(it["img"]) for it in items]
    assert n[0] != n[1]  # different token counts: what the default collate cannot stack
    assert batch["cu_seqlens"].tolist() == [0, n[0], n[0] + n[1]]
    assert torch.equal(batch["img"], torch.cat([it["img"] for it in items]))
    assert batch["mode"] == ["mri", "ct"] and len(batch["geometry"]) == 2


def _manifest(d):
    m = d / "scans.csv"
    m.write_text("path,mode\nt1.nii.gz,mri\nct.nii.gz,ct\n")
    return m
