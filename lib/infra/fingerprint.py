"""Code fingerprints: what a computation is, as normalised syntax trees, not as file text.

:func:`recipe_fingerprint` hashes the functions and classes a computation runs, found by following
names from a few roots (the transitive closure over the globals each one reads), each as its syntax
tree with what cannot change a result removed:

* comments and formatting (not in the tree), docstrings, annotations of arguments and return values;
* messages: a ``raise`` statement as a whole, an ``assert``'s message, and the arguments of ``print``,
  ``warnings.warn`` and of exception constructors (``bad(f"...")`` building a ``DatasetMissing``).

It is keyed by each piece's ``__qualname__`` (pieces of one name from different modules, or one name for
a piece and a constant, as ``name/1``, ``name/2`` in the order of their hashes), never by file or module,
so moving a function to another module keeps the fingerprint. Module-level constants a piece reads (``SHUFFLE_SEED = 0``) count by value. Names of
``lib.infra`` (configuration, paths, checkpoints, progress: the configuration's values are recorded
beside the fingerprint) and anything outside ``lib`` are not followed; nor are the ``exclude`` pieces
(the branches of a dispatch that this run does not take).

:func:`source_fingerprint` is the older, coarser one: whole files as trees without docstrings.
"""
from __future__ import annotations

import ast
import builtins
import hashlib
import inspect
import pkgutil
import sys
import textwrap
import warnings
from pathlib import Path

from lib.infra.paths import ROOT

# Literal types whose module-level values count by repr (a Path, a tensor or a module do not).
_LITERALS = (bool, int, float, complex, str, bytes, type(None))
_MESSAGE_CALLS = {print, warnings.warn}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _drop_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]


def _tree_hash(path: Path) -> str:
    tree = ast.parse(Path(path).read_text())
    _drop_docstrings(tree)
    return _digest(ast.dump(tree))


def source_fingerprint(modules) -> dict:
    """``{"lib/<module>.py": hash}`` of repository-relative source files (docstrings and comments aside)."""
    return {m: _tree_hash(ROOT / m) for m in sorted(modules)}


# ---------------------------------------------------------------------------- the recipe's pieces
def _is_literal(v, depth: int = 0) -> bool:
    if isinstance(v, _LITERALS):
        return True
    if depth < 3 and isinstance(v, (tuple, list, frozenset, set)):
        return all(_is_literal(x, depth + 1) for x in v)
    if depth < 3 and isinstance(v, dict):
        return all(_is_literal(k, depth + 1) and _is_literal(x, depth + 1) for k, x in v.items())
    return False


def _followed_module(mod: str) -> bool:
    return (mod == "lib" or mod.startswith("lib.")) and not mod.startswith("lib.infra")


def _followed(obj) -> bool:
    """A function or class of lib outside lib.infra: part of the recipe when a recipe piece names it."""
    obj = inspect.unwrap(obj) if callable(obj) else obj  # an lru_cache'd function is its function
    return (inspect.isfunction(obj) or inspect.isclass(obj)) and _followed_module(getattr(obj, "__module__", None) or "")


_OUTSIDE = object()


def _lib_name(module: str, name: str):
    """What ``from module import name`` binds, importing it as the function would when it runs."""
    try:
        return pkgutil.resolve_name(f"{module}:{name}")
    except AttributeError:  # a submodule not imported yet
        return pkgutil.resolve_name(f"{module}.{name}")


class _Normaliser(ast.NodeTransformer):
    """Removes what cannot change a result (module docstring above) and records the names read."""

    def __init__(self, scope: dict):
        self.scope, self.names, self.attrs, self.constants = scope, set(), [], {}

    def _resolve(self, node):
        if isinstance(node, ast.Name):
            return self.scope.get(node.id, getattr(builtins, node.id, None))
        if isinstance(node, ast.Attribute):
            base = self._resolve(node.value)
            return getattr(base, node.attr, None) if inspect.ismodule(base) else None
        return None

    def visit_Raise(self, node):  # a raise ends the computation: what it says or raises is a message
        return ast.Raise()

    def visit_Assert(self, node):
        node.msg = None
        return self.generic_visit(node)

    def visit_Call(self, node):
        f = self._resolve(node.func)
        if any(f is m for m in _MESSAGE_CALLS) or (inspect.isclass(f) and issubclass(f, BaseException)):
            node.args, node.keywords = [], []
            return node
        return self.generic_visit(node)

    def visit_arg(self, node):
        node.annotation = None
        return node

    def visit_FunctionDef(self, node):
        node.returns = None
        return self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ImportFrom(self, node):  # a local import (``from lib.mlp import build_mlp`` in a function)
        for a in node.names:
            name = a.asname or a.name
            if node.level == 0 and node.module and (node.module == "lib" or node.module.startswith("lib.")):
                self.scope[name] = _lib_name(node.module, a.name)
            else:  # outside lib: not followed, and never a constant
                self.scope[name] = _OUTSIDE
        return node

    def visit_Name(self, node):
        self.names.add(node.id)
        return node

    def visit_Attribute(self, node):  # module.name: a piece to follow, or a constant of a recipe module
        target, base = self._resolve(node), self._resolve(node.value)
        if _followed(target):
            self.attrs.append(target)
        elif inspect.ismodule(base) and _followed_module(base.__name__) and _is_literal(target):
            self.constants[node.attr] = target
        return self.generic_visit(node)


def _piece(obj) -> tuple[str, list, dict]:
    """The normalised tree of one function or class, the objects it reads and the global names it reads."""
    obj = inspect.unwrap(obj)
    tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
    _drop_docstrings(tree)
    scope = dict(vars(sys.modules[obj.__module__]))
    norm = _Normaliser(scope)
    tree = norm.visit(tree)
    read = [scope[n] for n in sorted(norm.names) if n in scope] + norm.attrs
    return ast.dump(tree), read, {**{n: scope[n] for n in sorted(norm.names) if n in scope}, **norm.constants}


def recipe_fingerprint(roots, exclude=()) -> dict:
    """``{qualname: hash}`` of the functions and classes reachable from ``roots`` (see the module doc),
    with the module-level constants they read as ``{name: hash of its value}``."""
    excluded = {id(inspect.unwrap(e)) for e in exclude}
    seen, entries, stack = set(), {}, list(roots)
    while stack:
        obj = inspect.unwrap(stack.pop())
        if id(obj) in seen or id(obj) in excluded:
            continue
        seen.add(id(obj))
        text, read, named = _piece(obj)
        entries.setdefault(obj.__qualname__, []).append(_digest(text))
        for name, v in named.items():
            if not _followed(v) and not inspect.ismodule(v) and _is_literal(v) and not hasattr(builtins, name):
                entries.setdefault(name, []).append(_digest(repr(v)))
        stack += [v for v in read if _followed(v)]
    out = {}
    for k, hashes in sorted(entries.items()):  # pieces of one name from different modules: name/1, name/2, …
        hashes = sorted(set(hashes))
        out.update({k: hashes[0]} if len(hashes) == 1 else {f"{k}/{i}": h for i, h in enumerate(hashes, 1)})
    return out
