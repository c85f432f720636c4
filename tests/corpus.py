"""The real-scan corpus as the tests and benchmarks use it (NEUROVFM_TEST_DATA)."""

from __future__ import annotations

#: Every volume of the corpus that the reference reads: (path relative to the corpus, mode).
VOLUMES = [
    ("ct/phantom_head_1mm.nii.gz", "ct"),
    ("ct/body_small.nii.gz", "ct"),
    ("ct/phantom_head_5mm", "ct"),
    ("ct/head_tilt_ge", "ct"),
    ("ct/body_j2k", "ct"),
    ("mr/MR_Gd.nii.gz", "mri"),
    ("mr/stroke/T1.nii.gz", "mri"),
    ("mr/stroke/T2.nii.gz", "mri"),
    ("mr/stroke/FLAIR.nii.gz", "mri"),
    ("mr/sag_mprage_peds", "mri"),
    ("mr/sag_t1_2d_thick", "mri"),
    ("mr/enhanced_multiframe_t1.dcm", "mri"),
    ("edge/nifti/minimal.nii.gz", "mri"),
    ("edge/nifti/avg152T1_LR_nifti.nii.gz", "mri"),
    ("edge/nifti/avg152T1_RL_nifti.nii.gz", "mri"),
    ("edge/nifti/anatomical.nii", "mri"),
]

#: The dataset bench/bench_cache.py caches (each copied --copies times, one study per scan).
CACHE_BENCH = [
    ("ct/phantom_head_1mm.nii.gz", "ct"),
    ("ct/phantom_head_5mm", "ct"),
    ("ct/body_small.nii.gz", "ct"),
    ("ct/head_tilt_ge", "ct"),
    ("mr/sag_mprage_peds", "mri"),
    ("mr/sag_t1_2d_thick", "mri"),
    ("mr/stroke/T1.nii.gz", "mri"),
    ("mr/stroke/FLAIR.nii.gz", "mri"),
    ("mr/MR_Gd.nii.gz", "mri"),
]

#: The dataset bench/bench_dataset.py draws training items from.
DATASET_BENCH = [
    ("ct/phantom_head_1mm.nii.gz", "ct"),
    ("ct/head_tilt_ge", "ct"),
    ("mr/sag_mprage_peds", "mri"),
    ("mr/MR_Gd.nii.gz", "mri"),
    ("mr/stroke/T1.nii.gz", "mri"),
]

assert {p for p, _ in CACHE_BENCH + DATASET_BENCH} <= {p for p, _ in VOLUMES}
