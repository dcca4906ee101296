"""Strategies selected by spec strings such as ``attention:layers=first-half,agg=mean``.

A composite strategy takes another spec as an option value; a value that holds commas is
wrapped in parentheses, ``mix:a=(attention:query=probe,agg=mean),b=length,w=0.5``: options are
split at the commas outside parentheses only (``embed_spec`` / ``nested_spec``).
"""

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
    for item in filter(None, (part.strip() for part in _split_options(spec, options_text))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"{spec!r}: option {item!r} is not key=value")
        if key.strip() in options:
            raise SpecError(f"{spec!r}: option {key.strip()!r} is given twice")
        options[key.strip()] = value.strip()
    if not name:
        raise SpecError(f"{spec!r}: empty strategy name")
    return name, options


def _split_options(spec: str, text: str) -> list[str]:
    """``text`` split at the commas outside parentheses (a nested spec keeps its own)."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SpecError(f"{spec!r}: ')' without its '('")
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise SpecError(f"{spec!r}: '(' without its ')'")
    return [*parts, text[start:]]


def embed_spec(spec: str) -> str:
    """``spec`` as an option value of another spec: in parentheses when it holds a comma."""
    return f"({spec})" if "," in spec else spec


def nested_spec(value: str) -> str:
    """The spec an option value holds (``embed_spec`` undone): outer parentheses removed."""
    value = value.strip()
    if value.startswith("(") and _closing_paren(value) == len(value) - 1:
        return value[1:-1].strip()
    return value


def _closing_paren(text: str) -> int:
    """Index of the ``)`` that closes ``text[0]``'s ``(`` (-1 if none)."""
    depth = 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return i
    return -1


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
