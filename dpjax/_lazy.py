"""Lazy package faces (PEP 562): public names resolved on first access.

A face lists ``name -> "module"`` (the name is that module) or
``name -> "module:attribute"``; :func:`attach` returns the module-level
``__getattr__`` and ``__dir__`` that import the module on first access and
cache the value in the package namespace, so ``import dpjax`` stays cheap and
heavy areas (Flax, pandas, orbax) load only when used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["attach"]


def attach(
    package: str, names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Returns ``(__getattr__, __dir__)`` for ``package`` resolving ``names`` lazily."""

    def __getattr__(name: str) -> Any:
        target = names.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = target.partition(":")
        value = importlib.import_module(module)
        if attr:
            value = getattr(value, attr)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
