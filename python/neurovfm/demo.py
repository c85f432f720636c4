"""A small dataset made from the built-in phantoms, to try every command and quick start on.

:func:`write_demo` (``neurovfm demo DIR``) writes, in a few seconds::

    DIR/raw/ct_nifti/head.nii.gz          a head CT as NIfTI             (mode ct)
    DIR/raw/ct_dicom/head/IM0001.dcm ...  another head CT, a DICOM series (mode ct)
    DIR/raw/mr_nifti/t1.nii.gz            a sagittal T1 MR as NIfTI      (mode mri)
    DIR/raw/mr_dicom/t1/IM0001.dcm ...    another T1 MR, a DICOM series  (mode mri)
    DIR/modes.csv                         study,mode  (neurovfm metadata DIR --modes DIR/modes.csv)
    DIR/labels.csv                        study,label (ImageDataset(study_labels=...))
    DIR/manifest.csv                      path,mode,id (neurovfm prepare --manifest DIR/manifest.csv)

The studies are :func:`neurovfm.phantom.make_ct_phantom` and
:func:`~neurovfm.phantom.make_mri_phantom` at a coarse grid, each study with its own
noise seed; DIR is then a dataset folder (``raw/<study>/``) as
:class:`~neurovfm.data.DatasetMetadata` reads it.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from .errors import InvalidArgumentError
from .phantom import make_ct_phantom, make_mri_phantom, write_dicom_series

__all__ = ["DEMO_STUDIES", "DemoDataset", "write_demo"]

#: The demo's studies: (study, mode, label, kind, image name, seed).
DEMO_STUDIES: tuple[tuple[str, str, int, str, str, int], ...] = (
    ("ct_nifti", "ct", 1, "nifti", "head", 0),
    ("ct_dicom", "ct", 0, "dicom", "head", 1),
    ("mr_nifti", "mri", 1, "nifti", "t1", 2),
    ("mr_dicom", "mri", 0, "dicom", "t1", 3),
)

# Small grids: a few seconds for all four studies, and still several tokens each.
_CT_SHAPE, _CT_SPACING = (96, 96, 40), (2.0, 2.0, 3.0)
_MR_SHAPE, _MR_SPACING = (56, 80, 80), (2.4, 2.4, 2.4)


@dataclass
class DemoDataset:
    """What :func:`write_demo` wrote (every path absolute)."""

    root: Path
    scans: dict[str, Path] = field(default_factory=dict)  # study -> what to read (file or series folder)
    modes: dict[str, str] = field(default_factory=dict)  # study -> 'ct' | 'mri'
    labels: dict[str, int] = field(default_factory=dict)  # study -> label
    modes_csv: Path = Path()
    labels_csv: Path = Path()
    manifest_csv: Path = Path()

    def describe(self) -> str:
        """The lines ``neurovfm demo`` prints."""
        lines = [f"demo dataset in {self.root}:"]
        for study, path in self.scans.items():
            rel = path.relative_to(self.root).as_posix()
            if path.is_dir():
                rel += f"/ ({sum(1 for _ in path.iterdir())} DICOM files)"
            lines.append(f"  {rel:<40} mode {self.modes[study]:<3}  label {self.labels[study]}")
        for what, p in (
            ("study,mode", self.modes_csv),
            ("study,label", self.labels_csv),
            ("path,mode,id", self.manifest_csv),
        ):
            lines.append(f"  {p.relative_to(self.root).as_posix():<40} {what}")
        return "\n".join(lines)


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def write_demo(out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> DemoDataset:
    """Write the demo dataset into ``out_dir`` (created if needed; see the module's doc).

    ``out_dir/raw`` must not exist yet unless ``overwrite`` is true (then the demo's own
    files are written again; nothing else is removed). Returns a :class:`DemoDataset`.
    """
    root = Path(out_dir).absolute()
    raw = root / "raw"
    if raw.exists() and not overwrite:
        raise InvalidArgumentError(f"{raw} exists already (pass overwrite=True, or --force, to write it again)")
    if root.exists() and not root.is_dir():
        raise InvalidArgumentError(f"{root} is a file, not a folder")
    demo = DemoDataset(root)
    for study, mode, label, kind, name, seed in DEMO_STUDIES:
        folder = raw / study
        folder.mkdir(parents=True, exist_ok=True)
        if mode == "ct":
            img = make_ct_phantom(shape=_CT_SHAPE, spacing=_CT_SPACING, seed=seed)
        else:
            img = make_mri_phantom(shape=_MR_SHAPE, spacing=_MR_SPACING, seed=seed)
        if kind == "nifti":
            path = folder / f"{name}.nii.gz"
            sitk.WriteImage(img, os.fspath(path), useCompression=True)
        else:
            path = folder / name
            write_dicom_series(
                img,
                path,
                seed=seed,
                modality="CT" if mode == "ct" else "MR",
                description=f"DEMO {'HEAD CT' if mode == 'ct' else 'T1'}",
            )
        demo.scans[study], demo.modes[study], demo.labels[study] = path, mode, label
    demo.modes_csv, demo.labels_csv, demo.manifest_csv = (root / n for n in ("modes.csv", "labels.csv", "manifest.csv"))
    _write_csv(demo.modes_csv, ["study", "mode"], [[s, m] for s, m in demo.modes.items()])
    _write_csv(demo.labels_csv, ["study", "label"], [[s, v] for s, v in demo.labels.items()])
    _write_csv(
        demo.manifest_csv,
        ["path", "mode", "id"],
        [[p.relative_to(root).as_posix(), demo.modes[s], s] for s, p in demo.scans.items()],
    )
    return demo
