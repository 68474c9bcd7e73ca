"""What the README installs is what the app runs on: every third-party module that app.py, core/ and
ui/ import (at the top of a file or inside a function) comes from requirements.txt or from what its
packages pull in; requirements-dev.txt holds test tools only. (`.ci/run` also proves it end to end:
a fresh venv with requirements.txt alone trains a few steps.)"""
import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LOCAL = {"core", "ui", "app", "tests", "bench"}
TEST_TOOLS = {"pytest", "playwright", "gradio-client", "webuiapi"}


def requirement_names(file: str) -> set[str]:
    lines = (line.split("#", 1)[0].strip() for line in (ROOT / file).read_text().splitlines())
    return {canonical(Requirement(line).name) for line in lines if line}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_closure(names: set[str]) -> set[str]:
    """`names` and every distribution they require (unconditionally, on this platform), transitively."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for spec in md.requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonical(req.name))
    return seen


def imported_modules() -> dict[str, str]:
    """Top-level module name -> the first file importing it, over app.py, core/ and ui/."""
    found = {}
    for path in [ROOT / "app.py", *sorted((ROOT / "core").rglob("*.py")), *sorted((ROOT / "ui").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return {m: f for m, f in found.items() if m not in LOCAL and m not in sys.stdlib_module_names}


def test_the_app_imports_only_what_requirements_txt_installs():
    provided = installed_closure(requirement_names("requirements.txt"))
    by_module = md.packages_distributions()
    missing = {module: where for module, where in imported_modules().items()
               if not {canonical(d) for d in by_module.get(module, [])} & provided}
    assert not missing, (f"imported by the app but not installed by requirements.txt (nor by its packages): "
                         f"{missing}; add them to requirements.txt")


def test_dev_requirements_are_test_tools_only():
    assert requirement_names("requirements-dev.txt") <= TEST_TOOLS
