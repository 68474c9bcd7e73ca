"""The data flows one way (DESIGN.md): ui -> pipelines -> samplers/models. Checked on the source,
so a forbidden import fails here before it tangles the layers."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> packages it must never import
FORBIDDEN = {
    "core.models": ("core.samplers", "core.pipelines", "core.train", "core.world", "ui", "gradio"),
    "core.samplers": ("core.models", "core.pipelines", "core.train", "ui", "gradio"),
    "core.checkpoints": ("core.samplers", "core.pipelines", "core.train", "ui", "gradio"),
    "core.world": ("core.models", "core.samplers", "core.pipelines", "core.train", "ui", "gradio", "torch"),
    "core.pipelines": ("core.train", "ui", "gradio"),
    "core": ("ui", "gradio", "diffusers", "transformers"),
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(package: str) -> list[Path]:
    folder = ROOT.joinpath(*package.split("."))
    return sorted(folder.rglob("*.py")) if folder.is_dir() else []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way(package):
    bad = []
    for path in _files(package):
        for name in _imports(path):
            for forbidden in FORBIDDEN[package]:
                if name == forbidden or name.startswith(forbidden + "."):
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_no_unsafe_torch_load():
    for path in ROOT.rglob("*.py"):
        if ".venv" in path.parts or "bench-venv" in str(path):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" \
                    and getattr(node.func, "value", None) is not None \
                    and getattr(node.func.value, "id", None) == "torch":
                kwargs = {k.arg: k.value for k in node.keywords}
                ok = "weights_only" in kwargs and getattr(kwargs["weights_only"], "value", None) is True
                assert ok, f"{path.relative_to(ROOT)}:{node.lineno} calls torch.load without weights_only=True"
