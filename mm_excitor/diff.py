"""Which fields differ between two nested records (configs, model identities, cache identities), said the same
way everywhere: `key: checkpoint 0.009, this run 0.001`."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MISSING = "<absent>"


@dataclass(frozen=True)
class Difference:
    key: str
    """Dotted path of the field, e.g. `train.blr` or `language_model.weights_fingerprint`."""
    old: Any
    new: Any

    def describe(self, old_name: str, new_name: str) -> str:
        return f"{self.key}: {old_name} {self.old!r}, {new_name} {self.new!r}"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; tuples become lists so that a record and its JSON copy compare equal."""
    if isinstance(value, Mapping):
        if not value and prefix:
            return {prefix[:-1]: {}}
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: list(value) if isinstance(value, tuple) else value}


def differences(
    old: Mapping[str, Any], new: Mapping[str, Any], *, ignore: Callable[[Difference], bool] | None = None
) -> list[Difference]:
    """Every leaf that differs between two nested mappings (a leaf only one side has differs from `MISSING`), in
    key order; `ignore(d)` drops the ones a caller knows not to matter."""
    a, b = flatten(old), flatten(new)
    found = [Difference(key, a.get(key, MISSING), b.get(key, MISSING))
             for key in sorted(set(a) | set(b)) if a.get(key, MISSING) != b.get(key, MISSING)]
    return [d for d in found if ignore is None or not ignore(d)]


def describe_all(found: list[Difference], old_name: str, new_name: str, indent: str = "\n  ") -> str:
    return indent + indent.join(d.describe(old_name, new_name) for d in found)
