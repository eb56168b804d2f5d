"""Calling a class or function with the args a config gives it: a wrong argument, or a value its constructor
refuses, becomes one message naming the config key and who set it (the file, or the command line's item)."""
from __future__ import annotations

import inspect
from collections.abc import Collection
from typing import Any, Callable

from utils.errors import ConfigError, blame, reason


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


def _check_booleans(factory: Any, kwargs: dict[str, Any]) -> None:
    """An argument annotated `bool` must get true or false: YAML reads `off`, `no` as text here (for `amp: off`),
    and a non-empty text would silently count as true."""
    params, _ = _parameters(factory)
    for name, value in kwargs.items():
        if name in params and params[name].annotation in (bool, "bool") and not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false; got {value!r}.")


def call_with_args(factory: Any, kwargs: dict[str, Any], key: str, source: str | None,
                   supplied: Collection[str] = ()) -> Any:
    """Call `factory(**kwargs)`, turning a wrong argument or a rejected value into a ConfigError that names `key`
    and who set it (see Source). `supplied` are the arguments the code gives (an optimizer's `params`, a loader's
    `seed`): they are not offered among those a config may set. With `source` None (an object that a component
    builds from its own args, such as DeviceDataLoader's source loader), the error stays a plain ValueError (or the
    constructor's TypeError), beginning with the argument's name where one is at fault, for the call that built
    that component to name its key."""
    name = getattr(factory, "__name__", str(factory))
    accepted = accepted_args(factory)
    unknown = sorted(set(kwargs) - set(accepted)) if accepted is not None else []
    try:
        try:
            if unknown:
                raise TypeError(f"unexpected keyword argument '{unknown[0]}'")
            inspect.signature(factory).bind(**kwargs)
        except TypeError as e:
            takes = ", ".join(a for a in accepted or [] if a not in supplied) or "no arguments"
            if source is None:
                raise ValueError(f"{unknown[0] + ': ' if unknown else ''}wrong args for type '{name}': {e}. It "
                                 f"accepts: {takes}.") from None
            where = blame(source, f"{key}.args.{unknown[0]}" if unknown else key)
            raise ConfigError(f"{where}: wrong args for {key} type '{name}': {e}. It accepts: {takes}.") from None
        except ValueError:
            pass  # a builtin without a signature: let the call itself tell
        _check_booleans(factory, kwargs)
        return factory(**kwargs)
    except (TypeError, ValueError) as e:
        if source is None:
            raise
        raise refused(e, factory, {k: v for k, v in kwargs.items() if k not in supplied}, key, source) from None


def arg_path(text: str, args: Collection[str]) -> str | None:
    """The path an error message begins with when it begins with one of `args` (`width`, `augment.degrees`,
    `transform[1].type`), else None."""
    token = text.split(" ", 1)[0].rstrip(":")
    return token if any(token == a or token.startswith((a + ".", a + "[")) for a in args) else None


def refused(e: Exception, factory: Any, kwargs: dict[str, Any], key: str, source: str) -> ConfigError:
    """A constructor's plain error as one message naming the config key: an error that begins with the name of one
    of its arguments (`ValueError("width must be >= 1")`, `"augment.degrees must be ..."`) names that argument's key
    and who set it; any other names the section."""
    text = reason(e)
    token = arg_path(text, kwargs)
    if token is not None:
        where = f"{key}.args.{token}"
        return ConfigError(f"{blame(source, where)}: '{where}'{text[len(token):]}.")
    name = getattr(factory, "__name__", str(factory))
    return ConfigError(f"{blame(source, key)}: {key} type '{name}' refused its arguments: {text}."
                       f"{_text_for_numbers(factory, kwargs, key)} Check {key}.args.")


def _text_for_numbers(factory: Callable[..., Any], kwargs: dict[str, Any], key: str) -> str:
    """A sentence naming each arg given as text whose default is a number (`<key>.args.lr is 'abc'`): the usual
    cause of a constructor's TypeError, whose own message names Python types rather than the key."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return ""
    texts = [f"{key}.args.{arg} is {value!r}: text where a number is expected" for arg, value in kwargs.items()
             if isinstance(value, str) and arg in params and type(params[arg].default) in (int, float)]
    return f" {'; '.join(texts)}." if texts else ""


