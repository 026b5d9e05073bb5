"""Named variants chosen by a config key, and the error a bad choice raises.

A `Registry` maps the value of one config key (`method.name`, `engine.name`, `loss.agg`,
...) to the record that carries everything its variant needs. Each registry lives in the
module that defines its variants and is filled there, so adding a variant touches that
module (plus its YAML file) only. This module sits at the bottom of the import graph with
`config` and `records`: the schema (`config`) cannot import the registries, which live
above it, so a name is validated where it is looked up (`Registry.get`), with an error
that names the config key and lists the registered names; `replaygrpo.variants.resolve`
looks up every registry a config selects, once, before anything is loaded.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is out of range, inconsistent or not registered; the message names the key."""


class Registry(Generic[T]):
    """name -> entry for the config key `key`; `get` raises ConfigError naming the key."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.key}: {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"config key `{self.key}` has the bad value {name!r}; "
                              f"valid: {self.names()}.") from None

    def remove(self, name: str) -> None:
        """Forget `name` (tests that register a throwaway variant clean up with it)."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
