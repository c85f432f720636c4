#!/usr/bin/env python3
"""File to tokens: neurovfm against the reference (SimpleITK + NumPy), same process,
same thread count, interleaved runs.

Reference (the tests' own, tests/reference.py, timed stage by stage): sitk.ReadImage /
ImageSeriesReader (GetGDCMSeriesFileNames), sitk.DICOMOrient "RPI", the slice-axis rule, sitk.Resample (sitkBSpline) to 1x1x4 mm, the centred crop,
a float64 NumPy prepare (CT windows / MRI percentiles, clip, normalise, token mask) and
NumPy tokens (reshape/transpose). neurovfm: load_image + prepare_for_inference + tokenize.

Per case it prints the per-stage medians of both, the ratio ref/ours, resampling alone
(in memory, both sides), the decode floor (the time to just get the voxels out of the
file) with "ours minus floor" as a fraction of it, and the peak RSS of each pipeline in
a fresh process. Run it from the repository root:

    PYTHONPATH=python python bench/bench_prepare.py                # all cases, 5 runs
    PYTHONPATH=python python bench/bench_prepare.py --quick        # 2 runs, 2 cases
    PYTHONPATH=python python bench/bench_prepare.py --threads 4 --json out.json

The real corpus comes from $NEUROVFM_TEST_DATA (default ../shared/data from the
repository root); a case whose data is missing is skipped with a message.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from _common import ROOT, corpus_dir, set_threads  # noqa: E402  (paths: python/, tests/)

import neurovfm  # noqa: E402
import reference as R  # noqa: E402  (tests/reference.py: the reference pipeline)

from neurovfm.data import load_image, prepare_for_inference, read_volume, tokenize  # noqa: E402
from neurovfm.data.io import preprocess_volume  # noqa: E402

MIB = 1 << 20


# --- cases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    key: str
    rel: str | None  # path in the corpus; None: the synthetic CT
    mode: str
    what: str

    @property
    def label(self) -> str:
        return f"({self.key}) {self.rel or 'synthetic CT 512x512x300 .nii.gz'}"


CASES = [
    Case("a", "ct/phantom_head_1mm.nii.gz", "ct", "gzip NIfTI CT"),
    Case("b", "mr/sag_mprage_peds", "mri", "DICOM series MR"),
    Case("c", "ct/phantom_head_5mm", "ct", "DICOM series CT"),
    Case("d", None, "ct", "gzip NIfTI CT (synthetic, from neurovfm.phantom)"),
]
QUICK_CASES = "ac"
SYNTHETIC_SHAPE = (512, 512, 300)  # x, y, z
SYNTHETIC_SPACING = (0.45, 0.45, 1.0)
#: The performance budgets (README, Performance).
TARGET_NIFTI, TARGET_DICOM, TARGET_RESAMPLE, TARGET_OVER_FLOOR = 20.0, 10.0, 50.0, 0.5


def make_synthetic(path: Path) -> Path:
    """The 512x512x300 CT (int16 HU, 0.45x0.45x1 mm) of the phantom, as .nii.gz."""
    from neurovfm.phantom import make_ct_phantom

    t0 = time.perf_counter()
    img = make_ct_phantom(shape=SYNTHETIC_SHAPE, spacing=SYNTHETIC_SPACING, seed=7, noise=8.0)
    sitk.WriteImage(img, str(path), useCompression=True)
    print(
        f"wrote the synthetic CT {path} ({path.stat().st_size / MIB:.0f} MiB, {time.perf_counter() - t0:.1f} s, once)",
        flush=True,
    )
    return path


# --- the reference: tests/reference.py, stage by stage ----------------------------------------


def run_ref(path: str, mode: str, keep: bool = False):
    t0 = time.perf_counter()
    img = R.ref_read(path)
    t1 = time.perf_counter()
    rpi = sitk.DICOMOrient(img, "RPI")
    del img
    t2 = time.perf_counter()
    res = R.ref_resample_crop(rpi)
    del rpi
    t3 = time.perf_counter()
    prep = R.ref_prepare(res, mode)
    t4 = time.perf_counter()
    toks = [R.ref_tokenize(a, prep[1]) for a in prep[0]] if prep is not None else None
    t5 = time.perf_counter()
    times = {
        "read": t1 - t0,
        "orient": t2 - t1,
        "resample": t3 - t2,
        "prepare": t4 - t3,
        "tokens": t5 - t4,
        "total": t5 - t0,
    }
    return times, ((prep, toks) if keep else None)


# --- neurovfm -------------------------------------------------------------------------------


def run_ours(path: str, mode: str, keep: bool = False):
    t0 = time.perf_counter()
    img = load_image(path)
    t1 = time.perf_counter()
    prep = prepare_for_inference(img, mode)
    del img
    t2 = time.perf_counter()
    toks = [tokenize(a, prep[1]) for a in prep[0]] if prep is not None else None
    t3 = time.perf_counter()
    times = {"load_image": t1 - t0, "prepare": t2 - t1, "tokenize": t3 - t2, "total": t3 - t0}
    return times, ((prep, toks) if keep else None)


# --- resampling alone, decode floor -----------------------------------------------------------


def resample_ref(img: sitk.Image) -> float:
    t0 = time.perf_counter()
    R.ref_resample_crop(sitk.DICOMOrient(img, "RPI"))
    return time.perf_counter() - t0


def resample_ours(vol) -> float:
    t0 = time.perf_counter()
    preprocess_volume(vol)
    return time.perf_counter() - t0


class DecodeFloor:
    """The time to just get the voxels out of the file, into a buffer allocated once."""

    def __init__(self, path: str):
        self.path = path
        if os.path.isdir(path):
            self.files = sorted(str(p) for p in Path(path).rglob("*") if p.is_file())
            self.kind = f"read all bytes of {len(self.files)} files"
            size = max(os.path.getsize(f) for f in self.files)
        elif path.lower().endswith(".gz"):
            self.files = [path]
            self.kind = "isal.igzip decompress into a buffer"
            with open(path, "rb") as f:  # ISIZE: uncompressed size mod 2**32
                f.seek(-4, 2)
                size = struct.unpack("<I", f.read(4))[0]
            raw = os.path.getsize(path)
            if size < raw:  # the trailer wrapped (over 4 GiB) or lies: grow as needed
                size = 8 * raw
        else:
            self.files = [path]
            self.kind = "read all bytes"
            size = os.path.getsize(path)
        self.buf = memoryview(bytearray(size + 1))

    def __call__(self) -> float:
        t0 = time.perf_counter()
        if self.kind.startswith("isal"):
            from isal import igzip

            with igzip.open(self.path, "rb") as f:
                got = 0
                while True:
                    k = f.readinto(self.buf[got : got + MIB])
                    if not k:
                        break
                    got += k
        else:
            for name in self.files:
                with open(name, "rb", buffering=0) as f:
                    f.readinto(self.buf)
        return time.perf_counter() - t0


# --- peak RSS in a fresh process ----------------------------------------------------------------


def _status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def rss_child(which: str, path: str, mode: str, threads: int) -> None:
    """Run one pipeline once and print {"baseline_mib", "peak_mib"} as JSON."""
    set_threads(threads)
    baseline = _status_mib("VmRSS")
    (run_ref if which == "ref" else run_ours)(path, mode)
    peak = _status_mib("VmHWM")
    if peak is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (MIB if sys.platform == "darwin" else 1024.0)
    print(json.dumps({"baseline_mib": baseline, "peak_mib": peak}))


def measure_rss(which: str, path: str, mode: str, threads: int):
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--rss-child",
        which,
        "--rss-path",
        path,
        "--rss-mode",
        mode,
        "--threads",
        str(threads),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "python"), env.get("PYTHONPATH")]))
    try:
        out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=900)
    except subprocess.TimeoutExpired:
        return None, "timed out"
    if out.returncode != 0:
        lines = (out.stderr or out.stdout).strip().splitlines()
        return None, lines[-1] if lines else f"exit code {out.returncode}"
    return json.loads(out.stdout.strip().splitlines()[-1]), None


# --- driver -----------------------------------------------------------------------------------


def median(xs):
    return statistics.median(xs) if xs else None


def medians(runs: list) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]} if runs else {}


def _err(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def check_outputs(ref_out, ours_out) -> dict:
    """Compare the reference's and neurovfm's outputs of the warm-up runs."""
    (rp, rt), (op, ot) = ref_out, ours_out
    if rp is None or op is None:
        return {"ok": rp is None and op is None, "note": "volume too small for one token"}
    ra, rm, rv = rp
    oa, om, ov = op
    if rv != ov or len(ra) != len(oa) or ra[0].shape != oa[0].shape:
        return {"ok": False, "note": f"shapes differ: ref {ra[0].shape} view {rv}, ours {oa[0].shape} view {ov}"}
    diff = max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(ra, oa))
    tok = max(float(np.max(np.abs(r[0] - o.img))) for r, o in zip(rt, ot))
    mask_diff = int(np.count_nonzero(rm != om))
    ok = diff <= 1e-5 and tok <= 1e-5 and mask_diff == 0 and all(np.array_equal(r[1], o.coords) for r, o in zip(rt, ot))
    return {
        "ok": ok,
        "max_abs_diff": diff,
        "token_max_abs_diff": tok,
        "mask_differences": mask_diff,
        "note": "" if ok else "outputs differ beyond 1e-5",
    }


def bench_case(case: Case, path: str, args) -> dict:
    n, reps = args.threads, args.repeats
    res: dict = {"case": case.key, "path": path, "label": case.label, "mode": case.mode, "what": case.what}
    img_in = R.ref_read(path)  # geometry for the header line (and warms the page cache)
    res["input"] = {
        "size": list(img_in.GetSize()),
        "spacing": list(img_in.GetSpacing()),
        "pixel": img_in.GetPixelIDTypeAsString(),
    }
    del img_in
    gc.collect()

    # Warm-up (one run each), with an output check.
    ref_out = ours_out = None
    try:
        _, ref_out = run_ref(path, case.mode, keep=True)
    except Exception as exc:  # noqa: BLE001 - report and go on
        res["ref_error"] = _err(exc)
    try:
        _, ours_out = run_ours(path, case.mode, keep=True)
    except Exception as exc:  # noqa: BLE001
        res["ours_error"] = _err(exc)
    if ref_out is not None and ours_out is not None:
        res["check"] = check_outputs(ref_out, ours_out)
    if ours_out is not None and ours_out[0] is not None:
        arrs = ours_out[0][0]
        res["output"] = {
            "shape": list(arrs[0].shape[1:]),
            "view": int(ours_out[0][2]),
            "tokens": int(ours_out[1][0].img.shape[0]),
        }
    elif ref_out is not None and ref_out[0] is not None:
        arrs = ref_out[0][0]
        res["output"] = {
            "shape": list(arrs[0].shape[1:]),
            "view": int(ref_out[0][2]),
            "tokens": int(ref_out[1][0][0].shape[0]),
        }
    del ref_out, ours_out
    gc.collect()

    # File to tokens, interleaved.
    ref_runs, ours_runs = [], []
    for _ in range(reps):
        if "ref_error" not in res:
            ref_runs.append(run_ref(path, case.mode)[0])
        if "ours_error" not in res:
            ours_runs.append(run_ours(path, case.mode)[0])
        gc.collect()
    res["ref"] = {"median": medians(ref_runs), "runs": ref_runs}
    res["ours"] = {"median": medians(ours_runs), "runs": ours_runs}
    rt, ot = res["ref"]["median"].get("total"), res["ours"]["median"].get("total")
    res["ratio"] = rt / ot if rt and ot else None

    # Resampling alone, on the volume already in memory.
    rs_ref, rs_ours = [], []
    try:
        img = R.ref_read(path)
        vol = read_volume(path) if "ours_error" not in res else None
        resample_ref(img)
        if vol is not None:
            resample_ours(vol)
        for _ in range(reps):
            rs_ref.append(resample_ref(img))
            if vol is not None:
                rs_ours.append(resample_ours(vol))
        del img, vol
    except Exception as exc:  # noqa: BLE001
        res["resample_error"] = _err(exc)
    gc.collect()
    res["resample"] = {"ref": median(rs_ref), "ours": median(rs_ours), "ref_runs": rs_ref, "ours_runs": rs_ours}
    res["resample"]["ratio"] = (res["resample"]["ref"] / res["resample"]["ours"]) if rs_ref and rs_ours else None

    # Decode floor.
    floor = DecodeFloor(path)
    floor()
    fl = median([floor() for _ in range(reps)])
    res["floor"] = {"kind": floor.kind, "seconds": fl}
    res["floor"]["ours_minus_floor"] = (ot - fl) if ot else None
    res["floor"]["over_floor"] = (ot - fl) / fl if ot and fl else None
    del floor
    gc.collect()

    # Peak RSS, each pipeline once in a fresh process.
    if args.rss:
        res["rss"] = {}
        for which in ("ref", "ours"):
            if f"{which}_error" in res:
                continue
            got, err = measure_rss(which, path, case.mode, n)
            res["rss"][which] = got if got is not None else {"error": err}
    return res


# --- report -----------------------------------------------------------------------------------


def _s(x, w=8) -> str:
    return f"{x:{w}.3f} s" if x is not None else f"{'-':>{w}}  "


def _x(x) -> str:
    return f"{x:.1f}x" if x is not None else "-"


def report_case(r: dict, threads: int, reps: int) -> str:
    lines = []
    inp = r["input"]
    head = f"{r['label']}  [{r['what']}, mode {r['mode']}]"
    lines.append(head)
    lines.append("=" * len(head))
    desc = (
        f"input {'x'.join(map(str, inp['size']))} {inp['pixel']}, {' x '.join(f'{s:.3g}' for s in inp['spacing'])} mm"
    )
    if "output" in r:
        o = r["output"]
        desc += f" -> [D, H, W] {o['shape']}, view {o['view']}, N = {o['tokens']} tokens"
    lines.append(desc)
    lines.append(f"threads {threads}; median of {reps} interleaved runs after one warm-up each")
    for who in ("ref", "ours"):
        if f"{who}_error" in r:
            lines.append(f"!! {'reference' if who == 'ref' else 'neurovfm'} failed: {r[who + '_error']}")
    if "check" in r:
        c = r["check"]
        if c.get("max_abs_diff") is not None:
            lines.append(
                f"check: {'outputs agree' if c['ok'] else 'OUTPUTS DIFFER'} (arrays max |diff| "
                f"{c['max_abs_diff']:.2e}, tokens {c['token_max_abs_diff']:.2e}, "
                f"{c['mask_differences']} token flags differ)"
            )
        else:
            lines.append(f"check: {c['note']}")
    ref, ours = r["ref"]["median"], r["ours"]["median"]
    lines.append("")
    lines.append(f"  {'stage':<22}{'reference':>12}{'neurovfm':>14}")
    lines.append(f"  {'read':<22}{_s(ref.get('read'))}   \\")
    lines.append(f"  {'orient RPI':<22}{_s(ref.get('orient'))}    >{_s(ours.get('load_image'))}  load_image")
    lines.append(f"  {'resample + crop':<22}{_s(ref.get('resample'))}   /")
    lines.append(f"  {'prepare':<22}{_s(ref.get('prepare'))}   {_s(ours.get('prepare'))}")
    lines.append(f"  {'tokens':<22}{_s(ref.get('tokens'))}   {_s(ours.get('tokenize'))}")
    target = TARGET_DICOM if os.path.isdir(r["path"]) else TARGET_NIFTI
    lines.append(
        f"  {'total (file to tokens)':<22}{_s(ref.get('total'))}   {_s(ours.get('total'))}"
        f"   ref/ours {_x(r['ratio'])}  (target >= {target:.0f}x)"
    )
    rs = r["resample"]
    lines.append(
        f"  {'resampling alone':<22}{_s(rs['ref'])}   {_s(rs['ours'])}   ref/ours {_x(rs['ratio'])}"
        f"  (target >= {TARGET_RESAMPLE:.0f}x)"
    )
    lines.append(f"  {'':<24}(in memory: sitk DICOMOrient + Resample + crop vs neurovfm preprocess_volume)")
    fl = r["floor"]
    lines.append(f"  {'decode floor':<22}{'':>12}   {_s(fl['seconds'])}   ({fl['kind']})")
    if fl.get("over_floor") is not None:
        lines.append(
            f"  {'ours - floor':<22}{'':>12}   {_s(fl['ours_minus_floor'])}   "
            f"= {fl['over_floor']:.2f} x floor  (target <= {TARGET_OVER_FLOOR})"
        )
    if r.get("rss"):

        def mib(who):
            v = r["rss"].get(who)
            if not v:
                return f"{'-':>10}"
            if "error" in v:
                return f"{'error':>10}"
            return f"{v['peak_mib']:7.0f} MiB"

        base = [v.get("baseline_mib") for v in r["rss"].values() if v and v.get("baseline_mib")]
        lines.append(
            f"  {'peak RSS':<22}{mib('ref'):>12}   {mib('ours'):>10}   (fresh process; {base[0]:.0f} MiB after imports)"
            if base
            else f"  {'peak RSS':<22}{mib('ref'):>12}   {mib('ours'):>10}"
        )
        for who, v in r["rss"].items():
            if v and "error" in v:
                lines.append(f"  (peak RSS of {who} failed: {v['error']})")
    return "\n".join(lines)


def report_summary(results: list, threads: int, reps: int) -> str:
    lines = [f"summary: threads {threads}, median of {reps} runs; times in seconds"]
    hdr = (
        f"{'case':<42}{'ref':>8}{'ours':>8}{'ref/ours':>10}{'resample':>10}{'floor':>8}"
        f"{'(ours-fl)/fl':>14}{'RSS ref/ours MiB':>18}"
    )
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for r in results:
        if r.get("skipped"):
            lines.append(f"{r['label']:<42}skipped: {r['skipped']}")
            continue
        rss = r.get("rss") or {}
        peak = {who: f"{v['peak_mib']:.0f}" if v and "peak_mib" in v else "-" for who, v in rss.items()}

        over = r["floor"].get("over_floor")
        t_ref, t_ours = r["ref"]["median"].get("total"), r["ours"]["median"].get("total")

        def sec(x):
            return f"{x:8.3f}" if x is not None else f"{'-':>8}"

        lines.append(
            f"{r['label'][:41]:<42}{sec(t_ref)}{sec(t_ours)}{_x(r['ratio']):>10}"
            f"{_x(r['resample']['ratio']):>10}{r['floor']['seconds']:8.3f}"
            f"{(f'{over:.2f}' if over is not None else '-'):>14}{peak.get('ref', '-') + ' / ' + peak.get('ours', '-'):>18}"
        )
    lines.append(
        f"targets: file to tokens >= {TARGET_NIFTI:.0f}x gzip NIfTI, >= {TARGET_DICOM:.0f}x DICOM; "
        f"resampling >= {TARGET_RESAMPLE:.0f}x; (ours - floor) / floor <= {TARGET_OVER_FLOOR}; "
        f"peak RSS <= the reference's"
    )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="neurovfm file-to-tokens benchmark against the SimpleITK + NumPy reference.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="cases: " + "; ".join(f"{c.key}: {c.rel or 'synthetic'} ({c.mode})" for c in CASES),
    )
    p.add_argument("--threads", type=int, default=2, help="threads for SimpleITK and neurovfm (default 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per case, median reported (default 5)")
    p.add_argument(
        "--quick", action="store_true", help=f"2 runs, cases {', '.join(QUICK_CASES)} only, no RSS (unless --rss)"
    )
    p.add_argument("--cases", default=None, help="which cases to run, e.g. 'abd' (default all)")
    p.add_argument(
        "--rss",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure peak RSS in fresh processes (default on, off with --quick)",
    )
    p.add_argument(
        "--synthetic",
        type=Path,
        default=None,
        help="where the synthetic CT is kept (written if missing; default a temporary file)",
    )
    p.add_argument("--json", type=Path, default=None, help="write all numbers to this JSON file")
    p.add_argument("--rss-child", choices=("ref", "ours"), help=argparse.SUPPRESS)
    p.add_argument("--rss-path", help=argparse.SUPPRESS)
    p.add_argument("--rss-mode", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.rss is None:
        args.rss = not args.quick
    if args.cases is None:
        args.cases = QUICK_CASES if args.quick else "".join(c.key for c in CASES)
    unknown = set(args.cases) - {c.key for c in CASES}
    if unknown:
        p.error(f"unknown case(s) {''.join(sorted(unknown))}; choose from {''.join(c.key for c in CASES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child, args.rss_path, args.rss_mode, args.threads)
        return 0
    set_threads(args.threads)
    data = corpus_dir()
    print(
        f"neurovfm {neurovfm.__version__}, SimpleITK {sitk.Version.VersionString()}, NumPy {np.__version__}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs; threads {args.threads}, "
        f"repeats {args.repeats}; corpus {data}",
        flush=True,
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="neurovfm-bench-") as tmp:
        for case in CASES:
            if case.key not in args.cases:
                continue
            if case.rel is None:
                path = args.synthetic or Path(tmp) / "synthetic_ct_512x512x300.nii.gz"
                if not path.exists():
                    make_synthetic(path)
            else:
                path = data / case.rel
                if not path.exists():
                    msg = f"{path} not found (set NEUROVFM_TEST_DATA to the corpus folder)"
                    print(f"\n{case.label}: skipped, {msg}", flush=True)
                    results.append({"case": case.key, "label": case.label, "skipped": msg})
                    continue
            print(flush=True)
            r = bench_case(case, str(path), args)
            results.append(r)
            print(report_case(r, args.threads, args.repeats), flush=True)
    print()
    print(report_summary(results, args.threads, args.repeats))
    if args.json:
        meta = {
            "neurovfm": neurovfm.__version__,
            "simpleitk": sitk.Version.VersionString(),
            "numpy": np.__version__,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "repeats": args.repeats,
            "machine": platform.machine(),
            "corpus": str(data),
        }
        args.json.write_text(json.dumps({"meta": meta, "cases": results}, indent=2))
        print(f"numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
