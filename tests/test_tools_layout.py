"""The shape of ``tools/``: the tool modules and the contract at the top, libraries in
subpackages below them, and nothing of the service in any of it.

Import checks run in a fresh interpreter, which imports every module of ``tools`` (and so
the union of what each one loads: if none of the service's packages is loaded after all of
them, none is loaded by any one of them). The direction of imports is checked on the source
(every ``import`` statement, those inside functions included).
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import tools
from procplat.core.registry import BUILTIN_TOOLS

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS_DIR = REPO_ROOT / "tools"
SERVICE_PACKAGES = ("procplat", "starlette", "sqlalchemy")
TOP_LEVEL_LIBRARIES = {"tools.contract"}


def all_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(tools.__path__, "tools."))


def module_path(name: str) -> Path:
    relative = Path(*name.split(".")[1:])
    package = TOOLS_DIR / relative / "__init__.py"
    return package if package.is_file() else (TOOLS_DIR / relative).with_suffix(".py")


def imported_modules(name: str) -> set[str]:
    """The absolute names of every module ``name``'s source imports."""
    path = module_path(name)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_the_top_level_holds_the_seven_tools_and_the_contract() -> None:
    top = {m.name for m in pkgutil.iter_modules(tools.__path__, "tools.") if not m.ispkg}
    assert top - TOP_LEVEL_LIBRARIES == {m.__name__ for m in BUILTIN_TOOLS}
    assert len(BUILTIN_TOOLS) == 7


def test_every_subpackage_has_a_docstring_and_all() -> None:
    packages = [m.name for m in pkgutil.walk_packages(tools.__path__, "tools.") if m.ispkg]
    assert {"tools.raster", "tools.raster.cog", "tools.render", "tools.align", "tools.archive",
            "tools.detect", "tools.runtime"} <= set(packages)
    for name in packages:
        tree = ast.parse(module_path(name).read_text())
        assert ast.get_docstring(tree), f"{name} has no docstring"
        names = [t.id for node in tree.body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name)]
        assert "__all__" in names, f"{name} has no __all__"


def test_no_library_module_imports_a_tool_module() -> None:
    tool_modules = {m.__name__ for m in BUILTIN_TOOLS}
    libraries = [m for m in all_modules() if m not in tool_modules]
    assert len(libraries) > 20
    offenders = {m: sorted(imported_modules(m) & tool_modules) for m in libraries}
    assert {m: found for m, found in offenders.items() if found} == {}


def test_no_tools_source_imports_the_service() -> None:
    offenders = {
        m: sorted(i for i in imported_modules(m) if i.split(".")[0] in SERVICE_PACKAGES)
        for m in all_modules()
    }
    assert {m: found for m, found in offenders.items() if found} == {}


def test_importing_any_tools_module_loads_neither_the_service_starlette_nor_sqlalchemy() -> None:
    modules = all_modules()
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {SERVICE_PACKAGES!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True,
                          capture_output=True, text=True)
    assert json.loads(done.stdout.splitlines()[-1]) == []
    assert len(modules) > 30  # every module was imported, subpackages included
