"""Fingerprints of code: what changed in a computation, not in its layout or its comments.

``code_fingerprint(fn)`` hashes the syntax tree of ``fn`` (docstrings, comments and formatting
left out), of every function of the same package it calls, and the values of the module-level
constants they read. Edit a formula, a helper it calls or a constant such as a band edge and the
fingerprint changes; reformat it, comment it or move it to another module and it does not. Library functions (``pc.divide``) count by name only: their versions are pinned.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
import types

# Simple constants whose value takes part in a computation.
_VALUE_TYPES = (int, float, str, bytes, bool, type(None), tuple, frozenset)


def _tree(fn: types.FunctionType) -> str:
    node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    for sub in ast.walk(node):
        body = getattr(sub, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            sub.body = body[1:] or [ast.Pass()]  # docstrings say, they do not compute
    return ast.dump(node, annotate_fields=False, include_attributes=False)


def _names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _closure(fn: types.FunctionType, package: str, seen: dict[str, str]) -> None:
    key = fn.__qualname__
    if key in seen:
        return
    seen[key] = _tree(fn)
    for name in sorted(_names(fn.__code__)):
        value = fn.__globals__.get(name)
        if isinstance(value, types.FunctionType) and value.__module__.split(".")[0] == package:
            _closure(value, package, seen)
        elif isinstance(value, _VALUE_TYPES) and not name.startswith("__"):
            seen[name] = repr(value)


def code_fingerprint(fn: types.FunctionType, *parts: str) -> str:
    """16 hex digits over ``fn``'s code closure within its top-level package, plus ``parts``."""
    seen: dict[str, str] = {}
    _closure(fn, fn.__module__.split(".")[0], seen)
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    for key in sorted(seen):
        digest.update(key.encode() + b"\0" + seen[key].encode() + b"\0")
    return digest.hexdigest()[:16]
