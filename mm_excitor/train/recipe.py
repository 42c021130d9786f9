"""YAML recipes and dotted command-line overrides for any tree of dataclasses.

A recipe is a YAML mapping whose shape mirrors a dataclass (sections are nested dataclasses). Overrides are
`--train.blr 1e-3`, `--train.blr=1e-3` or `train.blr=1e-3`. Every key is checked against the dataclass tree, so a
typo is an error that lists the valid keys instead of a silently ignored setting; values are converted to the
field's annotated type (PyYAML reads `1e-3` as a string, and the command line gives only strings).
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

T = TypeVar("T")
_NONE_WORDS = {"none", "null", "~", ""}
_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}


class ConfigError(ValueError):
    """A recipe or override does not fit the config dataclasses."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build `cls` from its defaults, then the YAML file at `path`, then the command-line style `overrides`."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text())
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: a recipe must be a YAML mapping, got {type(loaded).__name__}")
        data = dict(loaded or {})
    for key, value in parse_overrides(overrides):
        set_dotted(cls, data, key, value)
    return from_dict(cls, data)


def parse_args(cls: type[T], argv: Sequence[str] | None = None, *, config_flag: str = "--config") -> T:
    """`[--config recipe.yaml] [overrides...]` from `argv` (default sys.argv[1:]) into a `cls`."""
    args = list(sys.argv[1:] if argv is None else argv)
    path = None
    rest: list[str] = []
    i = 0
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
    return load_config(cls, path, rest)


def parse_overrides(args: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs (dotted key, raw string) from `--a.b v`, `--a.b=v` and `a.b=v` arguments."""
    pairs = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            body = arg[2:]
            if "=" in body:
                key, value = body.split("=", 1)
                i += 1
            else:
                if i + 1 >= len(args):
                    raise ConfigError(f"override {arg} has no value (use {arg} VALUE or {arg}=VALUE)")
                key, value = body, args[i + 1]
                i += 2
        elif "=" in arg:
            key, value = arg.split("=", 1)
            i += 1
        else:
            raise ConfigError(f"unrecognised argument {arg!r}: overrides look like --section.key VALUE or section.key=VALUE")
        if not key:
            raise ConfigError(f"empty key in override {arg!r}")
        pairs.append((key, value))
    return pairs


def set_dotted(cls: type, data: dict[str, Any], key: str, value: Any) -> None:
    """Set `data[a][b]... = value` for key 'a.b...', checking every name against the dataclass tree."""
    parts = key.split(".")
    node_cls, node = cls, data
    for depth, name in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(node_cls)}
        where = ".".join(parts[:depth])
        if name not in fields:
            raise ConfigError(_unknown_key_message(".".join(parts[: depth + 1]), where, sorted(fields)))
        if depth == len(parts) - 1:
            node[name] = value
            return
        child_cls = _dataclass_arm(typing.get_type_hints(node_cls)[name])
        if child_cls is None:
            raise ConfigError(f"{'.'.join(parts[: depth + 1])} is a value, not a section: cannot set {key}")
        child = node.get(name)
        if not isinstance(child, dict):
            child = {} if child is None else dict(child) if isinstance(child, Mapping) else None
            if child is None:
                raise ConfigError(f"{'.'.join(parts[: depth + 1])} must be a mapping in the recipe")
            node[name] = child
        node_cls, node = child_cls, child


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, path: str = "") -> T:
    """Recursively build dataclass `cls` from plain data; unknown keys are errors that list the valid ones."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(_unknown_key_message(_join(path, unknown[0]), path, sorted(fields), others=unknown[1:]))
    hints = typing.get_type_hints(cls)
    data = {name: _over_section_default(fields[name], value) for name, value in data.items()}
    kwargs = {name: _coerce(value, hints[name], _join(path, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{path or cls.__name__}: {error}") from error


def _over_section_default(field: dataclasses.Field, value: Any) -> Any:
    """A partly given section starts from its field's default, not from its class's: `model.excitor.rank=8`
    must keep the `visual_prompt_mode` that ModelConfig's default ExcitorConfig sets."""
    if not isinstance(value, Mapping) or field.default_factory is dataclasses.MISSING:
        return value
    default = field.default_factory()
    return _deep_merge(to_dict(default), value) if dataclasses.is_dataclass(default) else value


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) for a dataclass tree, as YAML and JSON want it."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def valid_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key the tree accepts (for help texts)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        child = _dataclass_arm(hints[f.name])
        keys += valid_keys(child, _join(prefix, f.name)) if child else [_join(prefix, f.name)]
    return keys


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _unknown_key_message(key: str, where: str, valid: list[str], others: Sequence[str] = ()) -> str:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f" (did you mean {_join(where, close[0])!r}?)" if close else ""
    extra = f" (also unknown: {', '.join(_join(where, o) for o in others)})" if others else ""
    section = f"under {where!r}" if where else "at the top level"
    return f"unknown config key {key!r}{hint}{extra}; valid keys {section}: {', '.join(valid)}"


def _dataclass_arm(tp: Any) -> type | None:
    """The dataclass in `tp` (itself, or the non-None arm of an Optional), if any."""
    if dataclasses.is_dataclass(tp):
        return tp
    if _is_union(tp):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(arms) == 1 and dataclasses.is_dataclass(arms[0]):
            return arms[0]
    return None


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """`value` (from YAML or a command-line string) converted to annotated type `tp`, or a ConfigError."""
    if tp is Any:
        return value
    if _is_union(tp):
        arms = typing.get_args(tp)
        if type(None) in arms and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS)):
            return None
        errors = []
        for arm in (a for a in arms if a is not type(None)):
            try:
                return _coerce(value, arm, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"{path}: {value!r} fits none of {tp}: " + "; ".join(errors))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        return from_dict(tp, value, path=path)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: {value!r} is not one of {choices}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            text = value.strip()
            value = yaml.safe_load(text if text.startswith("[") else f"[{text}]")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}: {value!r}")
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        number = _number(value, path, "an integer")
        if not float(number).is_integer():
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return int(number)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(_number(value, path, "a number"))
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r} (quote it in YAML)")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{path}: cannot convert {value!r} to {tp}")


def _number(value: Any, path: str, what: str) -> int | float:
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                pass
    raise ConfigError(f"{path}: expected {what}, got {value!r}")
