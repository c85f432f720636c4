"""The public API is typed: every function, method and property named in the
``__all__`` of the public modules annotates its parameters and its return value
(``__init__`` may leave its return out). The compiled module's stub is checked by
test_stubs.py."""

from __future__ import annotations

import importlib
import inspect

import pytest

MODULES = [
    "neurovfm",
    "neurovfm.data",
    "neurovfm.datasets",
    "neurovfm.qa",
    "neurovfm.phantom",
    "neurovfm.errors",
    "neurovfm.cli",
]


def _missing(qual: str, fn, is_method: bool = False) -> list:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature
        return []
    params = list(sig.parameters.values())
    if is_method and params and params[0].name in ("self", "cls"):
        params = params[1:]
    out = [f"{qual}({p.name})" for p in params if p.annotation is inspect.Parameter.empty]
    if sig.return_annotation is inspect.Signature.empty and fn.__name__ != "__init__":
        out.append(f"{qual} -> ?")
    return out


def _public_callables(modname: str):
    mod = importlib.import_module(modname)
    for name in getattr(mod, "__all__", []):
        obj = getattr(mod, name)
        if inspect.isfunction(obj):
            yield f"{modname}.{name}", obj, False
        elif inspect.isclass(obj) and obj.__module__.startswith("neurovfm"):
            for key, val in vars(obj).items():
                if key.startswith("_") and key != "__init__":
                    continue
                if isinstance(val, (staticmethod, classmethod)):
                    val = val.__func__
                if isinstance(val, property):
                    yield f"{modname}.{name}.{key}", val.fget, True
                elif inspect.isfunction(val):
                    yield f"{modname}.{name}.{key}", val, True


@pytest.mark.parametrize("modname", MODULES)
def test_public_api_is_annotated(modname):
    missing = [m for qual, fn, meth in _public_callables(modname) for m in _missing(qual, fn, meth)]
    assert not missing, f"unannotated in the public API: {missing}"
