"""The type stub ``neurovfm/_core.pyi`` matches the compiled module: the same names,
the same classes with the same members, the same parameter names, and the same
parameters having defaults (read from the signatures pybind11 writes in docstrings)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import neurovfm
from neurovfm import _core

STUB = Path(neurovfm.__file__).with_name("_core.pyi")
#: Only in sanitizer builds (-DNEUROVFM_SANITIZE=...): a planted bug for scripts/asan_test.sh.
BUILD_ONLY = {"_sanitizer_selftest"}


def _stub_tree() -> ast.Module:
    assert STUB.is_file(), f"{STUB} is missing (is py.typed/_core.pyi installed with the package?)"
    return ast.parse(STUB.read_text(), filename=str(STUB))


def _public(names) -> set:
    return {n for n in names if not n.startswith("_")}


def _stub_members(tree: ast.Module) -> dict:
    """{name: node} of the stub's public module-level functions and classes."""
    out = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            out[node.name] = node
    return out


def _split_params(text: str) -> list:
    """Split a pybind11 parameter list at top-level commas (types hold brackets and quotes)."""
    parts, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def _pybind_params(obj, name: str) -> list:
    """[(param, has_default)] from the first line of a pybind11 docstring, without self."""
    doc = (obj.__doc__ or "").strip()
    m = re.match(rf"{re.escape(name)}\((.*)\) -> ", doc.splitlines()[0] if doc else "")
    assert m, f"{name}: no pybind11 signature in its docstring: {doc[:200]!r}"
    out = []
    for p in _split_params(m.group(1)):
        pname = p.split(":", 1)[0].strip()
        if pname == "self":
            continue
        out.append((pname, "=" in p.split(":", 1)[1] if ":" in p else "=" in p))
    return out


def _stub_params(fn: ast.FunctionDef) -> list:
    args = fn.args.posonlyargs + fn.args.args
    defaults = [False] * (len(args) - len(fn.args.defaults)) + [True] * len(fn.args.defaults)
    return [(a.arg, d) for a, d in zip(args, defaults) if a.arg != "self"]


def test_stub_declares_every_attribute_and_nothing_else():
    tree = _stub_tree()
    declared = set(_stub_members(tree))
    built = _public(dir(_core)) - BUILD_ONLY
    assert sorted(built - declared) == [], "bound in _core but missing from _core.pyi"
    assert sorted(declared - built) == [], "declared in _core.pyi but not bound in _core"


@pytest.mark.parametrize("name", sorted(_public(dir(_core)) - BUILD_ONLY))
def test_stub_signatures_match(name):
    node = _stub_members(_stub_tree()).get(name)
    assert node is not None, f"{name} missing from _core.pyi"
    obj = getattr(_core, name)
    if inspect.isclass(obj):
        assert isinstance(node, ast.ClassDef), f"{name} is a class in _core"
        members = {n.name: n for n in node.body if isinstance(n, ast.FunctionDef)}
        # __init__ counts when bound with py::init (pybind11 then documents its signature)
        real = {
            k: v
            for k, v in vars(obj).items()
            if not k.startswith("_") or (k == "__init__" and (v.__doc__ or "").startswith("__init__("))
        }
        real_names = set(real)
        stub_names = {k for k in members if not k.startswith("_") or k == "__init__"}
        assert sorted(real_names - stub_names) == [], f"{name}: members missing from the stub"
        assert sorted(stub_names - real_names) == [], f"{name}: stub members not in _core"
        for mname in sorted(real_names):
            attr = real[mname]
            if isinstance(attr, property):
                decos = [d.id for d in members[mname].decorator_list if isinstance(d, ast.Name)]
                assert "property" in decos, f"{name}.{mname} is a read-only property in _core"
                continue
            assert _stub_params(members[mname]) == _pybind_params(attr, mname), f"{name}.{mname}"
    else:
        assert isinstance(node, ast.FunctionDef), f"{name} is a function in _core"
        assert _stub_params(node) == _pybind_params(obj, name), name


def test_py_typed_marker_is_installed():
    assert Path(neurovfm.__file__).with_name("py.typed").is_file()
