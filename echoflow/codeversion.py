"""Digests of the package code that a workflow script runs.

Snakemake reruns a rule when its script changes, but it does not see the ``echoflow`` modules that the script
imports. Each rule therefore passes :func:`code_digest` of its script as a param, and a change to any module
the script imports, directly or through other modules, reruns the rule.

The top-level ``echoflow/__init__.py`` is left out, because it contains only the version. So a release that
changes nothing else reruns nothing. Files that are not Python code (templates) count for a module whose source
names them.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path
from typing import Iterator

PACKAGE = "echoflow"
PACKAGE_DIR = Path(__file__).resolve().parent


def imported_names(source: str, package: str = PACKAGE) -> set[str]:
    """Return the dotted names of ``package`` that ``source`` imports, inside functions too.

    ``from echoflow import via`` gives both ``echoflow`` and ``echoflow.via``, because ``via`` may be a module
    or a name defined in the package's ``__init__``.
    """
    names = set()
    for node in _statements(ast.parse(source).body):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name == package or name.startswith(package + ".")}


def _statements(nodes: list) -> Iterator[ast.stmt]:
    """Yield every statement in ``nodes`` and in the blocks nested in them.

    Expressions are skipped: visiting every node with ``ast.walk`` made the digests 2.5 times slower.
    """
    for node in nodes:
        yield node
        for block in ("body", "orelse", "finalbody", "handlers", "cases"):
            yield from _statements(getattr(node, block, None) or [])


def module_file(name: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """Return the file of module ``name`` (dotted, starting with the package name), or None if there is none."""
    parts = name.split(".")[1:]
    base = package_dir.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _parent_packages(path: Path, package_dir: Path) -> list[Path]:
    """Return the ``__init__.py`` files that Python runs before the module at ``path``."""
    inits = []
    folder = path.parent
    while folder != package_dir and package_dir in folder.parents:
        inits.append(folder / "__init__.py")
        folder = folder.parent
    return [init for init in inits if init.is_file()]


@functools.lru_cache(maxsize=None)
def _imports_of(path: Path, package: str) -> frozenset[str]:
    """Return :func:`imported_names` of one file, parsing each file once per process."""
    return frozenset(imported_names(path.read_text(encoding="utf-8"), package))


def code_files(script: str | Path, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """Return the package files that ``script`` runs when it is executed, sorted.

    Follows imports from module to module. The top-level ``__init__.py`` is left out (see the module docs),
    and data files in the package count when a collected module's source contains their file name.
    """
    package_init = package_dir / "__init__.py"
    pending = [Path(script)]
    seen: set[Path] = set()
    while pending:
        path = pending.pop()
        for name in _imports_of(path, package_dir.name):
            found = module_file(name, package_dir)
            if found is None:
                continue
            for module in [found, *_parent_packages(found, package_dir)]:
                if module not in seen and module != package_init:
                    seen.add(module)
                    pending.append(module)
    sources = "\n".join(path.read_text(encoding="utf-8") for path in seen)
    seen.update(path for path in _data_files(package_dir) if path.name in sources)
    return sorted(seen)


@functools.lru_cache(maxsize=None)
def _data_files(package_dir: Path) -> tuple[Path, ...]:
    """Return the files in the package that are not Python code, such as templates."""
    return tuple(path for path in package_dir.rglob("*")
                 if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts)


@functools.lru_cache(maxsize=None)
def code_digest(script: str, package_dir: Path = PACKAGE_DIR) -> str:
    """Return a SHA-256 digest of the package files that ``script`` runs (names relative to the package)."""
    digest = hashlib.sha256()
    for path in code_files(script, package_dir):
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()
