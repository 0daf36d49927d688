"""The codebase stays one a newcomer can carry on (issue 23): no function over 80 lines, no module
of the package over 600, and no module (tests included) reaching into another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
# wm_sim/ and the top-level folders pyproject.toml maps into it (envs/ is wm_sim.envs, ...)
PACKAGE_DIRS = ("wm_sim", "envs", "policies", "ros", "configs", "benchmarks")
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 80, 600


def _package_files() -> list[Path]:
    return sorted(p for d in PACKAGE_DIRS for p in (ROOT / d).rglob("*.py"))


def _module_name(path: Path) -> str:
    """The dotted name a file imports as: envs/push.py is wm_sim.envs.push."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] != "wm_sim" and parts[0] in PACKAGE_DIRS:
        parts.insert(0, "wm_sim")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(module: str) -> str:
    return module if module.split(".")[0] == "wm_sim" else f"wm_sim.{module}"


def _private_uses(path: Path) -> list[str]:
    """`from <package module> import _name` of another module, and `<imported module>._name`."""
    tree = ast.parse(path.read_text())
    own, found, modules = _module_name(path), [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] not in PACKAGE_DIRS:
                continue
            source = _absolute(node.module)
            for alias in node.names:
                if alias.name.startswith("_") and source != own:
                    found.append(f"{path.name}:{node.lineno} imports {alias.name} from {source}")
                modules[alias.asname or alias.name] = f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGE_DIRS:
                    name = alias.asname or alias.name.split(".")[0]
                    modules[name] = _absolute(alias.name if alias.asname else name)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
        ):
            found.append(f"{path.name}:{node.lineno} reads {node.value.id}.{node.attr}")
    return found


def test_no_function_is_over_80_lines_and_no_module_over_600():
    long_functions, long_modules = [], []
    for path in _package_files():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not long_modules, long_modules
    assert not long_functions, long_functions


def test_no_module_imports_another_modules_private_names():
    files = [*_package_files(), *sorted((ROOT / "tests").glob("*.py"))]
    found = [use for path in files for use in _private_uses(path)]
    assert not found, found
