"""Read a YAML/JSON config, fill in defaults, apply command-line overrides, and build objects from it.

The config is the API of the template: every key is listed in `DEFAULTS` (and in the config reference,
docs/config.md). Objects are built by name with `Config.init_obj(key)`, which looks the name up only in the
modules that `utils/registry.py` lists for that section (your modules, the template's, torch's): a config can
never import arbitrary code. Top-level keys the template does not know are kept for your own code.
"""
from __future__ import annotations

import argparse
import copy
import difflib
import inspect
import json
import logging
import re
from collections.abc import Collection, Hashable
from pathlib import Path
from typing import Any, Callable

import yaml

from utils.errors import ConfigError, Source, blame, not_utf8, printable, reason, suggest
from utils.files import atomic_write
from utils.registry import lookup
from utils.run import folder_name

log = logging.getLogger(__name__)

REQUIRED = object()

DEFAULTS: dict[str, Any] = {
    "name": "experiment",
    "seed": 0,
    "device": "auto",
    "n_gpu": None,
    "arch": REQUIRED,
    "data_loader": REQUIRED,
    "optimizer": REQUIRED,
    "loss": REQUIRED,
    "metrics": [],
    "lr_scheduler": None,
    "trainer": {
        "type": "Trainer",
        "args": {},
        "epochs": 10,
        "save_dir": "saved/",
        "save_period": 1,
        "save_top_k": 3,
        "save_every_steps": 0,
        "save_every_minutes": 0,
        "verbosity": 1,
        "monitor": "off",
        "early_stop": 0,
        "tensorboard": False,
        "histograms": False,
        "hparams": True,
        "log_step": 10,
        "activation_stats": 0,
        "on_nan": "stop",
        "amp": "off",
        "accumulate_grad_batches": 1,
        "grad_clip_norm": None,
        "channels_last": False,
        "compile": False,
        "cudnn_benchmark": False,
        "deterministic": False,
        "matmul_precision": "highest",
        "dist_backend": None,
        "find_unused_parameters": False,
        "sync_batchnorm": False,
        "ema": None,
    },
}

# Keys of a `{type, args}` section besides those two.
_OBJECT_SECTIONS = {"arch": {"init"}, "data_loader": set(), "optimizer": {"param_groups", "no_decay"},
                    "lr_scheduler": {"interval", "warmup"}}


# Optional sections: null (off), or a mapping whose missing keys take these defaults (`trainer.ema: true` takes
# them all). Their values are checked in `_check_recipe_sections`.
OPTIONAL_SECTIONS: dict[str, dict[str, Any]] = {
    "trainer.ema": {"decay": 0.99998, "every_steps": 32, "warmup": 0},
    "lr_scheduler.warmup": {"epochs": 0, "steps": 0, "method": "linear", "decay": 0.01},
}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that make a run's config (-c, the short flags, key.path=value overrides); tune.py takes them too
    and passes them on to every trial. `--seed` is left to each script: tune.py's seeds the search."""
    parser.add_argument("-c", "--config", help="config file, e.g. configs/config.yaml")
    parser.add_argument("-d", "--device", help="auto | cpu | cuda | cuda:N | mps (default: the config's device)")
    parser.add_argument("--lr", type=float, help="sets optimizer.args.lr")
    parser.add_argument("--bs", "--batch-size", dest="bs", type=int, help="sets data_loader.args.batch_size")
    parser.add_argument("--epochs", type=int, help="sets trainer.epochs")
    parser.add_argument("--name", help="sets name (the experiment's folder under save_dir)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="set any config key, e.g. optimizer.args.lr=3e-4 trainer.epochs=5")


def unused_keys(config: dict[str, Any]) -> list[str]:
    """Top-level keys the template does not read: kept in the config for the user's own code."""
    return [k for k in config if k not in DEFAULTS]

# Short command-line flags and the keys they set.
SHORT_FLAGS = {
    "lr": "optimizer.args.lr",
    "bs": "data_loader.args.batch_size",
    "epochs": "trainer.epochs",
    "seed": "seed",
    "name": "name",
    "device": "device",
}


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


def _merge_defaults(user: dict[str, Any], defaults: dict[str, Any], where: str, source: str) -> dict[str, Any]:
    """`user` over `defaults`, section by section (an empty default mapping, such as `trainer.args`, takes any
    keys). A key unknown at the top level is kept for the user's own code unless it is a near miss of a known
    key (`trainr`); anywhere else it is an error."""
    for k in user:
        close = difflib.get_close_matches(str(k), list(defaults), n=1, cutoff=0.8)
        if k not in defaults and (where or close):
            raise ConfigError(f"{source}: unknown key '{where}{k}'.{suggest(str(k), list(defaults), where)} "
                              f"Known keys here: {', '.join(defaults)}.")
    merged = {}
    for key, default in defaults.items():
        if key not in user:
            if default is REQUIRED:
                raise ConfigError(f"{source}: the key '{where}{key}' is required. See configs/config.yaml for an example.")
            merged[key] = copy.deepcopy(default)
        elif isinstance(default, dict) and default and isinstance(user[key], dict):
            merged[key] = _merge_defaults(user[key], default, f"{where}{key}.", source)
        else:
            merged[key] = user[key]
    return {**merged, **{k: v for k, v in user.items() if k not in defaults}}


def _check_object_spec(spec: Any, key: str, source: str, extra: set[str] = frozenset()) -> None:
    if isinstance(spec, str):
        return
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{source}: '{key}' must be a mapping with 'type' and optional 'args', "
                          f"e.g. {key}: {{type: Name, args: {{}}}}; got {spec!r}.")
    unknown = set(spec) - {"type", "args"} - set(extra)
    if unknown:
        k = sorted(unknown)[0]
        raise ConfigError(f"{source}: unknown key '{key}.{k}'. A '{key}' section takes "
                          f"{', '.join(['type', 'args', *sorted(extra)])}.")
    if not isinstance(spec["type"], str):
        raise ConfigError(f"{source}: '{key}.type' must be a name such as Adam, got {spec['type']!r}.")
    if spec.get("args") is not None and not isinstance(spec["args"], dict):
        raise ConfigError(f"{source}: '{key}.args' must be a mapping of argument names to values, got {spec['args']!r}.")


def _normalise(config: dict[str, Any], source: str) -> dict[str, Any]:
    """Validate section shapes and classic-template spellings once the defaults are in."""
    for key, default in DEFAULTS.items():
        if default is REQUIRED and config[key] is None:
            raise ConfigError(f"{source}: '{key}' is required and may not be null; configs/config.yaml shows how "
                              "to set it.")
        if isinstance(default, dict) and not isinstance(config[key], dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping of settings ({', '.join(list(default)[:3])}, "
                              f"...), got {config[key]!r}. Leave it out to use the defaults.")
    config["name"] = folder_name(config["name"], f"{source}: 'name'", nested=True)
    seed = config["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ConfigError(f"{source}: 'seed' must be a whole number from 0 to 2**63 - 1, or null to draw one; "
                          f"got {seed!r}.")
    for key, extra in _OBJECT_SECTIONS.items():
        if config[key] is not None:
            _check_object_spec(config[key], key, source, extra)
            if isinstance(config[key], str):
                config[key] = {"type": config[key]}
            config[key].setdefault("args", {})
            config[key]["args"] = config[key]["args"] or {}
    config["arch"].setdefault("init", None)
    config["optimizer"].setdefault("param_groups", None)
    config["optimizer"].setdefault("no_decay", False)
    if config["lr_scheduler"] is not None:
        config["lr_scheduler"].setdefault("interval", "epoch")
        config["lr_scheduler"].setdefault("warmup", None)
        if config["lr_scheduler"]["interval"] not in ("epoch", "step"):
            raise ConfigError(f"{source}: 'lr_scheduler.interval' must be 'epoch' or 'step', "
                              f"got {config['lr_scheduler']['interval']!r}.")
    _check_recipe_sections(config, source)
    _check_object_spec(config["loss"], "loss", source)
    if not isinstance(config["metrics"], list):
        raise ConfigError(f"{source}: 'metrics' must be a list of names, e.g. [accuracy, top_k_acc].")
    for i, metric in enumerate(config["metrics"]):
        _check_object_spec(metric, f"metrics[{i}]", source)
    trainer = config["trainer"]
    if not isinstance(trainer["type"], str):
        raise ConfigError(f"{source}: 'trainer.type' must be the name of a Trainer class, e.g. Trainer or "
                          f"RegularizedTrainer; got {trainer['type']!r}.")
    trainer["args"] = trainer["args"] or {}
    if not isinstance(trainer["args"], dict):
        raise ConfigError(f"{source}: 'trainer.args' must be a mapping of the trainer class's arguments, e.g. "
                          f"{{l2: 1.0e-4}}; got {trainer['args']!r}.")
    choices = {"on_nan": ("stop", "skip_batch"), "amp": ("off", "bf16", "fp16"),
               "matmul_precision": ("highest", "high", "medium"), "verbosity": (0, 1, 2)}
    for key, allowed in choices.items():
        if trainer[key] not in allowed or isinstance(trainer[key], bool):
            raise ConfigError(f"{source}: 'trainer.{key}' must be one of {', '.join(map(str, allowed))}; got "
                              f"{trainer[key]!r}.")
    for key in ("epochs", "save_period", "save_every_steps", "early_stop", "log_step", "accumulate_grad_batches",
                "activation_stats"):
        value = trainer[key]
        minimum = 1 if key in ("epochs", "log_step", "accumulate_grad_batches") else 0
        if value is None and key == "early_stop":
            trainer[key] = 0
        elif isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{source}: 'trainer.{key}' must be a whole number >= {minimum}; got {value!r}.")
    for key in ("tensorboard", "histograms", "hparams", "channels_last", "cudnn_benchmark", "deterministic",
                "find_unused_parameters", "sync_batchnorm"):
        if not isinstance(trainer[key], bool):
            raise ConfigError(f"{source}: 'trainer.{key}' must be true or false; got {trainer[key]!r}"
                              f"{' (YAML reads off/on/no/yes as text here)' if isinstance(trainer[key], str) else ''}.")
    if not isinstance(trainer["compile"], (bool, dict)):
        raise ConfigError(f"{source}: 'trainer.compile' must be true, false or a mapping of torch.compile's "
                          f"arguments such as {{mode: max-autotune}}; got {trainer['compile']!r}.")
    minutes, clip = trainer["save_every_minutes"], trainer["grad_clip_norm"]
    if not _is_number(minutes) or not minutes >= 0:
        raise ConfigError(f"{source}: 'trainer.save_every_minutes' must be a number >= 0 (0: off); got {minutes!r}.")
    if clip is not None and (not _is_number(clip) or not clip > 0):
        raise ConfigError(f"{source}: 'trainer.grad_clip_norm' must be a number > 0, or null (no clipping); "
                          f"got {clip!r}.")
    if not isinstance(trainer["save_dir"], str) or not trainer["save_dir"].strip():
        raise ConfigError(f"{source}: 'trainer.save_dir' must be a folder path such as saved/; got "
                          f"{trainer['save_dir']!r}.")
    if not _is_number(trainer["save_top_k"], whole=True) or trainer["save_top_k"] < -1:
        raise ConfigError(f"{source}: 'trainer.save_top_k' must be -1 (keep all), 0 or a positive number; "
                          f"got {trainer['save_top_k']!r}.")
    monitor = trainer["monitor"]
    if monitor != "off" and (not isinstance(monitor, str) or len(monitor.split()) != 2
                             or monitor.split()[0] not in ("min", "max")):
        raise ConfigError(f"{source}: 'trainer.monitor' must be 'off' or '<min|max> <metric>', "
                          f"e.g. 'min val_loss' or 'max val_accuracy'; got {monitor!r}.")
    return config


def _optional_section(parent: dict[str, Any], key: str, source: str) -> dict[str, Any] | None:
    """Fill in the defaults of the optional section `key` (see OPTIONAL_SECTIONS); None when it is off."""
    name, defaults = key.rsplit(".", 1)[1], OPTIONAL_SECTIONS[key]
    value = parent.get(name)
    if value is None or value is False:
        parent[name] = None
        return None
    value = {} if value is True else value
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: '{key}' must be null or a mapping of {', '.join(defaults)}; got {value!r}.")
    for k in value:
        if k not in defaults:
            raise ConfigError(f"{source}: unknown key '{key}.{k}'.{suggest(str(k), list(defaults), key + '.')} "
                              f"Known keys here: {', '.join(defaults)}.")
    parent[name] = {**defaults, **value}
    return parent[name]


def _require(ok: bool, key: str, what: str, value: Any, source: str) -> None:
    if not ok:
        raise ConfigError(f"{source}: '{key}' must be {what}; got {value!r}.")


def _is_number(value: Any, whole: bool = False) -> bool:
    return not isinstance(value, bool) and isinstance(value, int if whole else (int, float))


def _check_recipe_sections(config: dict[str, Any], source: str) -> None:
    """trainer.ema, lr_scheduler.warmup and optimizer.no_decay (docs/recipes.md): defaults, ranges, combinations."""
    ema = _optional_section(config["trainer"], "trainer.ema", source)
    if ema is not None:
        decay, every, epochs = ema["decay"], ema["every_steps"], ema["warmup"]
        _require(_is_number(decay) and 0 <= decay < 1, "trainer.ema.decay", "a number in [0, 1)", decay, source)
        _require(_is_number(every, True) and every >= 1, "trainer.ema.every_steps", "a whole number >= 1", every,
                 source)
        _require(_is_number(epochs, True) and epochs >= 0, "trainer.ema.warmup", "a whole number of epochs >= 0",
                 epochs, source)
    scheduler = config["lr_scheduler"]
    warmup = _optional_section(scheduler, "lr_scheduler.warmup", source) if scheduler is not None else None
    if warmup is not None:
        for unit in ("epochs", "steps"):
            _require(_is_number(warmup[unit], True) and warmup[unit] >= 0, f"lr_scheduler.warmup.{unit}",
                     "a whole number >= 0", warmup[unit], source)
        _require(warmup["method"] in ("linear", "constant"), "lr_scheduler.warmup.method", "linear or constant",
                 warmup["method"], source)
        _require(_is_number(warmup["decay"]) and 0 < warmup["decay"] <= 1, "lr_scheduler.warmup.decay",
                 "a number in (0, 1]: the share of the learning rate to start from", warmup["decay"], source)
        unit = "epochs" if warmup["epochs"] else "steps"
        if bool(warmup["epochs"]) == bool(warmup["steps"]):
            raise ConfigError(f"{source}: 'lr_scheduler.warmup' takes a length in epochs or in steps (one of the "
                              f"two), e.g. warmup: {{epochs: 5}}; got {warmup!r}.")
        if (unit == "epochs") != (scheduler["interval"] == "epoch"):
            raise ConfigError(f"{source}: 'lr_scheduler.warmup.{unit}' does not fit 'lr_scheduler.interval: "
                              f"{scheduler['interval']}': the warmup and the scheduler after it step together, so "
                              "warm up in epochs with interval: epoch, or in steps with interval: step.")
    no_decay = config["optimizer"]["no_decay"]
    _require(isinstance(no_decay, bool) or no_decay is None
             or (isinstance(no_decay, list) and all(isinstance(item, str) for item in no_decay)),
             "optimizer.no_decay", "true, false, or a list of norm, bias and parameter names", no_decay, source)


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
            raise ConfigError(f"{source}: unknown key '{here}' in the override '{dotted}=...'."
                              f"{suggest(part, [str(k) for k in node], here[:len(here) - len(part)])} "
                              "Only keys under an 'args' mapping may be added; see docs/config.md (config reference).")
        if last:
            node[part] = value
        else:
            if node[part] is None and parts[depth + 1:depth + 2] == ["args"]:
                raise ConfigError(f"{source}: cannot set '{dotted}': '{here}' is not set in the config.")
            node = node[part]


def _resolved(config: dict[str, Any], source: str) -> dict[str, Any]:
    return _normalise(_merge_defaults(config, DEFAULTS, "", source), source)


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
        config = _resolved(raw, source)
        settings = [(SHORT_FLAGS[name], value, printable(f"--{name} {value}")) for name, value in short.items()
                    if value is not None]
        for item in overrides:
            key, sep, text = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"Cannot read the override '{printable(item)}': write it as key.path=value, "
                                  "e.g. optimizer.args.lr=3e-4 trainer.epochs=5.")
            settings.append((key.strip(), parse_value(text), printable(item)))
        set_by: dict[str, str] = {}
        flagged = {key: (value, item) for key, value, item in settings if item.startswith("--")}
        for key, value, item in settings:
            # A flag and a key=value for one key: argparse keeps no order between them, so neither "wins" clearly.
            if key in flagged and not item.startswith("--") and value != flagged[key][0]:
                raise ConfigError(f"command line: {flagged[key][1]} and {item} both set '{key}', to different values; "
                                  "give it once.")
            where = f"command line ({item})"
            _apply_override(config, key, value, where)
            config = _resolved(config, where)
            set_by[key] = item
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


def _parameters(factory: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    """The named parameters `factory` takes, following `**kwargs` up a class's constructors (a loader that passes
    them on to BaseDataLoader), and whether it takes any keyword at all in the end."""
    constructors = [vars(c)["__init__"] for c in factory.__mro__ if "__init__" in vars(c)] \
        if inspect.isclass(factory) else [factory]
    found: dict[str, inspect.Parameter] = {}
    for function in constructors:
        try:
            params = list(inspect.signature(function).parameters.values())
        except (TypeError, ValueError):
            return found, True
        for p in params:
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                found.setdefault(p.name, p)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return found, False
    return found, True


def accepted_args(factory: Any) -> list[str] | None:
    """The keyword arguments `factory` takes (see `_parameters`); None when it takes any keyword at all."""
    params, any_keyword = _parameters(factory)
    return None if any_keyword else list(params)


def _check_booleans(factory: Any, kwargs: dict[str, Any], key: str, source: str) -> None:
    """An argument annotated `bool` must get true or false: YAML reads `off`, `no` as text here (for `amp: off`),
    and a non-empty text would silently count as true."""
    params, _ = _parameters(factory)
    for name, value in kwargs.items():
        if name in params and params[name].annotation in (bool, "bool") and not isinstance(value, bool):
            raise ConfigError(f"{blame(source, f'{key}.args.{name}')}: '{key}.args.{name}' must be true or false; "
                              f"got {value!r}.")


def call_with_args(factory: Any, kwargs: dict[str, Any], key: str, source: str,
                   supplied: Collection[str] = ()) -> Any:
    """Call `factory(**kwargs)`, turning a wrong argument or a rejected value into a ConfigError that names `key`
    and who set it (see Source). `supplied` are the arguments the code gives (an optimizer's `params`, a loader's
    `seed`): they are not offered among those a config may set."""
    name = getattr(factory, "__name__", str(factory))
    accepted = accepted_args(factory)
    unknown = sorted(set(kwargs) - set(accepted)) if accepted is not None else []
    try:
        if unknown:
            raise TypeError(f"unexpected keyword argument '{unknown[0]}'")
        _check_booleans(factory, kwargs, key, source)
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        takes = ", ".join(a for a in accepted or [] if a not in supplied) or "no arguments"
        where = blame(source, f"{key}.args.{unknown[0]}" if unknown else key)
        raise ConfigError(f"{where}: wrong args for {key} type '{name}': {e}. It accepts: {takes}.") from None
    except ValueError:
        pass  # a builtin without a signature: let the call itself tell
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{blame(source, key)}: {key} type '{name}' refused its arguments: {reason(e)}."
                          f"{_text_for_numbers(factory, kwargs, key)} Check {key}.args.") from None


def _text_for_numbers(factory: Callable[..., Any], kwargs: dict[str, Any], key: str) -> str:
    """A sentence naming each arg given as text whose default is a number (`optimizer.args.lr is 'abc'`): the usual
    cause of a constructor's TypeError, whose own message names Python types rather than the key."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return ""
    texts = [f"{key}.args.{arg} is {value!r}: text where a number is expected" for arg, value in kwargs.items()
             if isinstance(value, str) and arg in params and type(params[arg].default) in (int, float)]
    return f" {'; '.join(texts)}." if texts else ""


def save_config(config: dict[str, Any], path: Path) -> None:
    """Write the resolved config beside the checkpoints, so a run can be repeated exactly (atomically: a full disk
    leaves the previous file, or none)."""
    try:
        atomic_write(path, yaml.safe_dump(config, sort_keys=False).encode())
    except OSError as e:
        raise ConfigError(f"Could not write '{path}': {e.strerror or e}. Free disk space (or fix the folder's "
                          "permissions) and start again.") from None
