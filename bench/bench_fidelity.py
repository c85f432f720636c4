#!/usr/bin/env python3
"""Fidelity report: how many of the cache's bytes are the reference cache's bytes, per
corpus volume (docs/numbers.md, README "Fidelity").

For every volume of the real corpus it prints:

- ``formula``: share of the library's cache bytes (``prepare_for_inference(quantize=True)``,
  what ``build_cache`` writes) equal to the reference's formula
  ``(arr * 255).astype(np.uint8)`` of the float64 arrays, applied to the library's own
  resampled image (all windows together). 100 % is the contract.
- ``paths``: voxels of ``load_image(path)`` that differ from
  ``preprocess_image(<the file read by SimpleITK>)`` (0 is the contract).
- ``vs sitk``: share of cache bytes equal to the whole reference pipeline's (SimpleITK's
  B-spline resampling, then the formula), and for integer inputs the share of resampled
  voxels that differ from SimpleITK's, with the share of voxels whose SimpleITK float64
  value lies within 1e-6 of an integer (where truncation is floating-point noise: the one
  known difference).

Run it from the repository root (the reference is the tests' ``tests/reference.py``):

    PYTHONPATH=python python bench/bench_fidelity.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from _common import corpus_dir  # noqa: E402  (paths: python/, tests/)

import neurovfm  # noqa: E402
import reference as R  # noqa: E402  (tests/reference.py: the reference pipeline)
from corpus import VOLUMES  # noqa: E402  (tests/corpus.py: every volume of the corpus)

from neurovfm.data import load_image, prepare_for_inference  # noqa: E402

try:
    from neurovfm.data import preprocess_image  # noqa: E402
except ImportError:  # pragma: no cover
    preprocess_image = None


def _share_equal(a_list, b_list) -> float:
    eq = sum(int(np.count_nonzero(a == b)) for a, b in zip(a_list, b_list))
    return eq / sum(a.size for a in a_list)


def report(corpus: Path, rel: str, mode: str) -> dict:
    path = corpus / rel
    t0 = time.perf_counter()
    ours = load_image(path)
    cache, _mask, _view = prepare_for_inference(ours, mode, quantize=True)
    t_ours = time.perf_counter() - t0
    formula, _, _ = R.ref_cache(ours, mode)
    row = {"volume": rel, "mode": mode, "pixel": ours.GetPixelIDTypeAsString()}
    row["formula_equal"] = _share_equal(cache, formula)
    t0 = time.perf_counter()
    raw = R.ref_read(path)
    ref = R.ref_preprocess(raw)
    ref_cache, _, _ = R.ref_cache(ref, mode)
    row["seconds"] = {"ref": time.perf_counter() - t0, "ours": t_ours}
    ref64 = R.ref_resample_float64(raw)
    if preprocess_image is not None:
        other = preprocess_image(raw)  # (kept alive while its array view is read)
        a, b = sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(other)
        row["paths_voxels_differ"] = int(np.count_nonzero(a != b))
    row["sitk_cache_equal"] = _share_equal(cache, ref_cache)
    a, b = sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(ref)
    v = sitk.GetArrayViewFromImage(ref64)
    row["sitk_voxels_differ"] = float(np.count_nonzero(a != b)) / a.size
    if np.issubdtype(b.dtype, np.integer):
        near = np.abs(v - np.round(v)) <= 1e-6
        row["near_integer"] = float(np.count_nonzero(near)) / a.size
        row["differ_not_near_integer"] = int(np.count_nonzero((a != b) & ~near))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("--corpus", default=str(corpus_dir()), help="the corpus (default $NEUROVFM_TEST_DATA)")
    args = ap.parse_args(argv)
    corpus = Path(args.corpus)
    if not corpus.is_dir():
        print(f"no corpus at {corpus}: set NEUROVFM_TEST_DATA")
        return 2
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    import logging

    logging.getLogger("neurovfm").setLevel(logging.ERROR)
    print(f"neurovfm {neurovfm.__version__} from {Path(neurovfm.__file__).parent}")
    head = (
        f"{'volume':<38} {'pixel':<16} {'formula':>8} {'paths':>6} {'vs sitk':>8} {'vox':>7} {'near':>7} {'other':>5}"
        f" {'ref s':>7} {'ours s':>7} {'ratio':>6}"
    )
    print(head)
    rows = []
    t0 = time.perf_counter()
    for rel, mode in VOLUMES:
        if not (corpus / rel).exists():
            print(f"{rel:<38} (missing)")
            continue
        r = report(corpus, rel, mode)
        rows.append(r)
        near = f"{100 * r['near_integer']:6.2f}%" if "near_integer" in r else "      -"
        other = str(r.get("differ_not_near_integer", "-"))
        sec = r["seconds"]
        print(
            f"{rel:<38} {r['pixel']:<16} {100 * r['formula_equal']:7.3f}% {r.get('paths_voxels_differ', '-'):>6} "
            f"{100 * r['sitk_cache_equal']:7.3f}% {100 * r['sitk_voxels_differ']:6.2f}% {near} {other:>5}"
            f" {sec['ref']:7.3f} {sec['ours']:7.3f} {sec['ref'] / sec['ours']:5.1f}x"
        )
    ok = sum(r["formula_equal"] == 1.0 for r in rows)
    print(f"{ok} of {len(rows)} volumes: cache bytes == the reference formula ({time.perf_counter() - t0:.0f} s)")
    print(
        "columns: formula = cache bytes equal to the formula on our resampled image; paths = voxels where\n"
        "load_image(path) != preprocess_image(SimpleITK read); vs sitk = cache bytes equal to the whole\n"
        "reference pipeline's; vox = resampled voxels != SimpleITK's; near = voxels whose SimpleITK float64\n"
        "value is within 1e-6 of an integer; other = voxels that differ and are not near an integer;\n"
        "ref s / ours s = file to cache bytes, one run each (ours first, so it reads the file cold): the reference's\n"
        "read + preprocess + formula against load_image + prepare_for_inference(quantize=True), and their ratio"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
