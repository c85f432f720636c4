"""What this installation of neurovfm is: version, build (instruction sets, the DICOM
decoders compiled in and the syntaxes left to SimpleITK), threads and optional extras.
``neurovfm info`` prints it; :func:`build_info` gives it as plain data (``--json``)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from typing import Any

#: The compressed DICOM transfer syntaxes the compiled reader may decode, by decoder:
#: (key, what, the library that brings it, its transfer syntax UIDs, the source-build hint).
DECODERS: tuple[tuple[str, str, str, tuple[str, ...], str], ...] = (
    ("rle", "RLE Lossless", "neurovfm", ("1.2.840.10008.1.2.5",), ""),
    ("jpeg_lossless", "JPEG Lossless", "neurovfm", ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"), ""),
    (
        "jpeg_lossy",
        "JPEG baseline/extended",
        "libjpeg-turbo",
        ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"),
        "Debian: libjpeg62-turbo-dev",
    ),
    (
        "jpeg_ls",
        "JPEG-LS",
        "CharLS",
        ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
        "its bundled CharLS (on unless -DNEUROVFM_NO_CHARLS=ON; with -DNEUROVFM_SYSTEM_CHARLS=ON, Debian: libcharls-dev)",
    ),
    (
        "jpeg2000",
        "JPEG 2000",
        "OpenJPEG",
        ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
        "Debian: libopenjp2-7-dev",
    ),
    (
        "htj2k",
        "HTJ2K",
        "OpenJPH",
        ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
        "Debian: libopenjph-dev",
    ),
)

#: Syntaxes the compiled reader never decodes: SimpleITK (GDCM) reads them.
ALWAYS_SIMPLEITK = ("12-bit lossy JPEG", "big-endian (1.2.840.10008.1.2.2)", "any other compressed syntax")

#: Optional extras: (import name, the extra that installs it, what it is for).
EXTRAS = (
    ("torch", "torch", "ImageDataset, ScanDataset, samplers, collates, .pt outputs"),
    ("lightning", "lightning", "ImageDataModule"),
    ("matplotlib", "qa", "neurovfm qa montages"),
    ("fsspec", "cloud", "s3://, gs://, https:// paths (with s3fs, gcsfs)"),
    ("s3fs", "cloud", "s3:// paths"),
    ("ray", "ray", "--ray, executor='ray', PrepareRows"),
    ("rapidgzip", "gzip", "parallel inflate of .nii.gz from 4 threads"),
)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_has_avx2() -> bool | None:
    """Whether the CPU reports AVX2 (Linux /proc/cpuinfo; None where unknown)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return " avx2" in line
    except OSError:
        pass
    return None


def _isa(core: Any) -> dict[str, Any]:
    in_use = str(core.isa())
    disabled = os.environ.get("NEUROVFM_DISABLE_AVX2", "") not in ("", "0")
    cpu = _cpu_has_avx2()
    built: bool | None
    if in_use == "avx2":
        built = True
    elif cpu and not disabled:
        built = False  # the CPU has it and nothing switched it off: the build has no AVX2 paths
    else:
        built = None  # cannot tell from here
    return {"in_use": in_use, "avx2_built": built, "cpu_avx2": cpu, "avx2_disabled_by_env": disabled}


def _decoders(core: Any) -> list[dict[str, Any]]:
    built = core.codecs() if hasattr(core, "codecs") else None
    libs = core.codec_libraries() if hasattr(core, "codec_libraries") else {}
    out = []
    for key, what, lib, uids, hint in DECODERS:
        if built is not None and key in built:
            ok = bool(built[key])
        else:  # an older core: ask it per syntax ('' reason = decoded here)
            ok = all(core.dicom_codec_status(uid, 8)[0] and not core.dicom_codec_status(uid, 8)[1] for uid in uids)
        out.append(
            {
                "decoder": key,
                "name": what,
                "built": ok,
                "library": (libs.get(key) or lib) if ok else "",
                "transfer_syntaxes": list(uids),
                "fallback": "" if ok else "SimpleITK",
                "source_build_needs": "" if ok else hint,
            }
        )
    return out


def build_info() -> dict[str, Any]:
    """Everything ``neurovfm info`` prints, as JSON-ready data."""
    from . import __version__, _core, _threads

    extras = {}
    for module, extra, what in EXTRAS:
        found = importlib.util.find_spec(module) is not None
        extras[module] = {
            "installed": found,
            "version": _version(module) if found else None,
            "extra": extra,
            "for": what,
        }
    jpeg12 = _core.dicom_codec_status("1.2.840.10008.1.2.4.51", 12)[1]
    return {
        "version": __version__,
        "location": os.path.dirname(os.path.abspath(__file__)),
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "dependencies": {d: _version(d) for d in ("numpy", "SimpleITK", "pydicom", "isal")},
        "isa": _isa(_core),
        "decoders": _decoders(_core),
        "simpleitk_fallback": [s for s in ALWAYS_SIMPLEITK if s != "12-bit lossy JPEG" or jpeg12],
        "threads": {
            "kernels": _threads.get_num_threads(),
            "env_NEUROVFM_NUM_THREADS": os.environ.get("NEUROVFM_NUM_THREADS"),
            "cpus_usable": _threads.available_cpus(),
            "hardware_threads": int(_core.hardware_threads()),
        },
        "extras": extras,
    }


def format_info(info: dict[str, Any]) -> str:
    """The lines ``neurovfm info`` prints."""
    deps = ", ".join(f"{k} {v or 'missing'}" for k, v in info["dependencies"].items())
    isa = info["isa"]
    built = {True: "yes", False: "no", None: "unknown"}[isa["avx2_built"]]
    why = ""
    if isa["in_use"] != "avx2":
        if isa["avx2_disabled_by_env"]:
            why = " (NEUROVFM_DISABLE_AVX2 is set)"
        elif isa["cpu_avx2"] is False:
            why = " (this CPU has no AVX2)"
    t = info["threads"]
    env = t["env_NEUROVFM_NUM_THREADS"]
    lines = [
        f"neurovfm {info['version']}  ({info['location']})",
        f"python   {info['python']} on {info['platform']}; {deps}",
        "",
        "build",
        f"  instruction set   {isa['in_use']} in use{why}; AVX2 paths compiled in: {built}",
        "  DICOM decoders    (compressed pixel data decoded by neurovfm itself, frames in parallel)",
    ]
    width = max(len(d["name"]) for d in info["decoders"])
    for d in info["decoders"]:
        if d["built"]:
            state = f"built in ({d['library']})"
        else:
            state = "not built: SimpleITK reads these series (slower)"
            if d["source_build_needs"]:
                state += f"; a source build needs {d['source_build_needs']}"
        lines.append(f"    {d['name'].ljust(width)}  {state}")
    lines.append(f"  SimpleITK reads   {', '.join(info['simpleitk_fallback'])}")
    lines += [
        "",
        f"threads  {t['kernels']} kernel threads"
        + (f" (NEUROVFM_NUM_THREADS={env})" if env else " (set -j N or NEUROVFM_NUM_THREADS to change)")
        + f"; {t['cpus_usable']} CPUs usable, {t['hardware_threads']} hardware threads",
        "",
        "extras",
    ]
    for module, e in info["extras"].items():
        state = (
            (e["version"] or "installed") if e["installed"] else f"not installed: pip install 'neurovfm[{e['extra']}]'"
        )
        lines.append(f"  {module.ljust(10)}  {state}  ({e['for']})")
    return "\n".join(lines)
