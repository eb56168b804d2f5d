"""Where the `type` names of a config are looked up: your modules first, then the template's own, then torch's.

A config can only name a class or function that one of these modules defines; it never imports an arbitrary
path. In your modules (`model/model.py`, `model/loss.py`, `model/metric.py`, `data_loader/data_loaders.py`,
`trainer/custom.py`) every public class or function defined in this project is found, whether or not the
module has an `__all__`; names imported there from torch or other libraries are not offered. A name of yours
that the template also defines replaces the template's, and the log says so once.
"""
from __future__ import annotations

import importlib
import logging
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from utils.errors import ConfigError, blame, suggest

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Catalog:
    """The modules one config section's names are looked up in, in order."""

    user: tuple[str, ...]  # yours: names defined in the project are found without __all__
    builtin: tuple[str, ...]  # the template's and torch's: their __all__, or their public names


CATALOGS = {
    "arch": Catalog(("model.model",), ("model.builtin.models", "model.builtin.torchvision_model")),
    "loss": Catalog(("model.loss",), ("model.builtin.losses", "torch.nn")),
    "metrics": Catalog(("model.metric",), ("model.builtin.metrics",)),
    "data_loader": Catalog(("data_loader.data_loaders",), ("data_loader.builtin", "data_loader.device_loader")),
    "trainer": Catalog(("trainer.custom",), ("trainer.trainer",)),
    "callbacks": Catalog(("trainer.custom",), ("trainer.callbacks",)),
    "optimizer": Catalog((), ("torch.optim",)),
    "lr_scheduler": Catalog((), ("torch.optim.lr_scheduler",)),
    "arch.init": Catalog((), ("torch.nn.init",)),
    "transform": Catalog((), ("data_loader.transforms", "torchvision.transforms.v2")),
}

_replaced: set[tuple[str, str]] = set()  # (section, name) already reported


def module_label(name: str) -> str:
    """`model.model` -> `model/model.py` for the project's modules; torch's keep their dotted name."""
    path = REPO / Path(*name.split("."))
    if path.with_suffix(".py").is_file():
        return str(path.with_suffix(".py").relative_to(REPO))
    if (path / "__init__.py").is_file():
        return str(path.relative_to(REPO)) + "/"
    return name


def _import(name: str) -> ModuleType | None:
    """The module, or None for one of the project's that does not exist (a project may have left it out)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            return None
        raise _import_error(name, e) from None
    except Exception as e:
        raise _import_error(name, e) from None


def _import_error(name: str, e: Exception) -> ConfigError:
    """Name the file and line of the project's own code where importing `name` failed."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.startswith(str(REPO))
              and ".venv" not in f.filename]
    where = ""
    if isinstance(e, SyntaxError) and e.filename:
        where = f" ({Path(e.filename).name}, line {e.lineno})"
    elif frames:
        where = f" ({Path(frames[-1].filename).relative_to(REPO)}, line {frames[-1].lineno})"
    return ConfigError(f"Could not import {module_label(name)}: {type(e).__name__}: {e}{where}. Fix that file; "
                       "a config's types are looked up there.")


def _names(module: ModuleType, user: bool) -> dict[str, Any]:
    """The callables a config may name in `module`."""
    exported = getattr(module, "__all__", None)
    if user:
        package = module.__name__.split(".")[0]
        names = set(exported or []) | {
            n for n, obj in vars(module).items()
            if not n.startswith("_") and str(getattr(obj, "__module__", "")).split(".")[0] == package}
    else:
        names = set(exported or (n for n in dir(module) if not n.startswith("_")))
    return {n: getattr(module, n) for n in sorted(names) if callable(getattr(module, n, None))}


def lookup(name: Any, section: str, key: str | None = None, source: str | None = "config") -> Any:
    """The class or function `name` of the section's catalog (`key` is the config key, for messages). With `source`
    None (a step that a component builds from its own args), an unknown name is a ValueError that begins with
    `key`, for the call that built the component to name its whole key."""
    catalog = CATALOGS[section]
    key = key or section
    if not isinstance(name, str):
        if source is None:
            raise ValueError(f"{key}.type must be the name of a class or function, got {name!r}.")
        raise ConfigError(f"{source}: '{key}' must be the name of a class or function, got {name!r}.")
    found: list[tuple[str, Any]] = []
    offered: set[str] = set()
    for module_name, user in [(m, True) for m in catalog.user] + [(m, False) for m in catalog.builtin]:
        module = _import(module_name)
        if module is None:
            continue
        names = _names(module, user)
        offered |= set(names)
        if name in names:
            found.append((module_name, names[name]))
    if not found and source is None:
        raise ValueError(f"{key}.type: unknown {section} type '{name}'.{suggest(name, sorted(offered))} "
                         f"{_where(catalog)}")
    if not found:
        where = blame(source, key if key.endswith(".type") else f"{key}.type")
        raise ConfigError(f"{where}: unknown {key} type '{name}'.{suggest(name, sorted(offered))} {_where(catalog)}")
    (module_name, obj), rest = found[0], [m for m, o in found[1:] if o is not found[0][1]]
    if catalog.user and module_name in catalog.user and rest and (section, name) not in _replaced:
        _replaced.add((section, name))
        log.info("%s: using your %s from %s; it replaces the template's %s in %s.", key, name,
                 module_label(module_name), name, module_label(rest[0]))
    return obj


def _where(catalog: Catalog) -> str:
    places = ", ".join(module_label(m) for m in catalog.user + catalog.builtin)
    if not catalog.user:
        return f"Names here are looked up in {places} only; check the spelling there."
    return (f"Names here are looked up in {places}, in that order. Define yours in "
            f"{module_label(catalog.user[0])} (any class or function defined there is found) or fix the spelling.")
