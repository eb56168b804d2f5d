"""The project's layers only look down: utils; data_loader, model and base; trainer; tools; the entry points."""
import ast

from helpers import REPO

LAYERS = {"utils": 0, "data_loader": 1, "model": 1, "base": 1, "trainer": 2, "tools": 3}
ENTRY_POINTS = {path.stem for path in REPO.glob("*.py")}
# base.BaseTrainer is the Trainer under the classic template's name, imported when a classic project asks for it.
ALLOWED = {("base/__init__.py", "trainer.trainer")}


def layer(module: str) -> int | None:
    top = module.split(".")[0]
    return LAYERS.get(top, len(LAYERS) if top in ENTRY_POINTS else None)


def imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for path in sorted(REPO.glob("**/*.py")):
        relative = path.relative_to(REPO)
        if relative.parts[0] not in LAYERS and len(relative.parts) > 1:  # tests, scripts, benchmarks, .venv
            continue
        own = layer(".".join(relative.with_suffix("").parts))
        upward += [f"{relative} imports {name}" for name in imports(path)
                   if layer(name) is not None and layer(name) > own and (str(relative), name) not in ALLOWED]
    assert upward == []


def test_the_check_finds_an_upward_import(tmp_path):
    path = tmp_path / "upward.py"
    path.write_text("def f():\n    from trainer.trainer import Trainer\n")
    assert layer("utils.run") < max(layer(name) for name in imports(path))
