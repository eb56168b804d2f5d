"""The resolved config of a run: a config file (utils/config_file.py) or a checkpoint's config, with the defaults and
checks of the schema (utils/schema.py) and the command line's overrides, remembering who set each key for error
messages. Objects are built by name with `Config.init_obj(key)`, which looks the name up only in the modules that
`utils/registry.py` lists for that section (your modules, the template's, torch's): a config can never import
arbitrary code. Top-level keys the template does not know are kept for your own code.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

from utils.config_file import parse_value, read_config_file
from utils.construct import call_with_args
from utils.errors import CheckpointError, ConfigError, Source, blame, printable, suggest
from utils.registry import REPO, lookup
from utils.schema import CHECKS, REQUIRED, SHORT_FLAGS, SWITCH, Key, children


def _apply_override(config: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node: Any = config
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = ".".join(parts[: depth + 1])
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"{source}: cannot set '{dotted}': '{'.'.join(parts[:depth])}' is not a mapping.")
        elif part not in node and not (last and parts[depth - 1:depth] == ["args"]):
            raise ConfigError(f"{source}: unknown key '{printable(here)}' in the override '{printable(dotted)}=...'."
                              f"{suggest(part, [str(k) for k in node], here[:len(here) - len(part)])} "
                              "Only keys under an 'args' mapping may be added; see docs/config.md (config reference).")
        if last:
            node[part] = value
        else:
            if node[part] is None and parts[depth + 1:depth + 2] == ["args"]:
                raise ConfigError(f"{source}: cannot set '{dotted}': '{here}' is not set in the config.")
            node = node[part]


def resolve(user: dict[str, Any], source: str | Source) -> dict[str, Any]:
    """`user` (a config as read) with every default filled in, checked against the schema key by key; the first
    problem is a ConfigError naming the key and who set it (`source`: the file, or the command line's item)."""
    return _mapping(user, "", source)


def check_across(config: dict[str, Any], source: Source) -> None:
    """The rules that tie keys together, once every override is in (one override may need the next, as
    `optimizer=null optimizers={...}` does)."""
    for check in CHECKS:
        check(config, source)


def _path(parent: str, name: Any) -> str:
    return f"{parent}.{name}" if parent else str(name)


def _mapping(user: dict[str, Any], parent: str, source: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keys below `parent` resolved one by one; `extra` are keys kept as they are (an object's type and args)."""
    known = children(parent)
    for name in user:
        if name in known or name in extra:
            continue
        close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.8)
        if parent or close:
            where = _path(parent, name)
            keys = ", ".join([*extra, *known])
            raise ConfigError(f"{blame(source, where)}: unknown key '{printable(where)}'."
                              f"{suggest(str(name), [*extra, *known], parent + '.' if parent else '')} "
                              f"Known keys here: {keys}.")
    resolved = {name: user[name] for name in extra if name in user}
    for name, key in known.items():
        resolved[name] = _value(key, user.get(name, _MISSING), source)
    return {**resolved, **{k: v for k, v in user.items() if k not in resolved}}


_MISSING = object()  # a key the config leaves out


def _value(key: Key, value: Any, source: str) -> Any:
    """One key's value, its default when missing, checked."""
    where = blame(source, key.path)
    if value is _MISSING:
        if key.default is REQUIRED:
            raise ConfigError(f"{where}: the key '{key.path}' is required. See configs/config.yaml for an example.")
        value = copy.deepcopy(key.default)
    if key.kind == "section":
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key.path}' must be a mapping of settings "
                              f"({', '.join(list(children(key.path))[:3])}, ...), got {value!r}. Leave it out to use "
                              "the defaults.")
        return _mapping(value, key.path, source)
    if key.kind == "optional":
        if value is None or value is False:
            return None
        if key.needs and not (REPO / key.needs).is_file():
            raise ConfigError(f"{where}: '{key.path}' needs {key.needs}, which this project was made without "
                              "(new_project.py --minimal). Copy that file from the template, or leave the key out.")
        value = {} if value is True else value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key.path}' must be null or a mapping of "
                              f"{', '.join(children(key.path))}; got {value!r}.")
        return _mapping(value, key.path, source)
    if key.kind == "object":
        return _object(key, value, source)
    if key.kind == "spec":
        _object(key, value, source)
        return value
    if key.kind == "objects":
        _check(key, value, where)
        for i, item in enumerate(value):
            _object(Key(f"{key.path}[{i}]", REQUIRED, "", kind="object"), item, source)
        return value
    if value is None and key.null is not None:
        return copy.deepcopy(key.null)
    if key.convert is not None:
        return key.convert(value, where)
    _check(key, value, where)
    return value


def _check(key: Key, value: Any, where: str) -> None:
    if key.rule is not None and not key.rule.test(value):
        hint = " (YAML reads off/on/no/yes as text here)" if key.rule is SWITCH and isinstance(value, str) else ""
        raise ConfigError(f"{where}: '{key.path}' must be {key.rule.what}; got {value!r}{hint}.")


def _object(key: Key, value: Any, source: str) -> dict[str, Any] | None:
    """`{type, args, ...}` (a name alone is `{type: name}`), with the keys the schema declares below it."""
    where = blame(source, key.path)
    if value is None:
        if key.default is REQUIRED:
            raise ConfigError(f"{where}: '{key.path}' is required and may not be null; configs/config.yaml shows how "
                              "to set it.")
        return None
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, dict) or "type" not in value:
        raise ConfigError(f"{where}: '{key.path}' must be a mapping with 'type' and optional 'args', "
                          f"e.g. {key.path}: {{type: Name, args: {{}}}}; got {value!r}.")
    if not isinstance(value["type"], str):
        raise ConfigError(f"{blame(source, key.path + '.type')}: '{key.path}.type' must be a name such as Adam, got "
                          f"{value['type']!r}.")
    if value.get("args") is not None and not isinstance(value["args"], dict):
        raise ConfigError(f"{blame(source, key.path + '.args')}: '{key.path}.args' must be a mapping of argument "
                          f"names to values, got {value['args']!r}.")
    resolved = _mapping(value, key.path, source, extra=("type", "args"))
    resolved["args"] = resolved.get("args") or {}
    return resolved


class Config:
    """The resolved config (a plain dict) plus where it came from, for error messages: `source` names the file
    and knows the keys the command line set (`config.source.of(key)`, see utils/errors.py Source)."""

    def __init__(self, data: dict[str, Any], source: str = "config"):
        self.data = data
        self.source = source if isinstance(source, Source) else Source(source)

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] = (), base: dict[str, Any] | None = None,
             **short: Any) -> Config:
        """Read `path` (or start from `base`, e.g. a checkpoint's config), then apply `key=value` overrides
        and short flags such as lr=..., bs=...; validate everything before any file is written. The file is checked
        first, then each override in turn, so that an error names what caused it: the file, or the command line's
        `key=value`."""
        source = str(path) if path is not None else "the checkpoint's config"
        raw = read_config_file(path) if path is not None else copy.deepcopy(base)
        config = resolve(raw, source)
        settings = []
        for item in overrides:
            key, sep, text = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"Cannot read the override '{printable(item)}': write it as key.path=value, "
                                  f"e.g. {SHORT_FLAGS['lr']}=3e-4 trainer.epochs=5.")
            settings.append((key.strip(), parse_value(text), printable(item)))
        # The short flags last, so that a key=value that replaces a whole section (data_loader={...}) keeps them.
        settings += [(SHORT_FLAGS[name], value, printable(f"--{name} {value}")) for name, value in short.items()
                     if value is not None]
        set_by: dict[str, str] = {}
        flagged = {key: (value, item) for key, value, item in settings if item.startswith("--")}
        for key, value, item in settings:
            # A flag and a key=value for one key: argparse keeps no order between them, so neither "wins" clearly.
            if key in flagged and not item.startswith("--") and value != flagged[key][0]:
                raise ConfigError(f"command line: {flagged[key][1]} and {item} both set '{key}', to different values; "
                                  "give it once.")
            where = f"command line ({item})"
            _apply_override(config, key, value, where)
            config = resolve(config, where)
            set_by[key] = item
        check_across(config, Source(source, set_by))
        return cls(config, Source(source, set_by))

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def init_obj(self, key: str, section: str | None = None, spec: Any = None, **kwargs: Any) -> Any:
        """Build `type(**args)` for the section `key` ({type, args}), the type looked up in the catalog of
        `section` (default: `key`; see utils/registry.py).

        `kwargs` are supplied by the code (e.g. the optimizer's `params`) and may not also appear in `args`.
        """
        spec = self.data[key] if spec is None else spec
        if isinstance(spec, str):
            spec = {"type": spec}
        factory = lookup(spec["type"], section or key, key, self.source)
        args = dict(spec.get("args") or {})
        clash = set(args) & set(kwargs)
        if clash:
            culprit = f"{key}.args.{sorted(clash)[0]}"
            raise ConfigError(f"{self.source.of(culprit)}: '{culprit}' is set by the code and cannot be given in the "
                              "config; remove it.")
        return call_with_args(factory, {**args, **kwargs}, key, self.source, supplied=kwargs)


def check_test_split(saved: dict[str, Any], config: dict[str, Any], source: str) -> None:
    """Refuse another `test_split` (or, with one, another seed) than the checkpoint's, on the same data: the test
    images would then include images the model was trained on, or the training would take in its test images."""
    def split(cfg: dict[str, Any]) -> tuple[Any, Any]:
        share = ((cfg.get("data_loader") or {}).get("args") or {}).get("test_split") or 0
        return share, cfg.get("seed") if share else None

    before, now = split(saved), split(config)
    if before != now:
        raise CheckpointError(f"{source} sets data_loader.args.test_split and seed to {now[0]!r} and {now[1]!r}, but "
                              f"the checkpoint was trained with {before[0]!r} and {before[1]!r}: its test images "
                              "would include images it was trained on (or training would take in its test images). "
                              "Keep the training run's test_split and seed.")
