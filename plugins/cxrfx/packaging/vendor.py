"""Vendoring: copy the part of a Python package that a bundle's configs use into the bundle's ``scripts/``.

A Model Zoo bundle must run without our repository, so the ``cxrfx`` modules its configs name are copied into
``scripts/cxrfx/`` of the archive. Which modules: every dotted ``cxrfx.…`` name in the configs (imports,
``_target_`` paths, ``$`` expressions), then everything those modules import from the package, followed
through the source (absolute and relative imports, at module level and inside functions, since a lazy import
is still a dependency). Parent packages come along for their ``__init__.py``. Two things an import graph does
not show are handled explicitly: a package that discovers its modules at run time
(``pkgutil.iter_modules(__path__)``) is copied whole, and a non-Python file beside a module whose name the
module spells out as a string (``"datalist.schema.json"``) is copied with it. Tests are never reached, because
no shipped module imports them.

The archive's configs import ``scripts`` first (:data:`BOOTSTRAP_IMPORT`); ``scripts/__init__.py``
(:data:`SCRIPTS_INIT`) puts ``scripts/`` at the front of ``sys.path``, so the vendored copy — the code the
configs and weights were checked with — wins over any installed ``cxrfx``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["BOOTSTRAP_IMPORT", "SCRIPTS_INIT", "VendorPlan", "config_references", "plan_vendoring",
           "write_vendored", "add_bootstrap_import", "zoo_json", "format_json_file"]

BOOTSTRAP_IMPORT = "$import scripts"

SCRIPTS_INIT = '''"""Bundle scripts: the cxrfx code this bundle's configs use, vendored by `python -m cxrfx package`.

The configs import this package first ("$import scripts"); it puts this folder at the front of sys.path so
that `import cxrfx` finds the copy shipped here, the code the configs and weights were checked with, even
where another cxrfx is installed. Run the bundle from its root folder (as every Model Zoo bundle), or put the
root on PYTHONPATH, so that `scripts` itself is importable.
"""

import os
import sys
import warnings

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
_loaded = sys.modules.get("{package}")
if _loaded is not None and not os.path.abspath(_loaded.__file__).startswith(_HERE + os.sep):
    warnings.warn(f"{package} was imported from {{_loaded.__file__}} before this bundle's scripts; "
                  f"the bundle runs with that copy instead of {{_HERE}}/{package}")
'''

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


def zoo_json(obj) -> str:
    """``obj`` as the Model Zoo's pre-commit ``pretty-format-json`` hook (``--autofix --no-sort-keys
    --indent=4``) writes it: keys in their order, 4-space indent, ASCII with ``\\uXXXX`` escapes, ``": "``
    and ``","`` separators, and one final newline (so ``end-of-file-fixer`` passes too)."""
    return json.dumps(obj, indent=4, ensure_ascii=True, separators=(",", ": ")) + "\n"


def format_json_file(path: str) -> bool:
    """Rewrite the JSON file ``path`` in :func:`zoo_json` form, as the zoo's hook autofixes it (duplicate keys:
    the last wins, as ``json.load``). Returns True when the bytes changed."""
    with open(path, encoding="utf-8", newline="") as f:
        contents = f.read()
    pretty = zoo_json(json.loads(contents))
    if contents == pretty:
        return False
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(pretty)
    return True


@dataclass
class VendorPlan:
    """What to copy: package-relative file paths (POSIX), and the third-party top-level imports they make."""

    package: str
    source_root: str  # the folder that holds the package folder
    files: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    external_imports: dict[str, list[str]] = field(default_factory=dict)  # top-level name -> importing files
    optional_imports: dict[str, list[str]] = field(default_factory=dict)  # the same, inside try/except ImportError


def config_references(config_paths: Iterable[str], package: str) -> set[str]:
    """Every dotted name starting with ``package`` in the string values of the given JSON configs."""
    pattern = re.compile(rf"(?<![\w.]){re.escape(package)}(?:\.{_NAME})*")
    found: set[str] = set()

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            found.update(pattern.findall(value))

    for path in config_paths:
        with open(path, encoding="utf-8") as f:
            walk(json.load(f))
    return found


def _module_file(source_root: str, module: str) -> str | None:
    """The file defining ``module`` under ``source_root`` (``a/b.py`` or ``a/b/__init__.py``), if any."""
    base = os.path.join(source_root, *module.split("."))
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def _longest_module(source_root: str, dotted: str) -> str | None:
    """``cxrfx.networks.FoundationX`` -> ``cxrfx.networks`` (the longest prefix that is a module)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if _module_file(source_root, ".".join(parts[:end])):
            return ".".join(parts[:end])
    return None


def _guarded_imports(tree: ast.AST) -> set[int]:
    """ids of import nodes inside ``try`` blocks that catch ImportError: optional dependencies."""
    catches = ("ImportError", "ModuleNotFoundError", "Exception")
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                h.type is None or any(isinstance(n, ast.Name) and n.id in catches for n in ast.walk(h.type))
                for h in node.handlers):
            guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)
                        if isinstance(n, (ast.Import, ast.ImportFrom))}
    return guarded


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, bool]]:
    """(absolute name, optional) for every import in ``tree``; ``from a import b`` yields ``a`` and ``a.b``."""
    guarded = _guarded_imports(tree)
    names = []
    for node in ast.walk(tree):
        optional = id(node) in guarded
        if isinstance(node, ast.Import):
            names += [(alias.name, optional) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            names.append((parent, optional))
            names += [(f"{parent}.{alias.name}", optional) for alias in node.names if alias.name != "*"]
    return names


def _resources(path: str, tree: ast.AST) -> list[str]:
    """Non-Python files beside ``path`` that the module names in a string literal."""
    folder = os.path.dirname(path)
    beside = {n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n)) and not n.endswith(".py")}
    named = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return sorted(os.path.join(folder, n) for n in beside & named)


def _discovers_submodules(tree: ast.AST) -> bool:
    """True when the module imports its package's modules by listing them (``pkgutil.iter_modules(__path__)``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "iter_modules":
            if any(isinstance(a, ast.Name) and a.id == "__path__" for a in node.args):
                return True
    return False


def plan_vendoring(config_paths: Iterable[str], package: str = "cxrfx", source_root: str | None = None) -> VendorPlan:
    """Follow the configs' references through the package's imports (see module docstring).

    Args:
        config_paths: the bundle's JSON configs.
        package: the top-level package to vendor.
        source_root: the folder holding the package folder (default: where ``package`` is imported from).
    """
    if source_root is None:
        module = __import__(package)
        source_root = os.path.dirname(os.path.dirname(os.path.abspath(module.__file__)))
    plan = VendorPlan(package=package, source_root=source_root)
    named = config_references(config_paths, package)
    queue = sorted({m for m in (_longest_module(source_root, d) for d in named) if m})
    seen: set[str] = set()
    files: set[str] = set()
    stdlib = set(sys.stdlib_module_names)
    while queue:
        module = queue.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(source_root, module)
        if path is None:
            continue
        files.add(path)
        parts = module.split(".")
        queue += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run their __init__
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        is_package = path.endswith("__init__.py")
        for name, optional in _imports(tree, module, is_package):
            top = name.split(".")[0]
            if top == package:
                found = _longest_module(source_root, name)
                if found and found not in seen:
                    queue.append(found)
            elif top and top not in stdlib:
                where = plan.optional_imports if optional else plan.external_imports
                where.setdefault(top, []).append(os.path.relpath(path, source_root).replace(os.sep, "/"))
        files.update(_resources(path, tree))
        if is_package and _discovers_submodules(tree):
            folder = os.path.dirname(path)
            queue += [f"{module}.{n[:-3]}" for n in os.listdir(folder) if n.endswith(".py") and n != "__init__.py"]
    plan.modules = sorted(m for m in seen if _module_file(source_root, m))
    plan.files = sorted(os.path.relpath(p, source_root).replace(os.sep, "/") for p in files)
    plan.external_imports = {k: sorted(set(v)) for k, v in sorted(plan.external_imports.items())}
    plan.optional_imports = {k: sorted(set(v)) for k, v in sorted(plan.optional_imports.items())
                             if k not in plan.external_imports}
    return plan


def write_vendored(plan: VendorPlan, scripts_dir: str) -> list[str]:
    """Copy the planned files into ``scripts_dir/<package>/…`` and write ``scripts_dir/__init__.py``.

    Returns the written paths relative to ``scripts_dir``.
    """
    os.makedirs(scripts_dir, exist_ok=True)
    written = []
    for rel in plan.files:
        target = os.path.join(scripts_dir, *rel.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(plan.source_root, *rel.split("/")), target)
        written.append(rel)
    with open(os.path.join(scripts_dir, "__init__.py"), "w", encoding="utf-8") as f:
        f.write(SCRIPTS_INIT.format(package=plan.package))
    return ["__init__.py"] + written


def add_bootstrap_import(config_path: str, package: str = "cxrfx") -> bool:
    """Prepend :data:`BOOTSTRAP_IMPORT` to the ``imports`` list of a JSON config that uses ``package``.

    Overlay configs without an ``imports`` list (``demo.json``, ``evaluate.json``) run merged after a base
    config whose imports already hold it, and adding a list there would replace the base config's list when
    MONAI merges them; those are left alone. Returns True when the file was changed.
    """
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    imports = config.get("imports") if isinstance(config, dict) else None
    if not isinstance(imports, list) or BOOTSTRAP_IMPORT in imports or not config_references([config_path], package):
        return False
    config["imports"] = [BOOTSTRAP_IMPORT] + imports
    with open(config_path, "w", encoding="utf-8", newline="\n") as f:
        f.write(zoo_json(config))
    return True
