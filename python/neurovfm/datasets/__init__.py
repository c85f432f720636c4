"""Training data from the neurovfm cache (this package imports torch).

* :class:`ImageDataset`: items of 4x16x16 tokens built by one fused pass over the
  memory-mapped uint8 cache (random crop, flips, H/W swap, uint8 -> float32).
* :class:`StudyAwareBatchSampler`: batches of whole studies, equal batch counts
  on every DDP rank.
* :class:`ImageDataModule` (Lightning, ``pip install "neurovfm[lightning]"``): the
  published NeuroVFM DataModule, from its YAML configuration; imported on first use,
  so this package needs no Lightning until then.
* :func:`collate_padded` and :func:`collate_packed`: batches of items with
  different token counts. A DataLoader over an ImageDataset needs one
  (``collate_fn=dataset.collate_fn``): PyTorch's default collate cannot stack them.

:data:`TRAINING_EXAMPLE` is the README's training example as runnable code (the tests
run it as written, with only the two paths replaced). Under DDP (torchrun), the
sampler takes the world size and rank from ``torch.distributed``; every rank yields
the same number of batches.
"""

from typing import TYPE_CHECKING, Any

try:
    import torch as _torch  # noqa: F401
except ImportError as _err:  # pragma: no cover - only without torch (tests/test_datasets_frictions.py)
    raise ImportError(
        "neurovfm.datasets needs PyTorch, which is not installed: pip install 'neurovfm[torch]' "
        "(the rest of neurovfm works without it)"
    ) from _err

from .collate import collate_packed, collate_padded, labels_to_tensor
from .dataset import ImageDataset
from .labels import load_study_labels
from .multiblock import MultiBlockCollator
from .multiview import MultiViewCollator
from .sampler import StudyAwareBatchSampler
from .scan_dataset import ScanDataset

if TYPE_CHECKING:
    from .datamodule import ImageDataModule

__all__ = [
    "TRAINING_EXAMPLE",
    "ImageDataModule",
    "ImageDataset",
    "MultiBlockCollator",
    "MultiViewCollator",
    "ScanDataset",
    "StudyAwareBatchSampler",
    "collate_packed",
    "collate_padded",
    "labels_to_tensor",
    "load_study_labels",
]


def __getattr__(name: str) -> Any:
    # ImageDataModule imports Lightning: only when it is asked for.
    if name == "ImageDataModule":
        from .datamodule import ImageDataModule

        return ImageDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: The README's training example, as runnable code. The ``__main__`` guard lets the
#: DataLoader workers start by ``spawn`` (macOS, Windows), which re-imports the script.
TRAINING_EXAMPLE = """\
import functools

from torch.utils.data import DataLoader

from neurovfm.datasets import ImageDataset, StudyAwareBatchSampler, collate_packed

data_dir = "path/to/dataset"        # metadata.json, raw/, processed/ (the cache)
labels = "path/to/labels.csv"       # study,label

if __name__ == "__main__":  # workers started by spawn (macOS, Windows) re-import this file
    dataset = ImageDataset(data_dir, random_crop=True, augment=True, study_labels=labels, seed=0)
    sampler = StudyAwareBatchSampler(dataset, batch_size=16, shuffle=True, seed=0)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=2,
        persistent_workers=True,
        # a collate function is required (variable token counts); dataset.collate_fn is collate_packed
        collate_fn=functools.partial(collate_packed, drop_background=True),
    )
    for epoch in range(2):
        sampler.set_epoch(epoch)  # new study order; also sets the dataset's epoch (new crops)
        for batch in loader:
            tokens = batch["img"]             # [T, 1024] float32, all images' tokens
            cu_seqlens = batch["cu_seqlens"]  # [B + 1] int32, per image (per study: cu_seqlens_study)
            coords = batch["coords"]          # [T, 3] token (d, h, w) positions
            labels_b = batch["label"]         # [B] tensor
            # model(tokens, coords, cu_seqlens, batch["max_seqlen"]) ...
"""
