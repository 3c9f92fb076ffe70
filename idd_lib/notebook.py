"""Helpers for the parameterised notebooks (papermill).

papermill only warns about a ``-p`` name the notebook does not declare; :func:`parameters`
turns that into an error. Declared parameters are the annotated one-liners of the ``parameters``
cell (``seed: int = 0  # help``), which IPython records in ``__annotations__``; the cell
papermill injects assigns without annotations, so an unknown name stands out.
"""
from __future__ import annotations

import types
from typing import Any

_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


class ParameterError(ValueError):
    pass


def parameters(namespace: dict[str, Any]) -> dict[str, Any]:
    """Validate the notebook's parameters (names and types) and return them as a dict."""
    declared: dict[str, type] = dict(namespace.get("__annotations__", {}))
    unknown = sorted(name for name, value in namespace.items()
                     if not name.startswith("_") and name not in declared and name not in _IPYTHON_NAMES
                     and not isinstance(value, (types.ModuleType, types.FunctionType, type)))
    if unknown:
        raise ParameterError(f"unknown notebook parameter(s) {unknown}; this notebook accepts {sorted(declared)}")
    values = {}
    for name, kind in declared.items():
        value = namespace[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(kind, type) and not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ParameterError(f"parameter {name}: expected {kind.__name__}, got {value!r}")
        values[name] = value
    return values
