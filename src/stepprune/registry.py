"""Strategies selected by spec strings such as ``attention:layers=first-half,agg=mean``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SpecError(ValueError):
    """A strategy spec string names an unknown strategy or a bad option."""


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"name:k1=v1,k2=v2"`` -> ``("name", {"k1": "v1", "k2": "v2"})``."""
    name, _, options_text = spec.strip().partition(":")
    options: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in options_text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"{spec!r}: option {item!r} is not key=value")
        if key.strip() in options:
            raise SpecError(f"{spec!r}: option {key.strip()!r} is given twice")
        options[key.strip()] = value.strip()
    if not name:
        raise SpecError(f"{spec!r}: empty strategy name")
    return name, options


class Registry(Generic[T]):
    """Named factories of one kind of strategy (scorers, pruning policies)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            self._factories[name] = factory
            return factory

        return decorate

    @property
    def names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name`` (for strategies built with runtime arguments)."""
        if name not in self._factories:
            raise SpecError(f"unknown {self.kind} {name!r}; choose from {', '.join(self.names)}")
        return self._factories[name]

    def build(self, spec: str) -> T:
        """Instantiate the strategy a spec names, passing its options as string keywords."""
        name, options = parse_spec(spec)
        if name not in self._factories:
            raise SpecError(f"unknown {self.kind} {name!r}; choose from {', '.join(self.names)}")
        try:
            return self._factories[name](**options)
        except SpecError:
            raise
        except (TypeError, ValueError) as error:
            # An unknown option (TypeError) or a value the strategy cannot take (int("abc")):
            # the message names the spec, whatever the strategy's own message says.
            raise SpecError(f"{self.kind} {spec!r}: {error}") from None
