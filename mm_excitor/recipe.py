"""YAML recipes and dotted command-line overrides for a tree of config dataclasses, through OmegaConf structured
configs (the mechanism LAVIS and Hydra users know).

The dataclass tree is the schema: `OmegaConf.structured(cls)` in struct mode, merged with the recipe and then the
overrides, then turned back into the dataclasses (`OmegaConf.to_object`, which runs their `__post_init__`
validation). OmegaConf converts values to the annotated types (`1e-3` from YAML or the command line becomes a
float). Every failure is a ConfigError with one readable line: an unknown key lists the valid keys of its section
and the closest match, a bad value names its dotted key.

Overrides: `train.blr=1e-3`, `--train.blr=1e-3` or `--train.blr 1e-3`; `none`/`null`/`~` mean None.
"""
from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

T = TypeVar("T")
_NONE_WORDS = {"none", "null", "~"}


def check_positive_ints(settings: Any, section: str, *names: str) -> None:
    """The one check that counts in a config dataclass (`section` names it in the error) are positive integers."""
    for name in names:
        value = getattr(settings, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{section}.{name} must be a positive integer, got {value!r}")


class ConfigError(ValueError):
    """A recipe or override does not fit the config dataclasses."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build `cls` from its defaults, then the YAML file at `path`, then the command-line style `overrides`."""
    layers = [OmegaConf.structured(cls)]
    if path is not None:
        layers.append(_read_recipe(Path(path)))
    return _build(cls, [*layers, *_override_layer(cls, overrides)], where=str(path) if path is not None else "overrides")


def from_dict(cls: type[T], values: Mapping[str, Any], overrides: Sequence[str] = ()) -> T:
    """`cls` from plain data (a stored run config), then overrides: the same checks as a recipe."""
    layers = [OmegaConf.structured(cls), OmegaConf.create(dict(values)), *_override_layer(cls, overrides)]
    return _build(cls, layers, where="stored config")


def parse_args(cls: type[T], argv: Sequence[str] | None = None, *, config_flag: str = "--config") -> T:
    """`[--config recipe.yaml] [overrides...]` from `argv` (default sys.argv[1:]) into a `cls`."""
    path, rest = split_config_flag(list(sys.argv[1:] if argv is None else argv), config_flag)
    return load_config(cls, path, rest)


def split_config_flag(args: list[str], config_flag: str = "--config") -> tuple[str | None, list[str]]:
    """(the recipe path, the other arguments)."""
    path, rest, i = None, [], 0
    while i < len(args):
        if args[i] == config_flag:
            if i + 1 >= len(args):
                raise ConfigError(f"{config_flag} needs a path")
            path, i = args[i + 1], i + 2
        elif args[i].startswith(config_flag + "="):
            path, i = args[i].split("=", 1)[1], i + 1
        else:
            rest.append(args[i])
            i += 1
    return path, rest


def parse_overrides(args: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs (dotted key, raw string) from `--a.b v`, `--a.b=v` and `a.b=v` arguments."""
    pairs, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" not in arg:
            if i + 1 >= len(args):
                raise ConfigError(f"override {arg} has no value (use {arg} VALUE or {arg}=VALUE)")
            pairs.append((arg[2:], args[i + 1]))
            i += 2
            continue
        if "=" not in arg:
            raise ConfigError(f"unrecognised argument {arg!r}: overrides look like key.sub=value")
        key, value = arg.removeprefix("--").split("=", 1)
        pairs.append((key, value))
        i += 1
    return pairs


def to_dict(obj: Any) -> Any:
    """A config tree as plain data (dicts, lists, scalars), for JSON and YAML."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def valid_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key the tree accepts (for help texts)."""
    keys = []
    for name, child in _fields(cls).items():
        dotted = f"{prefix}.{name}" if prefix else name
        keys += valid_keys(child, dotted) if child is not None else [dotted]
    return keys


# --- internals ----------------------------------------------------------------------------------------------------

def _read_recipe(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"no recipe at {path}")
    try:
        loaded = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException) as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not OmegaConf.is_dict(loaded):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping")
    return loaded


def _override_layer(cls: type, overrides: Sequence[str]) -> list[Any]:
    """Overrides as one config layer. A string field takes the text as it is (a prompt may hold ':' or '#'); any
    other value is read as YAML (numbers, lists, booleans) and converted to the field's type by OmegaConf."""
    layer: dict[str, Any] = {}
    for key, text in parse_overrides(overrides):
        *path, leaf = key.split(".")
        node = layer
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {'.'.join(path)} is set to a value and has no field {leaf!r}")
        if text.strip().lower() in _NONE_WORDS:
            node[leaf] = None
        elif _leaf_type(cls, key) is str:
            node[leaf] = text
        else:
            try:
                node[leaf] = yaml.safe_load(text)
            except yaml.YAMLError:
                node[leaf] = text
    return [OmegaConf.create(layer)] if layer else []


def _leaf_type(cls: type, key: str) -> Any:
    """The annotated type of a dotted field (its non-None arm), or None for an unknown key."""
    schema: Any = cls
    for part in key.split("."):
        if not dataclasses.is_dataclass(schema):
            return None
        hints = typing.get_type_hints(schema)
        if part not in hints:
            return None
        schema = hints[part]
        if typing.get_origin(schema) in (typing.Union, types.UnionType):  # X | None: X (list[str] stays a list)
            arms = [a for a in typing.get_args(schema) if a is not type(None)]
            schema = arms[0] if len(arms) == 1 else schema
    return schema


def _build(cls: type[T], layers: list[Any], where: str) -> T:
    try:
        return OmegaConf.to_object(OmegaConf.merge(*layers))
    except ConfigKeyError as error:
        raise ConfigError(_unknown_key_message(cls, error.full_key or str(error.key))) from None
    except OmegaConfBaseException as error:
        cause = error.__cause__ if isinstance(error.__cause__, ValueError) else None
        message = str(cause) if cause is not None else str(error).splitlines()[0]
        key = f"{error.full_key}: " if getattr(error, "full_key", None) and cause is None else ""
        raise ConfigError(f"{where}: {key}{message}") from None
    except ValueError as error:  # a dataclass's own validation
        raise ConfigError(f"{where}: {error}") from None


def _unknown_key_message(cls: type, key: str) -> str:
    *section, leaf = key.split(".")
    schema: type | None = cls
    for part in section:
        schema = _fields(schema).get(part) if schema is not None else None
    valid = list(_fields(schema)) if schema is not None else []
    where = ".".join(section)
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f" (did you mean {'.'.join([*section, close[0]])!r}?)" if close else ""
    place = f"under {where!r}" if where else "at the top level"
    return f"unknown config key {key!r}{hint}; valid keys {place}: {', '.join(valid)}"


def _fields(cls: type) -> dict[str, type | None]:
    """Field name -> its dataclass type (None for a leaf)."""
    hints = typing.get_type_hints(cls)
    return {f.name: _dataclass_arm(hints[f.name]) for f in dataclasses.fields(cls)}


def _dataclass_arm(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    arms = [a for a in typing.get_args(tp) if a is not type(None)]
    return arms[0] if len(arms) == 1 and dataclasses.is_dataclass(arms[0]) else None
