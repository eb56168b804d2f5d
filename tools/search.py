"""Search spaces for tune.py: which `key=...` items of its command line are searched, and the trials they make.

    key=v1,v2,...          listed values, read as YAML like any override: a grid axis, or a choice
    key=choice:v1,v2,...   the same, spelled out
    key=uniform:a:b        a float drawn uniformly from [a, b]
    key=log-uniform:a:b    a float whose logarithm is uniform in [log a, log b] (learning rates, weight decay)
    key=int:a:b            a whole number from a to b, both included

An item with a single value (`trainer.epochs=3`, `metrics=[accuracy]`) is not searched: it is a fixed override
that every trial gets.
"""
from __future__ import annotations

import difflib
import itertools
import math
import random
from dataclasses import dataclass
from typing import Any

from utils.config_file import parse_value
from utils.errors import ConfigError
from utils.schema import SHORT_FLAGS

RANGES = ("uniform", "log-uniform", "int")
KINDS = ("choice", *RANGES)
# Keys tune.py sets itself for every trial: searching them would move the trials' run folders.
RESERVED = ("name", "trainer.save_dir")


@dataclass(frozen=True)
class Dimension:
    """One searched key: a list of values (`choice`) or a range (`uniform`, `log-uniform`, `int`)."""

    kind: str
    values: tuple = ()
    low: float = 0.0
    high: float = 0.0

    def sample(self, rng: random.Random) -> Any:
        """A value drawn with `rng`; floats are rounded to 4 significant digits, so that tables and the trials'
        command lines stay readable."""
        if self.kind == "choice":
            return rng.choice(self.values)
        if self.kind == "int":
            return rng.randint(int(self.low), int(self.high))
        if self.kind == "log-uniform":
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return float(f"{value:.4g}")


def _range_error(item: str, kind: str, problem: str) -> ConfigError:
    example = {"uniform": "0.0:0.5", "log-uniform": "1e-4:1e-1", "int": "1:8"}[kind]
    return ConfigError(f"The search range '{item}' is malformed: {problem}. Write {kind}:low:high with low < high"
                       f"{' and low > 0' if kind == 'log-uniform' else ''}"
                       f"{', both whole numbers' if kind == 'int' else ''}, e.g. {item.partition('=')[0]}="
                       f"{kind}:{example}.")


def parse_dimension(item: str) -> Dimension | None:
    """The dimension of a `key=...` item, or None when it holds a single value (a fixed override)."""
    key, _, text = item.partition("=")
    kind, colon, rest = text.partition(":")
    if colon and kind in RANGES:
        bounds = [parse_value(b) for b in rest.split(":")]
        if len(bounds) != 2 or any(isinstance(b, bool) or not isinstance(b, (int, float)) for b in bounds):
            raise _range_error(item, kind, "it needs two numbers, low and high")
        low, high = bounds
        if kind == "int" and not all(isinstance(b, int) for b in bounds):
            raise _range_error(item, kind, "int bounds must be whole numbers")
        if not low < high or (kind == "log-uniform" and low <= 0):
            raise _range_error(item, kind, f"the bounds {low} and {high} do not make a range")
        return Dimension(kind, low=low, high=high)
    if colon and kind == "choice":
        values = parse_value(f"[{rest}]")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"The search choice '{item}' is malformed: list the values after 'choice:', separated "
                              f"by commas, e.g. {key}=choice:32,64,128.")
        return Dimension("choice", tuple(values))
    close = difflib.get_close_matches(kind, KINDS, n=1, cutoff=0.75) if colon else []
    if close:
        raise ConfigError(f"The search item '{item}' names an unknown kind of range '{kind}'. Did you mean "
                          f"'{close[0]}'? Ranges are {', '.join(k + ':' for k in KINDS)}, e.g. "
                          f"{key}={close[0]}:{'32,64' if close[0] == 'choice' else '1e-4:1e-1'}.")
    values = parse_value(f"[{text}]")
    if isinstance(values, list) and len(values) > 1:
        return Dimension("choice", tuple(values))
    return None


def split_items(items: list[str], mode: str) -> tuple[dict[str, Dimension], list[str]]:
    """The searched dimensions (by key, in command-line order) and the fixed `key=value` overrides."""
    space: dict[str, Dimension] = {}
    fixed: list[str] = []
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"Cannot read '{item}': write search items and overrides as key.path=value, e.g. "
                              f"{SHORT_FLAGS['lr']}=1e-3,1e-2 or trainer.epochs=5.")
        dimension = parse_dimension(item)
        if dimension is None:
            fixed.append(item)
            continue
        if key in RESERVED:
            raise ConfigError(f"'{key}' cannot be searched: tune.py sets it for every trial (the trials' run "
                              "folders go under the search folder). Search other keys; set trainer.save_dir once, "
                              "as a fixed override.")
        if key in space:
            raise ConfigError(f"'{key}' is searched twice ('{item}'); give each key once.")
        if mode == "grid" and dimension.kind != "choice":
            raise ConfigError(f"'{item}' is a range, which --grid cannot enumerate. List the values "
                              f"({key}=1e-4,1e-3,1e-2), or draw from the range with --random N or --optuna N.")
        space[key] = dimension
    return space, fixed


def check_key(config: dict[str, Any], key: str, source: str) -> None:
    """Refuse a searched key the resolved config does not hold (a typo would otherwise fail in every trial, or
    be ignored)."""
    node: Any = config
    for depth, part in enumerate(key.split(".")):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            where = ".".join(key.split(".")[:depth]) or "the top level"
            known = f" Keys at {where}: {', '.join(map(str, node))}." if isinstance(node, dict) else ""
            raise ConfigError(f"The searched key '{key}' is not in {source} (after defaults and overrides): "
                              f"'{part}' is missing.{known} Fix the spelling, or to search an argument the "
                              f"config leaves out, set it there first (or pass it as a fixed {key}=value).")


def grid_trials(space: dict[str, Dimension]) -> list[dict[str, Any]]:
    """Every combination of the listed values; the last key varies fastest."""
    return [dict(zip(space, combo)) for combo in itertools.product(*(d.values for d in space.values()))]


def random_trials(space: dict[str, Dimension], n: int, seed: int) -> list[dict[str, Any]]:
    """`n` draws from the space: the same seed gives the same list, and a larger `n` extends it."""
    rng = random.Random(seed)
    return [{key: dimension.sample(rng) for key, dimension in space.items()} for _ in range(n)]
