"""The config's schema, declared once: every key the template reads, with its default, what it accepts and what it
does. It is the one place that knows the key paths: utils/config.py fills in the defaults and checks a config
against it with one generic message ("'trainer.epochs' must be a whole number >= 1; got 0"), the config reference in
docs/config.md is generated from it (`python -m utils.schema`), and `python train.py --help-config [section]`
prints it.

Kinds of key: a `value`; a `section` (a mapping of the keys below it, each with its default); an `object`
(`{type, args}` plus the keys below it, or a name alone for `{type: name}`), whose args the class's own signature
checks when it is built (utils/construct.py); an `optional` section (null or false: off; true: the keys below
with their defaults; or a mapping of them); a `spec` (a name or `{type, args}`, kept as written); `objects` (a
list of those). Top-level keys the schema does not know are kept for the user's own code; anywhere else they are
refused.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import textwrap
from dataclasses import dataclass
from typing import Any, Callable

from utils.errors import ConfigError, blame, suggest
from utils.run import folder_name


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED = _Required()


@dataclass(frozen=True)
class Rule:
    """What a value must be: `test(value)` holds for a good one, `what` says it in words."""

    what: str
    test: Callable[[Any], bool]


def is_number(value: Any, whole: bool = False) -> bool:
    """A number (a whole one with `whole`), not a bool."""
    return not isinstance(value, bool) and isinstance(value, int if whole else (int, float))


def whole(minimum: int, maximum: int | None = None, what: str = "", null: bool = False) -> Rule:
    """A whole number from `minimum` (to `maximum`), or null when `null`."""
    return Rule(what or f"a whole number >= {minimum}",
                lambda v: (null and v is None) or (is_number(v, True) and minimum <= v
                                                   and (maximum is None or v <= maximum)))


def number(test: Callable[[float], bool], what: str, null: bool = False) -> Rule:
    return Rule(what, lambda v: (null and v is None) or (is_number(v) and math.isfinite(v) and test(v)))


def choice(*values: Any) -> Rule:
    return Rule(f"one of {', '.join(map(str, values))}", lambda v: not isinstance(v, bool) and v in values)


SWITCH = Rule("true or false", lambda v: isinstance(v, bool))
MAPPING = Rule("a mapping", lambda v: isinstance(v, dict))
TEXT = Rule("text", lambda v: isinstance(v, str) and bool(v.strip()))


@dataclass(frozen=True)
class Key:
    path: str
    default: Any
    help: str
    rule: Rule | None = None  # None: anything (or, for an object, what its class takes)
    kind: str = "value"  # value | section | object | optional | spec | objects
    null: Any = None  # for a value: what null stands for, when it is not null itself (trainer.early_stop: 0)
    convert: Callable[[Any, str], Any] | None = None  # checks and returns the value itself, for its own message
    needs: str | None = None  # the file an optional section's feature lives in (a minimal project leaves it out)

    @property
    def parent(self) -> str:
        return self.path.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]


_NO_DECAY = Rule("true, false, or a list of norm, bias and parameter names",
                 lambda v: v is None or isinstance(v, bool) or (isinstance(v, list) and all(isinstance(i, str) for i in v)))
_MONITOR = Rule("'off' or '<min|max> <metric>', e.g. 'min val_loss' or 'max val_accuracy'",
                lambda v: v == "off" or (isinstance(v, str) and len(v.split()) == 2 and v.split()[0] in ("min", "max")))

SCHEMA: list[Key] = [
    Key("name", "experiment", "experiment name: the folder under `save_dir/models/` and `save_dir/log/`; a folder "
        "name (`2024` is read as text), or several joined by `/` (`mnist/baseline`), never `..` or an absolute path",
        convert=lambda v, where: folder_name(v, f"{where}: 'name'", nested=True)),
    Key("seed", 0, "seeds Python, NumPy and torch, the validation split and the data order; `null` draws one "
        "(recorded in the saved config)", whole(0, 2**63 - 1, "a whole number from 0 to 2**63 - 1, or null to draw one",
                                                 null=True)),
    Key("device", "auto", "`auto` (CUDA, then MPS, then CPU), `cpu`, `cuda`, `cuda:N`, `mps`; `--device` overrides"),
    Key("n_gpu", None, "classic-template key: `0` means CPU; more than 1 prints how to launch with torchrun"),
    Key("arch", REQUIRED, "`{type, args}`: the model class (yours in `model/model.py`, or the template's) and its "
        "constructor arguments", kind="object"),
    Key("arch.init", None, "`{type, args}` of a `torch.nn.init` function for conv and linear weights (fresh parts only)"),
    Key("data_loader", REQUIRED, "`{type, args}`: the loader class (yours in `data_loader/data_loaders.py`, or the "
        "template's) and its arguments (below); `seed` is passed by the code to loaders that take it", kind="object"),
    Key("optimizer", None, "`{type, args}`: a `torch.optim` optimizer and its arguments (`params` is supplied by "
        "the code: the trainable parameters); required unless `optimizers` is set", kind="object"),
    Key("optimizer.param_groups", None, "list of `{modules: [names] or backbone, <setting>: value}`: those modules' "
        "parameters get their own settings (e.g. `lr`); the rest use the optimizer's args"),
    Key("optimizer.no_decay", False, "`true`: no weight decay on normalisation layers' parameters and on biases; or a "
        "list of `norm`, `bias` and parameter names (`pos_embedding`, `head.weight`): each parameter group is split, "
        "those parameters going to a copy with `weight_decay: 0` ([recipes.md](recipes.md))", _NO_DECAY),
    Key("optimizers", None, "several optimizers, by name, for a training step that steps them itself: `{name: {type, "
        "args, modules: [submodule names], lr_scheduler: {type, args, interval}}}`, instead of `optimizer` "
        "([optimizers.md](optimizers.md))", convert=lambda v, where: named_optimizers(v, where)),
    Key("loss", REQUIRED, "a name in `model/loss.py`, the template's losses or `torch.nn`, or `{type, args}`",
        kind="spec"),
    Key("metrics", [], "names in `model/metric.py` or the template's metrics, or `{type, args}` entries",
        Rule("a list of names, e.g. [accuracy, top_k_acc]", lambda v: isinstance(v, list)), kind="objects"),
    Key("callbacks", [], "objects whose methods run at the run's events (epoch start, before the optimizer step, "
        "...; [callbacks.md](callbacks.md)): names of classes in `trainer/custom.py`, or `{type, args}` entries",
        Rule("a list of callback class names, e.g. [MyCallback]", lambda v: isinstance(v, list)), kind="objects"),
    Key("lr_scheduler", None, "`{type, args}` from `torch.optim.lr_scheduler` (`optimizer` is supplied); "
        "`ReduceLROnPlateau` is fed the monitored value", kind="object"),
    Key("lr_scheduler.interval", "epoch", "`epoch` steps the scheduler after each epoch, `step` after each optimizer "
        "step (e.g. `OneCycleLR`)", choice("epoch", "step")),
    Key("lr_scheduler.warmup", None, "a learning-rate warmup before the scheduler (SequentialLR): `{epochs: N}` with "
        "`interval: epoch`, or `{steps: N}` with `interval: step`, and the keys below; not before `ReduceLROnPlateau`",
        kind="optional"),
    Key("lr_scheduler.warmup.epochs", 0, "length of the warmup in epochs (one of `epochs` and `steps`)", whole(0)),
    Key("lr_scheduler.warmup.steps", 0, "length of the warmup in optimizer steps", whole(0)),
    Key("lr_scheduler.warmup.method", "linear", "`linear`: from `decay` times the learning rate up to it (LinearLR); "
        "`constant`: `decay` times it throughout the warmup (ConstantLR)", Rule("linear or constant",
                                                                                lambda v: v in ("linear", "constant"))),
    Key("lr_scheduler.warmup.decay", 0.01, "the share of the learning rate the warmup starts from, in (0, 1]",
        number(lambda v: 0 < v <= 1, "a number in (0, 1]: the share of the learning rate to start from")),
    Key("trainer", {}, "how the loop runs: the keys below", kind="section"),
    Key("trainer.type", "Trainer", "the Trainer class: `Trainer`, a subclass in `trainer/custom.py` "
        "(`RegularizedTrainer`, `DictBatchTrainer`, yours): [training_step.md](training_step.md)",
        Rule("the name of a Trainer class, e.g. Trainer or RegularizedTrainer", lambda v: isinstance(v, str))),
    Key("trainer.args", {}, "the constructor arguments of a Trainer subclass, e.g. `{l2: 1.0e-4}` for "
        "`RegularizedTrainer`", Rule("a mapping of the trainer class's arguments, e.g. {l2: 1.0e-4}",
                                     lambda v: isinstance(v, dict)), null={}),
    Key("trainer.epochs", 10, "number of epochs", whole(1)),
    Key("trainer.save_dir", "saved/", "root of the run folders", Rule("a folder path such as saved/", TEXT.test)),
    Key("trainer.save_period", 1, "write `checkpoint-epochN.pth` every N epochs (0: never)", whole(0)),
    Key("trainer.save_top_k", 3, "how many `checkpoint-epochN.pth` to keep, the best by the monitored value (newest "
        "when `monitor: off`); `-1` keeps all", whole(-1, what="-1 (keep all), 0 or a positive number")),
    Key("trainer.save_every_steps", 0, "also write `checkpoint-latest.pth` every N optimizer steps (0: off)", whole(0)),
    Key("trainer.save_every_minutes", 0, "also write `checkpoint-latest.pth` every N minutes (0: off)",
        number(lambda v: v >= 0, "a number >= 0 (0: off)")),
    Key("trainer.verbosity", 1, "0 warnings only, 1 info, 2 debug", choice(0, 1, 2)),
    Key("trainer.monitor", "off", "`min <value>` or `max <value>` of a logged value, e.g. `min val_loss`, "
        "`max val_accuracy`; an epoch that ties the best is saved as the best (the later weights)", _MONITOR),
    Key("trainer.early_stop", 0, "stop after this many epochs without strict improvement of the monitored value (a "
        "tie is none; 0: off)", whole(0), null=0),
    Key("trainer.tensorboard", False, "write TensorBoard events to the log folder (tags listed in "
        "[tensorboard.md](tensorboard.md))", SWITCH),
    Key("trainer.hparams", True, "with `tensorboard`, write the run's hyperparameters and final values for the "
        "HParams tab at the end (tune.py turns it off in its trials and writes the searched keys instead)", SWITCH),
    Key("trainer.histograms", False, "also write weight and gradient histograms every epoch (needs `tensorboard`)",
        SWITCH),
    Key("trainer.activation_stats", 0, "every N optimizer steps, record each module's activation and gradient "
        "statistics with hooks (0: off; needs `tensorboard`, not with `compile`)", whole(0)),
    Key("trainer.log_step", 10, "update the progress bar and step-level TensorBoard scalars every N optimizer steps "
        "(the only host syncs in the loop)", whole(1)),
    Key("trainer.on_nan", "stop", "`stop`: end training on a non-finite loss, saving nothing from it; `skip_batch`: "
        "skip such batches (checks every step)", choice("stop", "skip_batch")),
    Key("trainer.amp", "off", "mixed precision: `off`, `bf16`, or `fp16` (with a GradScaler, saved in checkpoints)",
        choice("off", "bf16", "fp16")),
    Key("trainer.accumulate_grad_batches", 1, "optimizer step every N batches (gradients averaged over them)",
        whole(1)),
    Key("trainer.grad_clip_norm", None, "clip the gradients' total norm to this value, a number > 0 (after unscaling "
        "under fp16)", number(lambda v: v > 0, "a number > 0, or null (no clipping)", null=True)),
    Key("trainer.channels_last", False, "channels-last memory format for model and inputs (faster convolutions on "
        "recent GPUs)", SWITCH),
    Key("trainer.compile", False, "`true` or `{mode: ..., ...}`: the arguments of `torch.compile`",
        Rule("true, false or a mapping of torch.compile's arguments such as {mode: max-autotune}",
             lambda v: isinstance(v, (bool, dict)))),
    Key("trainer.cudnn_benchmark", False, "let cuDNN pick the fastest convolution algorithms (input sizes should be "
        "fixed)", SWITCH),
    Key("trainer.deterministic", False, "`torch.use_deterministic_algorithms(True)`, cuBLAS workspace setting, no "
        "cuDNN benchmark", SWITCH),
    Key("trainer.matmul_precision", "highest", "`torch.set_float32_matmul_precision`: `highest`, `high` (TF32) or "
        "`medium`", choice("highest", "high", "medium")),
    Key("trainer.dist_backend", None, "DDP backend; `null` picks `nccl` on CUDA, `gloo` on CPU"),
    Key("trainer.find_unused_parameters", False, "DDP option for models whose forward pass skips some parameters",
        SWITCH),
    Key("trainer.sync_batchnorm", False, "under DDP on CUDA, turn BatchNorm layers into SyncBatchNorm (statistics "
        "over the global batch)", SWITCH),
    Key("trainer.ema", None, "keep an exponential moving average of the weights (parameters and buffers), validated "
        "each epoch as `val_<name>_ema`, saved in checkpoints and used by `test.py`, `export.py` and `predict.py` "
        "unless `--no-ema`; `true` takes the three defaults below ([recipes.md](recipes.md#ema-of-the-weights))",
        kind="optional", needs="trainer/ema.py"),
    Key("trainer.ema.decay", 0.99998, "the reference's `--model-ema-decay`: each update uses `1 - min(1, (1 - decay) "
        "* samples per step * every_steps / epochs)`", number(lambda v: 0 <= v < 1, "a number in [0, 1)")),
    Key("trainer.ema.every_steps", 32, "update the average every N optimizer steps", whole(1)),
    Key("trainer.ema.warmup", 0, "for the first N epochs the average copies the weights (set it to the learning-rate "
        "warmup's epochs, as the reference does)", whole(0, what="a whole number of epochs >= 0")),
]

KEYS = {key.path: key for key in SCHEMA}

# Config keys shown as TensorBoard hyperparameters (scalar values below these sections; lists and mappings as text).
HPARAMS = ("arch", "optimizer", "lr_scheduler", "loss", "seed", "data_loader.args.batch_size", "trainer.epochs",
           "trainer.amp", "trainer.accumulate_grad_batches", "trainer.grad_clip_norm")

# Short command-line flags and the keys they set.
SHORT_FLAGS = {
    "lr": "optimizer.args.lr",
    "bs": "data_loader.args.batch_size",
    "epochs": "trainer.epochs",
    "seed": "seed",
    "name": "name",
    "device": "device",
}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that make a run's config (-c, the short flags, key.path=value overrides, --help-config); tune.py
    takes them too and passes them on to every trial. `--seed` is left to each script: tune.py's seeds the search."""
    parser.add_argument("-c", "--config", help="config file, e.g. configs/config.yaml")
    parser.add_argument("-d", "--device", help="auto | cpu | cuda | cuda:N | mps (default: the config's device)")
    parser.add_argument("--lr", type=float, help=f"sets {SHORT_FLAGS['lr']}")
    parser.add_argument("--bs", "--batch-size", dest="bs", type=int, help=f"sets {SHORT_FLAGS['bs']}")
    parser.add_argument("--epochs", type=int, help=f"sets {SHORT_FLAGS['epochs']}")
    parser.add_argument("--name", help="sets name (the experiment's folder under save_dir)")
    parser.add_argument("--help-config", nargs="?", const="", metavar="SECTION",
                        help="print the config keys (of SECTION, e.g. trainer) with their defaults, and exit")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="set any config key, e.g. optimizer.args.lr=3e-4 trainer.epochs=5")


def children(parent: str) -> dict[str, Key]:
    """The keys one level below `parent` ('' for the top level), by name."""
    return {key.name: key for key in SCHEMA if key.parent == parent}


def unused_keys(config: dict[str, Any]) -> list[str]:
    """Top-level keys the template does not read: kept in the config for the user's own code."""
    return [k for k in config if k not in children("")]


def _check_warmup(config: dict[str, Any], source: str) -> None:
    """lr_scheduler.warmup: a length in epochs or in steps, in the unit the scheduler steps in."""
    scheduler = config["lr_scheduler"]
    warmup = scheduler["warmup"] if scheduler is not None else None
    if warmup is None:
        return
    where = blame(source, "lr_scheduler.warmup")
    if bool(warmup["epochs"]) == bool(warmup["steps"]):
        raise ConfigError(f"{where}: 'lr_scheduler.warmup' takes a length in epochs or in steps (one of the two), "
                          f"e.g. warmup: {{epochs: 5}}; got {warmup!r}.")
    unit = "epochs" if warmup["epochs"] else "steps"
    if (unit == "epochs") != (scheduler["interval"] == "epoch"):
        raise ConfigError(f"{where}: 'lr_scheduler.warmup.{unit}' does not fit 'lr_scheduler.interval: "
                          f"{scheduler['interval']}': the warmup and the scheduler after it step together, so warm up "
                          "in epochs with interval: epoch, or in steps with interval: step.")


def named_optimizers(value: Any, where: str) -> dict[str, Any] | None:
    """`optimizers`: null, or a mapping of names to `{type, args, modules, lr_scheduler}` (a scheduler: `{type,
    args, interval}`), with the defaults filled in."""
    if value is None:
        return None
    resolved = {}
    for name, spec in (value.items() if isinstance(value, dict) and value else [(None, value)]):
        key, spec = f"optimizers.{name}", {"type": spec} if isinstance(spec, str) else spec
        scheduler = spec.get("lr_scheduler") if isinstance(spec, dict) else None
        scheduler = {"type": scheduler} if isinstance(scheduler, str) else scheduler
        modules = spec.get("modules") if isinstance(spec, dict) else None
        if name is None or not isinstance(spec, dict) or not isinstance(spec.get("type"), str) \
                or set(spec) - {"type", "args", "modules", "lr_scheduler"}:
            raise ConfigError(f"{where}: '{key if name is not None else 'optimizers'}' must be a mapping of names to "
                              "{type, args, modules, lr_scheduler}, e.g. optimizers: {generator: {type: Adam, args: "
                              f"{{lr: 2.0e-4}}, modules: [generator]}}; got {spec!r}.")
        if not (modules is None or isinstance(modules, str)
                or (isinstance(modules, list) and all(isinstance(m, str) for m in modules))):
            raise ConfigError(f"{where}: '{key}.modules' must be a submodule name or a list of them; got {modules!r}.")
        if scheduler is not None and (not isinstance(scheduler, dict) or not isinstance(scheduler.get("type"), str)
                                      or scheduler.get("interval", "epoch") not in ("epoch", "step")
                                      or set(scheduler) - {"type", "args", "interval"}):
            raise ConfigError(f"{where}: '{key}.lr_scheduler' must be {{type, args, interval: epoch or step}}; "
                              f"got {scheduler!r}.")
        resolved[str(name)] = {"type": spec["type"], "args": spec.get("args") or {}, "modules": modules,
                               "lr_scheduler": None if scheduler is None else {"args": {}, "interval": "epoch",
                                                                               **scheduler}}
    return resolved


def _check_one_optimizer(config: dict[str, Any], source: str) -> None:
    """`optimizer` (one, stepped by the loop) or `optimizers` (several, stepped by the training step): one of them."""
    both = config["optimizer"] is not None
    if config["optimizers"] is not None and config["lr_scheduler"] is not None:
        raise ConfigError(f"{blame(source, 'lr_scheduler')}: with 'optimizers', each optimizer has its own "
                          "lr_scheduler (optimizers.<name>.lr_scheduler); set lr_scheduler: null.")
    if both == (config["optimizers"] is not None):
        raise ConfigError(f"{blame(source, 'optimizers' if both else 'optimizer')}: set {'only ' if both else ''}one of "
                          "'optimizer' (one optimizer, which the loop steps) and 'optimizers' (several by name, which "
                          "your training step steps); configs/config.yaml shows optimizer, docs/optimizers.md optimizers.")


def _check_finite_optimizer(config: dict[str, Any], source: str) -> None:
    """Refuse a learning rate (or another setting) of inf or nan, which optimizers accept: the run would only stop
    at its first non-finite loss, its folder written."""
    spec = config["optimizer"]
    if spec is None:
        settings = [(f"optimizers.{name}.args.{k}", v) for name, named in config["optimizers"].items()
                    for k, v in named["args"].items()]
    else:
        settings = [(f"optimizer.args.{k}", v) for k, v in spec["args"].items()] + \
            [(f"optimizer.param_groups[{i}].{k}", v) for i, group in enumerate(spec.get("param_groups") or [])
             if isinstance(group, dict) for k, v in group.items()]
    for key, value in settings:
        if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
            raise ConfigError(f"{blame(source, key)}: '{key}' is {value!r}; an optimizer's settings must be finite "
                              "numbers.")


# Rules across keys, run on a config with every key resolved.
CHECKS = [_check_warmup, _check_one_optimizer, _check_finite_optimizer]


# ---------------------------------------------------------------------- the schema shown: docs and --help-config
def _default_text(key: Key) -> str:
    if key.default is REQUIRED:
        return "required"
    value = key.default
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else \
        "{}" if value == {} else "[]" if value == [] else value
    return f"`{text}`"


def markdown_table() -> str:
    """The config reference of docs/config.md: one row per key."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    rows += [f"| `{key.path}` | {_default_text(key)} | {key.help} |" for key in SCHEMA]
    return "\n".join(rows) + "\n"


def describe(section: str | None = None) -> str:
    """The keys of `section` (all of them when None), with their defaults and meanings, as plain text."""
    keys = [key for key in SCHEMA if section is None or key.path == section or key.path.startswith(section + ".")]
    if not keys:
        raise ConfigError(f"--help-config: no config section '{section}'.{suggest(section, list(KEYS))} Sections: "
                          f"{', '.join(key.path for key in SCHEMA if '.' not in key.path)}.")
    lines = []
    for key in keys:
        lines.append(f"{key.path}: {_default_text(key).strip('`')}")
        text = re.sub(r"\[([^]]+)\]\([^)]+\)", r"\1", key.help).replace("`", "")  # markdown links as their text
        lines += textwrap.wrap(text, 100, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
