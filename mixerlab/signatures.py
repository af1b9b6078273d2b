"""The constructor parameters of a config's ``_target_``, read without importing the target.

The config validator (:mod:`mixerlab.schema`) checks every ``_target_`` node's keys and value types against
its constructor, so a new mixer, data module or option is validated without editing any schema. Importing
the targets to ask :func:`inspect.signature` would cost what the run itself costs before its first check
(torch, timm, Lightning: many seconds on a small machine), and a bad config must fail in a second or two.
So for targets defined in this repository the constructor is read from the source with :mod:`ast` (written
by hand because no maintained library does this cheaply: ``jedi`` does, at ~5 s of CPU per lookup):

- ``class X(Base)`` with an ``__init__``: its parameters, annotations (as source text) and defaults; a
  ``**kwargs`` that the body passes on to ``super().__init__(...)`` adds the base class's parameters;
- a ``@dataclass`` without ``__init__``: its annotated fields;
- a class without ``__init__``: its first base's;
- names are followed through ``from M import X`` (also relative) and module-level ``X = Y`` aliases.

Targets outside the repository (Lightning, timm) and anything the reader cannot follow are imported and
read with :func:`inspect.signature` instead; ``tests/test_config_schema.py`` checks that both readers agree
on every target the shipped configs name.
"""

from __future__ import annotations

import ast
import gc
import importlib
import inspect
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMPTY = inspect.Parameter.empty


@dataclass(frozen=True)
class Param:
    name: str
    annotation: str | None  # source text, e.g. "int | None"; None when unannotated
    default: object = EMPTY  # a literal default, EMPTY when required, ... when not a literal
    owner: str = ""  # dotted path of the class whose constructor declares it


@dataclass(frozen=True)
class Signature:
    target: str
    params: dict[str, Param] = field(default_factory=dict)
    open: bool = False  # takes **kwargs that could not be followed: any further key is accepted


class Unresolved(Exception):
    """The static reader cannot follow this target; the caller imports it instead."""


# ------------------------------------------------------------------------------------------ source access
@cache
def _module_file(module: str) -> Path | None:
    """The source file of a module of this repository, found without importing anything."""
    if not module:
        return None
    base = REPO.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def _parse(path: Path) -> ast.Module:
    return parse_source(path.read_text(), filename=str(path))


def parse_source(source: str, filename: str = "<unknown>", mode: str = "exec") -> ast.AST:
    """``ast.parse``, retried once with the garbage collector paused when CPython 3.11 (fixed in 3.11.8,
    gh-106905) raises its spurious ``SystemError: AST constructor recursion depth mismatch``: seen here in
    long test processes, where the same text parsed fine alone, so the error is the interpreter's state at
    that moment, not the source."""
    try:
        return ast.parse(source, filename=filename, mode=mode)
    except SystemError:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return ast.parse(source, filename=filename, mode=mode)
        finally:
            if enabled:
                gc.enable()


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _find(module: str, name: str, depth: int = 0) -> tuple[str, ast.AST]:
    """``(module, definition)`` where ``module.name`` is defined, following imports and aliases."""
    path = _module_file(module)
    if path is None or depth > 8:
        raise Unresolved(f"{module}.{name}")
    tree = _parse(path)
    for node in reversed(tree.body):  # the last binding wins
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            return module, node
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            if isinstance(node.value, ast.Name):
                return _find(module, node.value.id, depth + 1)
            return module, node
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            return module, node
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    source = _absolute(module, node, path.name == "__init__.py")
                    return _find(source, alias.name, depth + 1)
    # ``target: a.b.C`` where a.b is a package and C a submodule-free class: nothing more to follow
    raise Unresolved(f"{module}.{name}")


def _split(target: str) -> tuple[str, str]:
    """``pkg.mod.Class`` -> (``pkg.mod``, ``Class``); ``pkg.mod.Class.attr`` is not supported here."""
    module, _, name = target.rpartition(".")
    if not module:
        raise Unresolved(target)
    return module, name


# ------------------------------------------------------------------------------------------ constructors
def _literal(node: ast.AST | None):
    if node is None:
        return EMPTY
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return ...


def _function_params(fn: ast.FunctionDef, owner: str, skip_self: bool) -> tuple[dict[str, Param], bool]:
    args = fn.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    params: dict[str, Param] = {}
    for i, (arg, default) in enumerate(zip(positional, defaults, strict=True)):
        if skip_self and i == 0:
            continue
        params[arg.arg] = Param(arg.arg, _annotation(arg), _literal(default), owner)
    for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        params[arg.arg] = Param(arg.arg, _annotation(arg), _literal(default), owner)
    return params, args.kwarg is not None


def _annotation(arg: ast.arg) -> str | None:
    return ast.unparse(arg.annotation) if arg.annotation is not None else None


def _passes_kwargs_to_super(fn: ast.FunctionDef, kwarg: str) -> bool:
    for node in ast.walk(fn):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "__init__"
            and isinstance(node.func.value, ast.Call)
            and isinstance(node.func.value.func, ast.Name)
            and node.func.value.func.id == "super"
        ):
            return any(k.arg is None and isinstance(k.value, ast.Name) and k.value.id == kwarg
                       for k in node.keywords)
    return False


def _is_dataclass(cls: ast.ClassDef) -> bool:
    for deco in cls.decorator_list:
        func = deco.func if isinstance(deco, ast.Call) else deco
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "dataclass":
            return True
    return False


def _base_target(module: str, base: ast.expr) -> str:
    """The dotted path of a base class expression as ``module`` imports it (``L.LightningDataModule`` ->
    ``lightning.LightningDataModule``), followed to its definition where that is in this repository."""
    parts = ast.unparse(base).split(".")
    head = parts[0]
    for node in _parse(_module_file(module)).body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (alias.asname or alias.name) == head:
                    return ".".join([alias.name, *parts[1:]])
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == head:
                    source = _absolute(module, node, _module_file(module).name == "__init__.py")
                    dotted = ".".join([source, alias.name, *parts[1:]])
                    try:
                        found_module, found = _find(source, alias.name)
                        if len(parts) == 1 and isinstance(found, ast.ClassDef):
                            return f"{found_module}.{found.name}"
                    except Unresolved:
                        pass
                    return dotted
    return ".".join([module, *parts])


def _class_signature(module: str, cls: ast.ClassDef, depth: int = 0) -> Signature:
    owner = f"{module}.{cls.name}"
    if depth > 8:
        raise Unresolved(owner)
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is None and _is_dataclass(cls):
        params = {}
        for node in cls.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                text = ast.unparse(node.annotation)
                if text.startswith(("ClassVar", "typing.ClassVar")):
                    continue
                default = _literal(node.value)
                if isinstance(node.value, ast.Call):  # field(default_factory=...): optional
                    default = ...
                params[node.target.id] = Param(node.target.id, text, default, owner)
        return Signature(owner, params)
    if init is None:
        if not cls.bases:
            return Signature(owner)
        return _base_signature(module, cls.bases[0], depth)
    params, has_kwargs = _function_params(init, owner, skip_self=True)
    if not has_kwargs:
        return Signature(owner, params)
    if not cls.bases or not _passes_kwargs_to_super(init, init.args.kwarg.arg):
        return Signature(owner, params, open=True)
    try:
        base = _base_signature(module, cls.bases[0], depth)
    except Unresolved:
        return Signature(owner, params, open=True)
    return Signature(owner, {**base.params, **params}, open=base.open)


def _base_signature(module: str, base: ast.expr, depth: int) -> Signature:
    target = _base_target(module, base)
    try:
        return static_signature(target, depth + 1)
    except Unresolved:
        if not _imports_allowed[0]:
            raise
        return imported_signature(target)


_imports_allowed = [True]  # static_signature(..., imports=False) turns the import fallback off


def static_signature(target: str, depth: int = 0) -> Signature:
    module, name = _split(target)
    found_module, node = _find(module, name)
    if isinstance(node, ast.ClassDef):
        return _class_signature(found_module, node, depth)
    if isinstance(node, ast.FunctionDef):
        params, has_kwargs = _function_params(node, f"{found_module}.{name}", skip_self=False)
        return Signature(target, params, open=has_kwargs)
    raise Unresolved(target)


# ------------------------------------------------------------------------------------------ by import
def imported_signature(target: str) -> Signature:
    """The target imported and read with :func:`inspect.signature` (Lightning, timm, ...)."""
    from hydra.utils import get_object

    obj = get_object(target)
    return _inspected(obj, target)


def _inspected(obj, target: str, depth: int = 0) -> Signature:
    sig = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
    params, has_kwargs = {}, False
    for i, p in enumerate(sig.parameters.values()):
        if inspect.isclass(obj) and i == 0 and p.name == "self":
            continue
        if p.kind is p.VAR_KEYWORD:
            has_kwargs = True
            continue
        if p.kind is p.VAR_POSITIONAL:
            continue
        annotation = None if p.annotation is EMPTY else (
            p.annotation if isinstance(p.annotation, str) else inspect.formatannotation(p.annotation))
        default = p.default if p.default is EMPTY or _is_literal(p.default) else ...
        params[p.name] = Param(p.name, annotation, default, target)
    if has_kwargs and inspect.isclass(obj) and depth < 8:  # follow **kwargs up the MRO, as Lightning does
        for base in obj.__mro__[1:]:
            if "__init__" in vars(base) and base is not object:
                inherited = _inspected(base, f"{base.__module__}.{base.__qualname__}", depth + 1)
                return Signature(target, {**inherited.params, **params}, open=inherited.open)
    return Signature(target, params, open=has_kwargs)


def _is_literal(value) -> bool:
    try:
        return ast.literal_eval(repr(value)) == value
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False


@cache
def signature(target: str, imports: bool = True) -> Signature:
    """The constructor of ``target``: read from the source when it is this repository's, else imported.

    ``imports=False`` raises :class:`Unresolved` instead of importing anything (the validator's fast pass).
    """
    _imports_allowed[0] = imports
    try:
        return static_signature(target)
    except Unresolved:
        if not imports:
            raise
        return imported_signature(target)
    finally:
        _imports_allowed[0] = True


@cache
def module_literal(path: str):
    """A literal constant by ``module.NAME`` or ``module.Class.NAME`` (e.g. ``mixerlab.recipe.DECAYS``),
    read from the source, so the validator's allowed values are the code's own tuples."""
    parts = path.split(".")
    for split in (len(parts) - 1, len(parts) - 2):
        module, names = ".".join(parts[:split]), parts[split:]
        if _module_file(module) is None:
            continue
        _, node = _find(module, names[0])
        if len(names) == 2 and isinstance(node, ast.ClassDef):
            node = next(n for n in node.body if isinstance(n, ast.Assign)
                        and any(isinstance(t, ast.Name) and t.id == names[1] for t in n.targets))
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            return ast.literal_eval(node.value)
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)
