"""netsurgeon's code stays small: no module over 500 lines, no function over 60 lines.

Read with ``ast`` from the source tree (nothing is imported). A function's length is its span in
the file, decorators and docstring included, as a reader sees it. Implementation modules are not
shadowed by what their package re-exports: ``import netsurgeon.x.y`` gives a module.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import types
from pathlib import Path

import netsurgeon

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
PACKAGE = Path(netsurgeon.__file__).parent

#: Functions allowed over the limit, as ``"path relative to netsurgeon/::qualified name"``: none.
#: An entry that no longer exceeds the limit fails the test too, so the list never goes stale.
ALLOWED_LONG_FUNCTIONS: frozenset[str] = frozenset()


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _functions(path: Path) -> list[tuple[str, int]]:
    """``(qualified name, lines)`` of every function and method in the module at ``path``."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                found.append((prefix + child.name, child.end_lineno - start + 1))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(path.read_text()), "")
    return found


def _long_functions() -> dict[str, int]:
    return {
        f"{path.relative_to(PACKAGE).as_posix()}::{name}": lines
        for path in _modules()
        for name, lines in _functions(path)
        if lines > MAX_FUNCTION_LINES
    }


def test_no_module_is_longer_than_500_lines() -> None:
    lengths = {
        p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines()) for p in _modules()
    }
    assert len(lengths) > 20  # the walk found the package
    too_long = {path: n for path, n in lengths.items() if n > MAX_MODULE_LINES}
    assert too_long == {}, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_no_function_is_longer_than_60_lines_outside_the_allow_list() -> None:
    long = _long_functions()
    unexpected = {name: n for name, n in long.items() if name not in ALLOWED_LONG_FUNCTIONS}
    assert unexpected == {}, f"functions over {MAX_FUNCTION_LINES} lines: {unexpected}"


def test_every_allowed_long_function_still_exists_and_is_still_long() -> None:
    stale = sorted(ALLOWED_LONG_FUNCTIONS - set(_long_functions()))
    assert stale == [], f"remove these from ALLOWED_LONG_FUNCTIONS (now short or gone): {stale}"


def test_the_function_measure_counts_decorators_and_docstrings(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(57))
    source = f'@staticmethod\ndef f():\n    """Doc."""\n{body}\n\nclass C:\n    def g(self):\n        pass\n'
    path = tmp_path / "m.py"
    path.write_text(source)
    assert _functions(path) == [("f", 60), ("C.g", 2)]


def test_no_implementation_module_is_shadowed_by_a_re_export() -> None:
    shadowed = []
    for info in pkgutil.walk_packages(netsurgeon.__path__, "netsurgeon."):
        if info.name.startswith("netsurgeon.integrations"):
            continue  # optional extras import their framework
        importlib.import_module(info.name)
        parent, _, child = info.name.rpartition(".")
        if not isinstance(getattr(importlib.import_module(parent), child), types.ModuleType):
            shadowed.append(info.name)
    assert shadowed == []
