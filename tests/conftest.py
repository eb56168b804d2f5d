"""Fixtures and settings for the whole suite; what the tests share otherwise is in tests/helpers.py.

tests/unit runs in this process and fast (python -m pytest tests/unit); tests/e2e starts processes, kills them and
runs torchrun, and is marked `slow`. python -m pytest runs both."""
from __future__ import annotations

import gc
import shutil
import textwrap
from pathlib import Path

import pytest

import new_project
import train  # torch, torchvision and the project, imported once for the whole session

from helpers import DATA_LOADERS, MODEL, REPO, tiny_digits, train_args

# As the entry points do: the millions of objects these imports made stay out of every garbage collection, which
# would otherwise walk them again and again during the runs the tests make in this process.
gc.freeze()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of tests/e2e (processes, kills, torchrun) is `slow`: `-m "not slow"` leaves them out. A test
    marked `needs(paths)` is skipped in a project that leaves one of those paths out (new_project.py --minimal)."""
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.slow)
        for mark in item.iter_markers("needs"):
            missing = [path for path in mark.args if not (REPO / path).exists()]
            if missing:
                item.add_marker(pytest.mark.skip(reason=f"this project leaves out {', '.join(missing)}"))


@pytest.fixture
def save_dir(tmp_path: Path) -> Path:
    return tmp_path / "saved"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished run (1 epoch); tests copy it before they change anything."""
    root = tmp_path_factory.mktemp("edges")
    data = tiny_digits(root / "digits")
    assert train.main(train_args(root / "saved", data, "--run-id", "r")) == 0
    return root / "saved" / "models" / "digits_cnn" / "r"


@pytest.fixture
def run_copy(trained, tmp_path):
    """A copy of the trained run in its usual layout under tmp_path/saved."""
    shutil.copytree(trained.parents[2], tmp_path / "saved")
    return tmp_path / "saved" / "models" / "digits_cnn" / "r"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the template with the user's dict-batch loader and two-input model."""
    folder = tmp_path_factory.mktemp("user") / "project"
    assert new_project.main([str(folder)]) == 0
    (folder / "data_loader" / "data_loaders.py").write_text(textwrap.dedent(DATA_LOADERS).lstrip())
    (folder / "model" / "model.py").write_text(textwrap.dedent(MODEL).lstrip())
    return folder


@pytest.fixture
def user_code(monkeypatch):
    """The project copy's user code in this process too (one torch import less than a train.py process): its classes
    set into this repository's data_loader/data_loaders.py and model/model.py modules as if defined there."""
    import data_loader.data_loaders
    import model.model

    for module, text in ((data_loader.data_loaders, DATA_LOADERS), (model.model, MODEL)):
        namespace = {"__name__": module.__name__}
        exec(textwrap.dedent(text), namespace)
        for name, obj in namespace.items():
            if getattr(obj, "__module__", None) == module.__name__:
                monkeypatch.setattr(module, name, obj, raising=False)
