"""``ImageDataModule``: the published NeuroVFM Lightning DataModule over this library's dataset.

A drop-in for ``neurovfm.datasets.ImageDataModule`` of the published NeuroVFM code
(GitHub ``MLNeurosurg/neurovfm``): the same constructor (one configuration in the
published YAML layout), the same datasets, samplers and collators for the same keys.
It needs Lightning (``pip install "neurovfm[lightning]"``); ``neurovfm.datasets``
imports this module only when ``ImageDataModule`` is first used.

The class derives from both ``pytorch_lightning.LightningDataModule`` (what the
published training scripts' ``pl.Trainer`` checks for) and
``lightning.pytorch.LightningDataModule`` when both packages are installed, so either
``Trainer`` accepts it.

The configuration (``data`` and ``infra`` are read; everything else is ignored, except
``system.which``)::

    data:
      data_dir: /path/to/dataset        # metadata.json, raw/, processed/ (required)
      use_cache: true                   # ImageDataset(use_cache=...), default true
      fallback_to_raw: true             # ImageDataset(fallback_to_raw=...), default true
      study_labels: labels.csv          # optional, given to both datasets
      dataset:
        train: {params: {...}}          # ImageDataset keyword arguments
        val: {params: {...}}
      loader:
        train:                          # DataLoader keyword arguments, plus:
          batch_size: 8
          num_workers: auto             # min(8, cpu_count // 2), as published
          use_study_sampler: true       # StudyAwareBatchSampler (shuffled for train)
          collate_fn: {remove_background: true, patch_drop_rate: 0.1, ...}
        val: {...}
    infra:
      seed: 42                          # samplers, item draws, worker seeds
    system:
      which: VisionPretrainingSystem    # -> MultiBlockCollator (Vol-JEPA masks)

Deliberate differences from the published module (all documented in the README's
"Coming from the published NeuroVFM code"):

* A ``data.loader.<split>`` without ``collate_fn`` gets ``MultiViewCollator()``
  (PyTorch's default collate cannot batch items of different token counts; the
  published loader then fails at the first batch).
* ``infra.seed`` also seeds the datasets (``ImageDataset(seed=...)``, unless the
  params give one): every item's crop and flips come from ``(seed, epoch, index)``,
  whatever worker builds it. Each worker's ``random``/``numpy``/``torch`` generators are
  seeded with ``seed + 1000 * rank + worker_id`` (the published code gives every
  worker the same seed, so user transforms drew the same numbers in every worker).
* Under DDP with the study sampler, Lightning's distributed-sampler injection rebuilds
  the batch sampler with the rank and world size (and the seed and shuffle kept); the
  epoch reaches the sampler through Lightning's ``set_epoch`` calls, so every epoch has
  a new study order. The published sampler lost its seed there.
* A configuration key that is neither a DataLoader nor an ImageDataset argument is a
  :class:`~neurovfm.errors.ConfigError` naming it, raised when the loader is built.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..errors import ConfigError, MetadataNotFoundError, MissingFileError
from .dataset import ImageDataset
from .multiblock import MultiBlockCollator, pretraining_mask_config
from .multiview import MultiViewCollator
from .sampler import StudyAwareBatchSampler

log = logging.getLogger(__name__)

__all__ = ["PRETRAINING_SYSTEM", "ImageDataModule", "plain_config"]

#: ``system.which`` of the published Vol-JEPA pretraining system: its loaders get
#: :class:`MultiBlockCollator` instead of :class:`MultiViewCollator`.
PRETRAINING_SYSTEM = "VisionPretrainingSystem"

_LIGHTNING_HINT = 'ImageDataModule needs Lightning: pip install "neurovfm[lightning]"'


def _data_module_bases() -> tuple[type, ...]:
    bases: list[type] = []
    try:
        import pytorch_lightning

        bases.append(pytorch_lightning.LightningDataModule)
    except ImportError:
        pass
    try:
        import lightning.pytorch

        bases.append(lightning.pytorch.LightningDataModule)
    except ImportError:
        pass
    if not bases:
        raise ImportError(_LIGHTNING_HINT)
    return tuple(bases)


def plain_config(config: Any, *, where: str = "config") -> dict[str, Any]:
    """``config`` as plain dicts and lists: a path to a YAML file, an OmegaConf
    ``DictConfig`` (resolved) or any mapping."""
    if isinstance(config, (str, os.PathLike)):
        import yaml

        path = os.fspath(config)
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f)
        except FileNotFoundError:
            raise MissingFileError(f"{path}: no such configuration file") from None
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read the YAML configuration ({e})") from e
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: the configuration is not a mapping of keys to values")
        return plain_config(loaded, where=path)
    if type(config).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(config, resolve=True)
    if not isinstance(config, Mapping):
        raise ConfigError(
            f"{where}: expected a mapping (dict, OmegaConf config or YAML path), got {type(config).__name__}"
        )
    return {str(k): _plain(v) for k, v in config.items()}


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _section(cfg: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The mapping at dotted ``path`` (empty when absent or null)."""
    cur: Any = cfg
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, Mapping) else None
        if cur is None:
            return {}
    if not isinstance(cur, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {cur!r}")
    return dict(cur)


def _pretraining_mask_config(collate: Mapping[str, Any]) -> dict[str, Any]:
    """The published pretraining system's one Vol-JEPA mask configuration, with the keys the
    loader's ``collate_fn`` section sets."""
    return pretraining_mask_config(
        drop_rate=collate.get("patch_drop_rate", 0.0),
        remove_background=collate.get("remove_background", True),
        min_filt_ratio=collate.get("min_filt_ratio", 0.0),
        switch_enc_pred=collate.get("switch_enc_pred", [False]),
    )


class _WorkerSeeder:
    """``worker_init_fn``: seeds ``random``, NumPy and torch in each DataLoader worker."""

    def __init__(self, seed: int, rank: int) -> None:
        self.seed, self.rank = int(seed), int(rank)

    def __call__(self, worker_id: int) -> None:
        s = self.seed + 1000 * self.rank + int(worker_id)
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)


class _EpochHook:
    """What Lightning finds as ``batch_sampler.sampler``: it calls ``set_epoch`` there
    each epoch (never on the batch sampler itself)."""

    def __init__(self, owner: StudyAwareBatchSampler) -> None:
        self._owner = owner

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)


def _lightning_study_sampler(
    dataset: ImageDataset, batch_size: int, *, shuffle: bool, seed: int, drop_last: bool
) -> StudyAwareBatchSampler:
    """A StudyAwareBatchSampler Lightning can rebuild for DDP without losing its settings.

    Lightning re-creates a custom batch sampler as ``type(s)(sampler, batch_size=...,
    drop_last=...)`` with its ``DistributedSampler``; the class made here takes the rank
    and world size from that sampler and keeps ``shuffle`` and ``seed``.
    """

    class LightningStudySampler(StudyAwareBatchSampler):
        def __init__(self, source: Any, batch_size: int, drop_last: bool = False) -> None:
            if isinstance(source, DistributedSampler):
                super().__init__(
                    source.dataset,
                    batch_size,
                    shuffle=shuffle,
                    seed=seed,
                    drop_last=drop_last,
                    num_replicas=source.num_replicas,
                    rank=source.rank,
                )
            else:
                super().__init__(source, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
            self.sampler = _EpochHook(self)

    return LightningStudySampler(dataset, batch_size, drop_last=drop_last)


_DATALOADER_ARGS = frozenset(inspect.signature(DataLoader.__init__).parameters) - {"self", "dataset"}
_DATASET_ARGS = frozenset(inspect.signature(ImageDataset.__init__).parameters) - {"self", "data_dir"}


class ImageDataModule(*_data_module_bases()):  # type: ignore[misc]
    """Train and validation loaders of a dataset folder, from a published NeuroVFM config.

    Parameters
    ----------
    config
        The configuration (see the module docstring): an OmegaConf ``DictConfig``, a
        mapping, or the path of a YAML file such as the published
        ``examples/config/pretrain.yaml`` or ``mil.yaml``. Kept as ``self.config``.

    ``setup('fit')`` (or ``setup()``) builds ``train_dataset`` and ``val_dataset``
    (:class:`ImageDataset`); ``train_dataloader()`` and ``val_dataloader()`` build the
    loaders: :class:`StudyAwareBatchSampler` when ``use_study_sampler`` (train shuffled,
    ``drop_last`` default true; val in order, default false), the collator from
    ``collate_fn`` (:class:`MultiBlockCollator` with the published mask configuration
    when ``system.which`` is ``VisionPretrainingSystem``, else
    :class:`MultiViewCollator`), seeded workers and a seeded generator.
    """

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.cfg = plain_config(config)
        data = self.cfg.get("data")
        if not isinstance(data, Mapping) or not data.get("data_dir"):
            raise ConfigError("config: data.data_dir is required (the dataset folder with metadata.json)")
        seed = _section(self.cfg, "infra").get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"infra.seed: expected an integer, got {seed!r}")
        self.seed = seed
        self.data_dir = Path(os.fspath(data["data_dir"]))
        system = _section(self.cfg, "system").get("which", "")
        self.pretraining = system == PRETRAINING_SYSTEM
        self.train_dataset: ImageDataset | None = None
        self.val_dataset: ImageDataset | None = None
        self._calls = {"train": 0, "val": 0}

    # -- datasets ---------------------------------------------------------------------------------
    def _dataset(self, split: str) -> ImageDataset:
        data = self.cfg["data"]
        params = _section(self.cfg, f"data.dataset.{split}.params")
        unknown = sorted(set(params) - _DATASET_ARGS)
        if unknown:
            raise ConfigError(
                f"data.dataset.{split}.params: {', '.join(unknown)} "
                f"{'is not an ImageDataset argument' if len(unknown) == 1 else 'are not ImageDataset arguments'}"
            )
        if data.get("study_labels") is not None:
            params["study_labels"] = data["study_labels"]
        params.setdefault("seed", self.seed)
        return ImageDataset(
            self.data_dir,
            use_cache=data.get("use_cache", True),
            fallback_to_raw=data.get("fallback_to_raw", True),
            **params,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the train and validation datasets (``stage`` ``'fit'`` or ``None``)."""
        if stage in ("fit", None):
            if not (self.data_dir / "metadata.json").exists():
                raise MetadataNotFoundError(
                    f"{self.data_dir / 'metadata.json'}: no metadata.json (data.data_dir). Create it with "
                    "DatasetMetadata.from_directory(data_dir, mode_mapping).save() or `neurovfm metadata`"
                )
            self.train_dataset = self._dataset("train")
            log.info("Train dataset: %d images", len(self.train_dataset))
            self.val_dataset = self._dataset("val")
            log.info("Val dataset: %d images", len(self.val_dataset))

    # -- loaders ----------------------------------------------------------------------------------
    @staticmethod
    def get_seed_worker_and_generator(seed: int, rank: int = 0) -> dict[str, Any]:
        """``worker_init_fn`` and ``generator`` DataLoader arguments seeded from ``seed``."""
        g = torch.Generator()
        g.manual_seed(int(seed))
        return {"worker_init_fn": _WorkerSeeder(seed, rank), "generator": g}

    def _rank(self) -> int:
        trainer = getattr(self, "_trainer", None)
        if trainer is not None:
            return int(getattr(trainer, "global_rank", 0))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return int(torch.distributed.get_rank())
        return 0

    def _collator(self, split: str, params: Mapping[str, Any]) -> Callable[[list[Any]], Any]:
        if self.pretraining:
            return MultiBlockCollator(
                [_pretraining_mask_config(params)],
                apply_masks_internally=bool(params.get("apply_masks_internally", False)),
            )
        try:
            return MultiViewCollator(**params)
        except TypeError as e:
            raise ConfigError(f"data.loader.{split}.collate_fn: {e}") from e

    def _loader(self, split: str, dataset: ImageDataset | None) -> DataLoader[Any]:
        if dataset is None:
            raise ConfigError(f"{split}_dataloader() before setup('fit'): call dm.setup('fit') first")
        params = _section(self.cfg, f"data.loader.{split}")
        collate = params.pop("collate_fn", None)
        if collate is not None and not isinstance(collate, Mapping):
            raise ConfigError(f"data.loader.{split}.collate_fn: expected a mapping of collator arguments")
        params["collate_fn"] = self._collator(split, collate or {})
        seed = self.seed + self._calls[split]  # the published seed arithmetic
        self._calls[split] += 1
        if params.pop("use_study_sampler", False):
            batch_size = params.pop("batch_size", 1)
            drop_last = bool(params.pop("drop_last", split == "train"))
            params.pop("shuffle", None)
            params["batch_sampler"] = _lightning_study_sampler(
                dataset, batch_size, shuffle=split == "train", seed=seed, drop_last=drop_last
            )
        if params.get("num_workers") == "auto":
            params["num_workers"] = min(8, (os.cpu_count() or 2) // 2)
        unknown = sorted(set(params) - _DATALOADER_ARGS)
        if unknown:
            raise ConfigError(f"data.loader.{split}: {', '.join(unknown)} not DataLoader arguments")
        params.update(self.get_seed_worker_and_generator(seed, self._rank()))
        log.info("%s loader: %s", split, {k: v for k, v in params.items() if k != "generator"})
        return DataLoader(dataset, **params)

    def train_dataloader(self) -> DataLoader[Any]:
        """The training loader (see the class docstring)."""
        return self._loader("train", self.train_dataset)

    def val_dataloader(self) -> DataLoader[Any]:
        """The validation loader (see the class docstring)."""
        return self._loader("val", self.val_dataset)
