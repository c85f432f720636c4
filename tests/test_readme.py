"""Every code block of README.md and of the docs pages it links (``DOCS``) is executed or
checked, so none of them can rot.

Convention (also stated at the end of the README):

- every fenced block names its language: ``python``, ``bash`` or ``text``;
- the README's blocks under a "Quick start" heading run in order, top to bottom, in one
  empty folder (the first runs ``neurovfm demo``), as a newcomer runs them; a block that
  fails only for want of torch or matplotlib (optional extras) is skipped where the extra
  is not installed, and the others still run;
- every other ``python`` block runs as a script, ``bash`` block as a ``bash -euo pipefail``
  script, each in a fresh copy of a workspace holding ``scan.nii.gz`` (a small CT phantom),
  ``t1.nii.gz`` (an MR phantom), ``modes.csv`` and the dataset ``ds/`` (studies s001
  CT and s002 MRI, metadata written and cache built). ``python``/``python3`` are
  this interpreter, ``neurovfm`` its console script; benchmarks come from this
  checkout's ``bench/`` and see an empty corpus (their cases skip);
- in ``bash`` blocks, ``pip install ...`` commands are not run (they would build or
  download): the package name and extras they name must be this package's;
  ``torchrun`` lines run only where torch is installed, and a block that fails only
  for want of torch is skipped where torch is not installed;
- a block after ``<!-- readme-test: ci -->`` is README's test command: one line (a
  script in the checkout), which ``.ci/run`` runs last, after the ASan stage;
- a ``text`` block after ``<!-- readme-test: layout -->`` (in docs/cli.md) lists the cache
  files: every file of a built cache must match one line and every line some file;
- a ``text`` block after ``<!-- readme-test: paths -->`` lists paths of the checkout:
  each must exist.

Also: docs/api.md names every public name of the package's modules; the README stays a
front door (at most 400 lines); every relative link of these pages leads to a file.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import SimpleITK as sitk
from conftest import package_env

import neurovfm

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
API_DOC = REPO / "docs" / "api.md"
#: The pages whose blocks are checked: the README and the pages it sends a reader to.
DOCS = [
    README,
    REPO / "CHANGELOG.md",
    *(REPO / "docs" / f"{n}.md" for n in ("api", "cli", "install", "performance", "fidelity", "migration")),
]
CI_RUN = REPO / ".ci" / "run"
LANGS = ("python", "bash", "text")
README_MAX_LINES = 400


@dataclass
class Block:
    lang: str
    code: str
    line: int  # line of the opening fence
    marker: str | None
    file: str = "README.md"  # relative to the checkout
    heading: str = ""  # the nearest heading above the block

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def quick_start(self) -> bool:
        return self.file == "README.md" and "quick start" in self.heading.lower()


def parse_blocks(text: str, file: str = "README.md") -> list:
    blocks = []
    lines = text.splitlines()
    heading = ""
    i = 0
    while i < len(lines):
        if lines[i].startswith("#"):
            heading = lines[i].lstrip("#").strip()
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        assert j < len(lines), f"{file}:{start + 1}: unclosed code block"
        marker = None
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        if k >= 0:
            mm = re.match(r"^<!--\s*readme-test:\s*(\w+)\s*-->$", lines[k].strip())
            marker = mm.group(1) if mm else None
        blocks.append(Block(m.group(1), "\n".join(lines[start + 1 : j]) + "\n", start + 1, marker, file, heading))
        i = j + 1
    return blocks


BLOCKS = [b for page in DOCS for b in parse_blocks(page.read_text(), page.relative_to(REPO).as_posix())]


def _ids(blocks):
    return [f"{Path(b.file).stem}-line{b.line}-{b.lang}" + (f"-{b.marker}" if b.marker else "") for b in blocks]


def test_every_block_is_tagged_and_covered():
    assert any(b.file == "README.md" for b in BLOCKS), "no code blocks found in README.md"
    for b in BLOCKS:
        assert b.lang in LANGS, f"{b.where}: code block language {b.lang!r}, use one of {LANGS}"
        if b.lang == "text":
            assert b.marker in ("layout", "paths"), f"{b.where}: a text block needs a readme-test marker"
        if b.marker == "ci":
            assert b.lang == "bash" and b.file == "README.md"


def test_readme_is_a_front_door():
    """At most README_MAX_LINES lines; the references live in docs/ and CHANGELOG.md."""
    text = README.read_text()
    n = len(text.splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move reference text to docs/"
    for page in ("docs/api.md", "docs/cli.md", "CHANGELOG.md"):
        assert (REPO / page).is_file() and f"]({page}" in text, f"README.md does not link {page}"
    assert "\n## API\n" not in text and "\n## Changelog\n" not in text


def test_relative_links_lead_to_files():
    for page in [*DOCS, REPO / "docs" / "README.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(REPO)}: link to {target}, which does not exist"


# --- the workspace ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from neurovfm import phantom
    from neurovfm.data import CacheManager, DatasetMetadata

    ws = tmp_path_factory.mktemp("readme_ws")
    ct = phantom.make_ct_phantom(shape=(96, 96, 40), spacing=(2.0, 2.0, 3.0))
    mr = phantom.make_mri_phantom(shape=(64, 96, 96), spacing=(2.0, 2.0, 2.0))
    sitk.WriteImage(ct, str(ws / "scan.nii.gz"), useCompression=True)
    sitk.WriteImage(mr, str(ws / "t1.nii.gz"), useCompression=True)
    for study, name, src in (("s001", "head.nii.gz", "scan.nii.gz"), ("s002", "t1.nii.gz", "t1.nii.gz")):
        (ws / "ds" / "raw" / study).mkdir(parents=True)
        shutil.copyfile(ws / src, ws / "ds" / "raw" / study / name)
    (ws / "modes.csv").write_text("study,mode\ns001,ct\ns002,mri\n")
    DatasetMetadata.from_directory(ws / "ds", ws / "modes.csv").save()
    summary = CacheManager(ws / "ds").build_cache(num_workers=1, progress=False)
    assert not summary.failed, summary
    (ws / "empty_corpus").mkdir()
    return ws


@pytest.fixture
def run_dir(workspace, tmp_path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(workspace, d)
    return d


def _shims(where: Path) -> Path:
    """python, python3 -> this interpreter; neurovfm -> its console script (or -m)."""
    bin_dir = where / ".shims"
    bin_dir.mkdir(exist_ok=True)
    for name in ("python", "python3"):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    script = Path(sys.executable).parent / "neurovfm"
    if os.environ.get("NEUROVFM_EXPECT_INSTALLED") == "1" and script.exists():
        (bin_dir / "neurovfm").write_text(f'#!/bin/sh\nexec "{script}" "$@"\n')
    else:
        (bin_dir / "neurovfm").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m neurovfm "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


# --- pip lines -------------------------------------------------------------------------------


def _project() -> tuple:
    """(name, extras) of this package: from its installed metadata, else pyproject.toml."""
    from importlib import metadata

    try:
        dist = metadata.distribution("neurovfm")
        if Path(str(dist.locate_file(""))).resolve() in Path(neurovfm.__file__).resolve().parents:
            return dist.metadata["Name"], set(dist.metadata.get_all("Provides-Extra") or [])
    except metadata.PackageNotFoundError:
        pass
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    with open(REPO / "pyproject.toml", "rb") as f:
        proj = tomllib.load(f)["project"]
    return proj["name"], set(proj.get("optional-dependencies", {}))


def check_pip(command: str) -> None:
    """A documented ``pip install`` names this package (or the checkout) and real extras."""
    words = shlex.split(command)
    assert words[:2] == ["pip", "install"], command
    targets = [w for w in words[2:] if not w.startswith("-")]
    assert targets, f"{command!r}: nothing to install"
    name, extras = _project()
    for t in targets:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+|\.)(?:\[([A-Za-z0-9_,-]+)\])?", t)
        assert m, f"{command!r}: cannot read {t!r}"
        what, wanted = m.group(1), m.group(2)
        if what == ".":
            assert (REPO / "pyproject.toml").is_file()
        else:
            assert what.lower() == name.lower(), f"{command!r}: the package is {name!r}"
        unknown = set((wanted or "").split(",")) - {""} - extras
        assert not unknown, f"{command!r}: no extra(s) {sorted(unknown)} (the package has {sorted(extras)})"


def bash_script(code: str) -> tuple:
    """The block as a script to run, and the pip commands it documents."""
    out, pips = [], []
    have_torch = importlib.util.find_spec("torch") is not None
    for line in code.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            out.append(line)
            continue
        command = stripped.split(" #", 1)[0].strip()
        parts = [p.strip() for p in command.split("&&")]
        keep = []
        for p in parts:
            if p.startswith("pip install"):
                pips.append(p)
            elif p.startswith("torchrun") and not have_torch:
                continue
            else:
                keep.append(p)
        if keep:
            out.append(" && ".join(keep))
    return "\n".join(out) + "\n", pips


# --- running the blocks ----------------------------------------------------------------------

RUNNABLE = [b for b in BLOCKS if b.lang in ("python", "bash") and b.marker is None and not b.quick_start]
QUICK_STARTS = [b for b in BLOCKS if b.lang in ("python", "bash") and b.marker is None and b.quick_start]


@pytest.mark.parametrize("block", RUNNABLE, ids=_ids(RUNNABLE))
def test_block_runs(block, run_dir):
    res = _run_block(block, run_dir)
    if res.returncode != 0 and "No module named 'torch'" in res.stderr and importlib.util.find_spec("torch") is None:
        pytest.skip(f"{block.where}: the example needs PyTorch, which is not installed")
    assert res.returncode == 0, _failure(block, res)


def _failure(block, res) -> str:
    return (
        f"{block.where}: {block.lang} block failed (exit code {res.returncode})\n"
        f"--- block ---\n{block.code}--- stdout ---\n{res.stdout[-4000:]}\n--- stderr ---\n{res.stderr[-4000:]}"
    )


def _run_block(block, run_dir: Path) -> subprocess.CompletedProcess:
    env = package_env()
    env["NEUROVFM_BENCH_DIR"] = str(REPO / "bench")
    env["NEUROVFM_TEST_DATA"] = str(run_dir / "empty_corpus")
    env["NEUROVFM_NUM_THREADS"] = "2"
    env["MPLBACKEND"] = "Agg"
    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "RANK", "WORLD_SIZE"):
        env.pop(var, None)
    if block.lang == "python":
        (run_dir / "readme_block.py").write_text(block.code)
        cmd = [sys.executable, "readme_block.py"]
    else:
        script, pips = bash_script(block.code)
        for p in pips:
            check_pip(p)
        if sys.platform == "win32":
            pytest.skip("bash blocks run on POSIX systems (their pip lines were checked)")
        env["PATH"] = os.pathsep.join([str(_shims(run_dir)), env.get("PATH", "")])
        (run_dir / "readme_block.sh").write_text(script)
        cmd = ["bash", "-euo", "pipefail", "readme_block.sh"]
    return subprocess.run(cmd, cwd=run_dir, env=env, capture_output=True, text=True, timeout=600, check=False)


#: Optional extras a quick start may need: (module, what a failure for want of it says).
OPTIONAL = (("torch", "No module named 'torch'"), ("matplotlib", "neurovfm[qa]"))


def test_quick_starts_run_top_to_bottom(tmp_path):
    """README's quick starts, in order, in one empty folder: the first makes the demo
    dataset, each later one uses what the earlier ones made, and each prints something."""
    assert QUICK_STARTS, "README.md has no Quick start blocks"
    first = QUICK_STARTS[0]
    assert first.lang == "bash" and re.search(r"^neurovfm demo (\S+)", first.code, re.M), (
        f"{first.where}: the first quick-start block must run `neurovfm demo DIR`"
    )
    headings = [b.heading.lower() for b in QUICK_STARTS]
    order = ["demo", "inference", "at scale", "cache", "training", "qa"]
    seen = [next(i for i, h in enumerate(headings) if word in h) for word in order]
    assert seen == sorted(seen), f"quick starts must come in the order their data is made: {order}"
    work = tmp_path / "quickstart"
    work.mkdir()
    (work / "empty_corpus").mkdir()
    skipped = []
    for block in QUICK_STARTS:
        res = _run_block(block, work)
        missing = [m for m, says in OPTIONAL if importlib.util.find_spec(m) is None and says in res.stderr]
        if res.returncode != 0 and missing:
            skipped.append(f"{block.where} (needs {missing[0]})")
            continue
        assert res.returncode == 0, _failure(block, res)
        assert res.stdout.strip(), f"{block.where}: the block prints nothing a newcomer could check"
    assert (work / "ds" / "metadata.json").is_file() and (work / "out" / "summary.csv").is_file()
    for m in re.finditer(r"-o (\S+\.png)", "".join(b.code for b in QUICK_STARTS)):
        if importlib.util.find_spec("matplotlib") is not None:
            png = work / m.group(1)
            assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    if skipped:
        pytest.skip("ran every quick start except " + ", ".join(skipped))


def test_documented_outputs_exist_after_the_blocks(run_dir):
    """The files the examples promise appear (qa.png from the QA block, tokens.npz, ...)."""
    qa_blocks = [b for b in RUNNABLE if "neurovfm qa " in b.code]
    assert qa_blocks, "the README shows no `neurovfm qa` example"
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib not installed")
    if sys.platform == "win32":
        pytest.skip("bash blocks run on POSIX systems")
    env = package_env()
    env["PATH"] = os.pathsep.join([str(_shims(run_dir)), env.get("PATH", "")])
    script, _ = bash_script(qa_blocks[0].code)
    (run_dir / "qa_block.sh").write_text(script)
    subprocess.run(
        ["bash", "-euo", "pipefail", "qa_block.sh"], cwd=run_dir, env=env, check=True, capture_output=True, timeout=600
    )
    for m in re.finditer(r"-o (\S+\.png)", qa_blocks[0].code):
        out = run_dir / m.group(1)
        assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", out


def test_pip_lines_are_checked():
    pips = [p for b in BLOCKS if b.lang == "bash" for p in bash_script(b.code)[1]]
    assert any(p == "pip install neurovfm" for p in pips)
    readme = [p for b in BLOCKS if b.lang == "bash" and b.file == "README.md" for p in bash_script(b.code)[1]]
    assert readme[0] == "pip install .", "README's first install line is what works from this repository"
    for p in pips:
        check_pip(p)
    with pytest.raises(AssertionError, match="no extra"):
        check_pip('pip install "neurovfm[nonexistent]"')
    with pytest.raises(AssertionError, match="the package is"):
        check_pip("pip install neurovfn")


# --- checked blocks --------------------------------------------------------------------------


def _commands(text: str) -> list:
    out = []
    for line in text.splitlines():
        s = line.split(" #", 1)[0].strip()
        if s and not s.startswith("#"):
            out.append(s)
    return out


def check_ci(readme_block: str, ci_run: str) -> str:
    """README's test command (the ``readme-test: ci`` block) is one line, a script of the
    checkout, and ``.ci/run`` runs it last, after building, installing and the ASan stage
    (whose instrumented build, ``scripts/asan_test.sh --build-only``, may start earlier)."""
    documented = _commands(readme_block)
    assert len(documented) == 1, f"README's test command must be one line, not {documented}"
    (cmd,) = documented
    script = REPO / shlex.split(cmd)[0]
    assert script.is_file() and os.access(script, os.X_OK), f"{cmd!r}: {script} is not an executable script"
    run = _commands(ci_run)
    assert run and run[-1] == cmd, f".ci/run must end with the README's test command {cmd!r}, not {run[-1:]}"
    steps = (
        [i for i, c in enumerate(run) if "scripts/asan_test.sh" in c and "--build-only" not in c],
        [i for i, c in enumerate(run) if c.startswith("scripts/test.sh") and "build install" in c],
    )
    assert all(steps), f".ci/run builds and installs the wheel and runs scripts/asan_test.sh: {run}"
    assert steps[1][0] < steps[0][0] < len(run) - 1, f".ci/run: build + install, then ASan, then {cmd!r}: {run}"
    return cmd


def test_ci_block_is_what_ci_runs():
    ci = [b for b in BLOCKS if b.marker == "ci"]
    assert len(ci) == 1 and ci[0].file == "README.md", (
        "README.md needs exactly one block marked readme-test: ci (Run the tests)"
    )
    assert check_ci(ci[0].code, CI_RUN.read_text()) == "scripts/test.sh"


def test_ci_check_can_fail():
    ci_run = CI_RUN.read_text()
    with pytest.raises(AssertionError, match="must be one line"):
        check_ci("scripts/wheel.sh build\nscripts/wheel.sh test -q\n", ci_run)
    with pytest.raises(AssertionError, match="must be one line"):
        check_ci("# only a comment\n", ci_run)
    with pytest.raises(AssertionError, match="is not an executable script"):
        check_ci("scripts/no_such_script.sh\n", ci_run + "\nscripts/no_such_script.sh\n")
    with pytest.raises(AssertionError, match="must end with the README's test command"):
        check_ci("scripts/test.sh\n", ci_run + "\necho done\n")
    with pytest.raises(AssertionError, match="runs scripts/asan_test.sh"):
        check_ci("scripts/test.sh\n", "scripts/test.sh tools build install\nscripts/test.sh\n")
    with pytest.raises(AssertionError, match="then ASan, then"):
        check_ci("scripts/test.sh\n", "scripts/asan_test.sh\nscripts/test.sh tools build install\nscripts/test.sh\n")
    with pytest.raises(AssertionError, match="runs scripts/asan_test.sh"):  # a build alone is no ASan stage
        check_ci(
            "scripts/test.sh\n", "scripts/test.sh build install\nscripts/asan_test.sh --build-only &\nscripts/test.sh\n"
        )


def _layout_patterns(code: str) -> list:
    pats = []
    for line in code.splitlines():
        tok = line.split()[0] if line.strip() else ""
        if not tok.startswith("processed/"):
            continue
        rx = re.escape(tok).replace(re.escape("<study>"), "[^/]+").replace(re.escape("<image>"), "[^/]+")
        pats.append((tok, re.compile(rx + "$")))
    return pats


def test_layout_block_matches_a_built_cache(tmp_path):
    from neurovfm import phantom
    from neurovfm.data import CacheManager, DatasetMetadata

    (block,) = [b for b in BLOCKS if b.marker == "layout"]
    pats = _layout_patterns(block.code)
    assert len(pats) >= 7
    ds = tmp_path / "ds"
    for study in ("s001", "s002", "s003"):
        (ds / "raw" / study).mkdir(parents=True)
    sitk.WriteImage(
        phantom.make_ct_phantom(shape=(64, 64, 24), spacing=(3.0, 3.0, 5.0)), str(ds / "raw" / "s001" / "head.nii.gz")
    )
    sitk.WriteImage(
        phantom.make_mri_phantom(shape=(32, 64, 64), spacing=(4.0, 3.0, 3.0)), str(ds / "raw" / "s002" / "t1.nii.gz")
    )
    (ds / "raw" / "s003" / "broken.nii.gz").write_bytes(b"not an image")
    DatasetMetadata.from_directory(ds, {"s001": "ct", "s002": "mri", "s003": "ct"}).save()
    summary = CacheManager(ds).build_cache(num_workers=1, progress=False)
    assert list(summary.failed) == ["s003/broken"]
    files = sorted(p.relative_to(ds).as_posix() for p in (ds / "processed").rglob("*") if p.is_file())
    used = set()
    for f in files:
        hits = [tok for tok, rx in pats if rx.match(f)]
        assert hits, f"cache file {f} is not in the README's layout"
        used.update(hits)
    assert sorted({tok for tok, _ in pats} - used) == [], "layout lines no cache file matches"


def test_paths_block_exists():
    (block,) = [b for b in BLOCKS if b.marker == "paths"]
    paths = [line.split()[0] for line in block.code.splitlines() if line.strip()]
    assert len(paths) >= 5, f"{block.where}: the paths block lists {paths}"
    for path in paths:
        assert (REPO / path).exists(), f"{block.where} names {path}, which does not exist"
    assert {"python/neurovfm/", "tests/", "bench/", "scripts/"} <= set(paths)


# --- the API section -------------------------------------------------------------------------

API_MODULES = [
    "neurovfm",
    "neurovfm.data",
    "neurovfm.demo",
    "neurovfm.errors",
    "neurovfm.phantom",
    "neurovfm.pipelines",
    "neurovfm.qa",
]
if importlib.util.find_spec("neurovfm.datasets") is not None:
    API_MODULES.append("neurovfm.datasets")


@pytest.mark.parametrize("modname", API_MODULES)
def test_api_section_names_every_public_name(modname):
    api = API_DOC.read_text()
    mod = importlib.import_module(modname)
    names = getattr(mod, "__all__", None)
    assert names, f"{modname} has no __all__"
    code = " ".join(re.findall(r"`([^`]+)`", api))
    missing = [n for n in names if not re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", code)]
    assert not missing, f"docs/api.md does not document {modname}: {missing}"
