"""Config files: YAML (or the classic template's JSON) read into a dict, with line and column in every syntax error,
and the resolved config written back beside a run's checkpoints."""
from __future__ import annotations

import json
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from utils.errors import ConfigError, not_utf8
from utils.files import atomic_write


class _DuplicateKey(yaml.YAMLError):
    """A key written twice in one mapping: YAML and JSON readers keep the last silently."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float (YAML 1.1 reads it as a string) and `off`/`on`/`yes`/`no` as
    strings (YAML 1.1 reads them as booleans), and dates as strings, so `amp: off`, `lr: 1e-3` and
    `name: 2024-06-01` mean what they say; and refuses a key written twice in one mapping (a second `trainer:`
    block would otherwise replace the first, `monitor` and all)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden key by key
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            if not isinstance(key, Hashable):  # a complex key: the constructor reports it
                continue
            if key in lines:
                where = f"lines {lines[key]} and {line}" if lines[key] != line else f"line {line}"
                raise _DuplicateKey(f"the key '{key}' is written twice in one mapping, on {where}")
            lines[key] = line
        return super().construct_mapping(node, deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))

_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """Parse one command-line value the way the config file would (`3e-4` -> float, `[1, 2]` -> list)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a key written twice in it."""
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise _DuplicateKey(f"the key '{key}' is written twice in one object")
    return dict(pairs)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file into a dict; syntax errors name the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file '{path}' not found. Pass an existing file with -c, e.g. -c configs/config.yaml.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{not_utf8(path, raw, e)}. A config is a YAML or JSON text file: check that -c names your "
                          "config and not another file, and save it with the UTF-8 encoding.") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text, object_pairs_hook=_unique_keys)
        else:
            data = yaml.load(text, Loader=_Loader)
    except _DuplicateKey as e:
        raise ConfigError(f"{path}: {e}; the second would silently replace the first. Keep one and move the "
                          "settings of the other into it.") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}, line {e.lineno}, column {e.colno}: invalid JSON ({e.msg}). "
                          "Fix the syntax there (a missing comma or quote is the usual cause).") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}, {where}: invalid YAML ({problem}). Fix the syntax there: indent with spaces, "
                          "and quote values that contain ': ' or start with a special character.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys (name, arch, data_loader, ...), not {type(data).__name__}.")
    return data


def save_config(config: dict[str, Any], path: Path) -> None:
    """Write the resolved config beside the checkpoints, so a run can be repeated exactly (atomically: a full disk
    leaves the previous file, or none)."""
    try:
        atomic_write(path, yaml.safe_dump(config, sort_keys=False).encode())
    except OSError as e:
        raise ConfigError(f"Could not write '{path}': {e.strerror or e}. Free disk space (or fix the folder's "
                          "permissions) and start again.") from None
