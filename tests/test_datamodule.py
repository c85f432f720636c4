"""ImageDataModule: the published NeuroVFM Lightning DataModule, from its YAML layout.

The configurations are written here in the published layout (``infra``, ``data.{data_dir,
use_cache, fallback_to_raw, study_labels, dataset, loader}``, ``system.which``), over the
session's small real-scan cache (tests/itemdata.py). Batches are checked against the
items (``ImageDataset.get_item``, itself checked against the reference formula in
test_datasets/test_fidelity) put through the collators, and the labels against the label
file; a real ``Trainer.fit`` runs for both Lightning packages, and a 2-process DDP run
checks rank disjointness and coverage.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")
import yaml  # noqa: E402
from conftest import package_env  # noqa: E402
from itemdata import LABELS, cached_dataset  # noqa: E402
from neurovfm.datasets import ImageDataModule, MultiViewCollator  # noqa: E402
from neurovfm.errors import ConfigError, MetadataNotFoundError, MissingFileError  # noqa: E402

# Lightning's own deprecation and performance notices (its internals, not ours).
LIGHTNING_WARNINGS = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*log_every_n_steps.*"),
    pytest.mark.filterwarnings("ignore:.*GPU available but not used.*"),
    pytest.mark.filterwarnings("ignore:.*Checkpoint directory.*"),
    pytest.mark.filterwarnings("ignore:.*LitLogger.*"),
    pytest.mark.filterwarnings("ignore:.*`srun` command is available.*"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\).*"),
]

MULTIVIEW_KEYS = {
    "img",
    "coords",
    "filtered",
    "size",
    "label",
    "path",
    "mode",
    "study",
    "series_masks_indices",
    "series_cu_seqlens",
    "series_max_len",
    "study_cu_seqlens",
    "study_max_len",
}


def published_layout(
    data_dir: Path, *, which: str, labels: Path | None = None, workers: int = 2, seed: int = 42
) -> dict[str, Any]:
    """A configuration in the published examples/config layout (pretrain.yaml, mil.yaml)."""
    collate = {"remove_background": True, "patch_drop_rate": 0.0, "apply_masks_internally": False}
    data: dict[str, Any] = {
        "data_dir": str(data_dir),
        "use_cache": True,
        "fallback_to_raw": False,
        "dataset": {
            "train": {
                "params": {
                    "random_crop": True,
                    "max_crop_size": [6, 10, 10],
                    "augment": True,
                    "tokenize": True,
                    "ct_window_probs": [0.7, 0.15, 0.15],
                }
            },
            "val": {"params": {"random_crop": False, "augment": False, "tokenize": True}},
        },
        "loader": {
            "train": {
                "batch_size": 2,
                "num_workers": workers,
                "shuffle": True,
                "drop_last": True,
                "use_study_sampler": True,
                "collate_fn": dict(collate, patch_drop_rate=0.1),
            },
            "val": {
                "batch_size": 2,
                "num_workers": workers,
                "shuffle": False,
                "drop_last": False,
                "use_study_sampler": True,
                "collate_fn": collate,
            },
        },
    }
    if labels is not None:
        data["study_labels"] = str(labels)
    return {
        "infra": {"exp_root": "/unused", "seed": seed, "num_gpus": 1},
        "data": data,
        "system": {"which": which, "params": {"model_hyperparams": {}}},
        "training": {"trainer_params": {"max_epochs": 1}},
    }


@pytest.fixture(scope="module")
def ds_root(tmp_path_factory, scan_dir) -> Path:
    return cached_dataset(tmp_path_factory, scan_dir)


@pytest.fixture(scope="module")
def labels_csv(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("dm_labels") / "labels.csv"
    p.write_text("study,label\n" + "".join(f"{s},{v}\n" for s, v in LABELS.items()))
    return p


def write_yaml(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def sampler_of(loader: Any) -> Any:
    return loader.batch_sampler


def test_pretrain_yaml_gives_multiblock_batches(ds_root, tmp_path):
    cfg = published_layout(ds_root, which="VisionPretrainingSystem")
    dm = ImageDataModule(write_yaml(tmp_path / "pretrain.yaml", cfg))
    dm.setup("fit")
    assert dm.train_dataset is not None and len(dm.train_dataset) == 5
    loader = dm.train_dataloader()
    assert loader.num_workers == 2
    sampler = sampler_of(loader)
    plan = list(sampler)
    batches = list(loader)
    assert len(batches) == len(plan) == len(sampler) > 0
    for idx, out in zip(plan, batches, strict=True):
        assert isinstance(out, tuple) and len(out) == 4
        batch, pred, init, enc = out
        items = [dm.train_dataset.get_item(i, epoch=0) for i in idx]
        assert set(batch) == {"img", "coords", "filtered", "size", "label", "path", "mode", "study"}
        assert torch.equal(batch["img"], torch.cat([it["img"] for it in items]))
        assert torch.equal(batch["filtered"], torch.cat([it["filtered"] for it in items]))
        assert batch["path"] == [it["path"] for it in items]
        # init: positions in the batch's concatenated tokens; pred/enc: positions among
        # the init (context) tokens, as in the published collator
        ends = torch.tensor([it["img"].shape[0] for it in items]).cumsum(0).tolist()
        init_cu = init[0][1].tolist()
        for masks, bounds in ((init, [0, *ends]), (pred, init_cu), (enc, init_cu)):
            assert len(masks) == 1
            index, cu, max_len = masks[0]
            assert cu.dtype == torch.int32 and int(cu[-1]) == index.numel()
            assert len(cu) == len(items) + 1 and max_len == int((cu[1:] - cu[:-1]).max())
            for b in range(len(items)):
                part = index[int(cu[b]) : int(cu[b + 1])]
                assert part.numel() == 0 or (bounds[b] <= int(part.min()) and int(part.max()) < bounds[b + 1])


def test_mil_yaml_gives_multiview_batches_with_labels(ds_root, labels_csv, tmp_path):
    cfg = published_layout(ds_root, which="VisionClassificationSystem", labels=labels_csv, workers=0)
    cfg["data"]["loader"]["train"]["collate_fn"]["patch_drop_rate"] = 0.0  # kept = foreground, exactly
    dm = ImageDataModule(write_yaml(tmp_path / "mil.yaml", cfg))
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        assert isinstance(loader.collate_fn, MultiViewCollator)
        plan = list(sampler_of(loader))
        ds = loader.dataset
        for idx, batch in zip(plan, loader, strict=True):
            assert set(batch) == MULTIVIEW_KEYS
            items = [ds.get_item(i, epoch=0) for i in idx]
            studies = list(dict.fromkeys(it["study"] for it in items))
            assert batch["study"] == studies
            assert batch["label"].dtype == torch.float32
            assert batch["label"].tolist() == [float(LABELS[s]) for s in studies]
            assert batch["series_cu_seqlens"].dtype == torch.int32
            kept = [int((it["filtered"] == 0).sum()) for it in items]
            assert batch["series_cu_seqlens"].tolist() == [0, *torch.tensor(kept).cumsum(0).tolist()]
    # validation: every image once, in order
    val_plan = [i for b in sampler_of(dm.val_dataloader()) for i in b]
    assert sorted(val_plan) == list(range(len(dm.val_dataset)))


def test_config_forms_and_seeding(ds_root):
    from omegaconf import OmegaConf

    cfg = published_layout(ds_root, which="VisionClassificationSystem", workers=0)
    plans = []
    for form in (cfg, OmegaConf.create(cfg), ImageDataModule(cfg).cfg):
        dm = ImageDataModule(form)
        dm.setup("fit")
        plans.append(list(sampler_of(dm.train_dataloader())))
    assert plans[0] == plans[1] == plans[2]
    other = ImageDataModule(published_layout(ds_root, which="X", workers=0, seed=7))
    other.setup()
    assert sampler_of(other.train_dataloader()).seed == 7
    # the published seed arithmetic: each call of train_dataloader() uses seed + calls so far
    dm = ImageDataModule(cfg)
    dm.setup("fit")
    assert [sampler_of(dm.train_dataloader()).seed for _ in range(3)] == [42, 43, 44]


def test_auto_workers_and_default_collator(ds_root):
    import os

    cfg = published_layout(ds_root, which="X")
    cfg["data"]["loader"]["train"]["num_workers"] = "auto"
    del cfg["data"]["loader"]["train"]["collate_fn"]
    dm = ImageDataModule(cfg)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.num_workers == min(8, (os.cpu_count() or 2) // 2)
    assert isinstance(loader.collate_fn, MultiViewCollator)


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        (lambda c: c["data"].pop("data_dir"), ConfigError, "data.data_dir"),
        (lambda c: c["infra"].update(seed="x"), ConfigError, "infra.seed"),
        (lambda c: c["data"]["dataset"]["train"]["params"].update(crop=True), ConfigError, "crop"),
        (lambda c: c["data"]["loader"]["train"].update(workers=2), ConfigError, "workers"),
        (lambda c: c["data"]["loader"]["val"].update(collate_fn={"bogus": 1}), ConfigError, "collate_fn"),
        (lambda c: c["data"].update(data_dir="/nonexistent/ds"), MetadataNotFoundError, "metadata.json"),
    ],
)
def test_config_errors_name_the_key(ds_root, change, error, words):
    cfg = published_layout(ds_root, which="X", workers=0)
    change(cfg)
    with pytest.raises(error, match=words.replace(".", r"\.")):
        dm = ImageDataModule(cfg)
        dm.setup("fit")
        dm.train_dataloader()
        dm.val_dataloader()


def test_yaml_path_errors(tmp_path):
    with pytest.raises(MissingFileError, match="no-such.yaml"):
        ImageDataModule(tmp_path / "no-such.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        ImageDataModule(bad)
    with pytest.raises(ConfigError, match="before setup"):
        ImageDataModule({"data": {"data_dir": str(tmp_path)}}).train_dataloader()
    assert issubclass(MetadataNotFoundError, FileNotFoundError) and issubclass(ConfigError, ValueError)


def test_without_lightning_the_package_imports_and_the_class_says_what_to_install():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["lightning"] = sys.modules["lightning.pytorch"] = sys.modules["pytorch_lightning"] = None
        import neurovfm.datasets as d
        loaded = [m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in ("lightning", "pytorch_lightning")]
        assert not loaded, loaded
        try:
            d.ImageDataModule
        except ImportError as e:
            print("hint:", e)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=package_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'pip install "neurovfm[lightning]"' in out.stdout


def _tiny_module(base: type) -> Any:
    class Tiny(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(1024, 1)
            self.seen: list[tuple[int, list[str]]] = []

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if isinstance(batch, tuple):
                batch = batch[0]
            self.seen.append((self.current_epoch, list(batch["path"])))
            return self.lin(batch["img"]).mean()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            if isinstance(batch, tuple):
                batch = batch[0]
            self.log("val_loss", self.lin(batch["img"]).mean(), batch_size=len(batch["path"]))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Tiny()


@pytest.mark.parametrize("package", ["lightning.pytorch", "pytorch_lightning"])
@pytest.mark.parametrize("which", ["VisionPretrainingSystem", "VisionClassificationSystem"])
def test_trainer_fit_two_epochs_two_workers(ds_root, labels_csv, package, which, tmp_path):
    import importlib

    pl = importlib.import_module(package)
    cfg = published_layout(ds_root, which=which, labels=labels_csv)
    cfg["data"]["dataset"]["train"]["params"]["max_crop_size"] = [20, 20, 20]
    cfg["data"]["loader"]["train"]["drop_last"] = False
    dm = ImageDataModule(cfg)
    model = _tiny_module(pl.LightningModule)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.state.finished
    epochs = [[p for e, ps in model.seen if e == ep for p in ps] for ep in (0, 1)]
    every = sorted(dm.train_dataset.get_item(i)["path"] for i in range(len(dm.train_dataset)))
    assert sorted(epochs[0]) == sorted(epochs[1]) == every  # every image once per epoch
    assert epochs[0] != epochs[1]  # Lightning's set_epoch reached the study sampler
    assert trainer.global_step == len(model.seen)


for _mark in LIGHTNING_WARNINGS:
    test_trainer_fit_two_epochs_two_workers = _mark(test_trainer_fit_two_epochs_two_workers)

DDP_SCRIPT = """
import json, sys
import torch
import lightning.pytorch as pl
from neurovfm.datasets import ImageDataModule

cfg = json.loads(open(sys.argv[1]).read())
out_dir = sys.argv[2]


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(1024, 1)
        self.seen = {}

    def training_step(self, batch, batch_idx):
        batch = batch[0] if isinstance(batch, tuple) else batch
        self.seen.setdefault(self.current_epoch, []).append(list(batch["study"]))
        return self.lin(batch["img"]).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


if __name__ == "__main__":
    model = Tiny()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=ImageDataModule(cfg))
    with open(f"{out_dir}/rank{trainer.global_rank}.json", "w") as f:
        json.dump({"seen": model.seen, "world": trainer.world_size}, f)
"""


def test_lightning_ddp_two_processes(ds_root, tmp_path):
    """Lightning's DDP strategy, 2 CPU processes (gloo), 2 workers each, 2 epochs: the
    study sampler rebuilt by Lightning keeps its seed; ranks disjoint, all studies covered."""
    cfg = published_layout(ds_root, which="VisionClassificationSystem")
    cfg["data"]["loader"]["train"].update(batch_size=1, drop_last=False)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)

    def run() -> list[dict[str, Any]]:
        out = subprocess.run(
            [sys.executable, "ddp.py", "cfg.json", str(tmp_path)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=package_env(PL_DISABLE_FORK="1"),
            timeout=400,
        )
        assert out.returncode == 0, out.stderr[-4000:]
        return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    ranks = run()
    assert all(r["world"] == 2 for r in ranks)
    studies = set(LABELS)
    for ep in ("0", "1"):
        per_rank = [r["seen"][ep] for r in ranks]
        assert len(per_rank[0]) == len(per_rank[1]) == 2  # 4 studies, batch 1, 2 ranks: equal counts
        flat = [s for batches in per_rank for b in batches for s in b]
        assert sorted(flat) == sorted(studies)  # disjoint and every study covered
    order = [[s for b in r["seen"][ep] for s in b] for r in ranks for ep in ("0", "1")]
    assert order[0] != order[1] or order[2] != order[3]  # a new order per epoch
    again = run()  # the sampler's order is the seeded one: a rerun gives the same batches
    assert again == ranks
