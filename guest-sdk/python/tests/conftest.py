"""Shared helpers: the SDK is imported from this checkout (no install
needed), and app modules (the example, the scaffold) are loaded by path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PYTHON_SDK = Path(__file__).resolve().parent.parent
REPO = PYTHON_SDK.parent.parent
sys.path.insert(0, str(PYTHON_SDK))


def load_module(name: str, path: Path, text: str | None = None) -> ModuleType:
    """Imports a file as a module named ``name`` (``text`` replaces its
    source, for templates)."""
    if text is None:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    module = ModuleType(name)
    module.__file__ = str(path)
    exec(compile(text, str(path), "exec"), module.__dict__)
    return module
