"""Plug-ins selected by spec strings such as ``attention:layers=first-half,agg=mean``.

Scorers, pruning policies, re-evaluation modes and engines are all one kind of plug-in: a
dataclass whose fields are its options, registered under a name. ``Registry.build`` parses a
spec, converts each option string to its field's annotated type (``int``, ``float``, ``bool``,
``str``, a ``Literal`` of choices, ``X | None``, with an optional ``Range`` in ``Annotated``),
and ``Plugin.spec`` writes the canonical spec back from the fields. A plug-in's
``__post_init__`` keeps only its semantic checks.

A composite strategy takes another spec as an option value; a value that holds commas is
wrapped in parentheses, ``mix:a=(attention:query=probe,agg=mean),b=length,w=0.5``: options are
split at the commas outside parentheses only (``embed_spec`` / ``nested_spec``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar, Union


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


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric option, used as ``Annotated[int, Range(minimum=1)]``:
    the range is declared once, in the type, and checked by ``Registry.build``."""

    minimum: float | None = None
    maximum: float | None = None
    open_minimum: bool = False
    open_maximum: bool = False

    def __contains__(self, value: float) -> bool:
        if math.isnan(value):
            return False
        low_ok = self.minimum is None or (
            value > self.minimum if self.open_minimum else value >= self.minimum
        )
        high_ok = self.maximum is None or (
            value < self.maximum if self.open_maximum else value <= self.maximum
        )
        return low_ok and high_ok

    def __str__(self) -> str:
        parts = []
        if self.minimum is not None:
            parts.append(f"{'>' if self.open_minimum else '>='} {self.minimum:g}")
        if self.maximum is not None:
            parts.append(f"{'<' if self.open_maximum else '<='} {self.maximum:g}")
        return " and ".join(parts) or "any number"


PositiveInt = Annotated[int, Range(minimum=1)]
NonNegativeInt = Annotated[int, Range(minimum=0)]
PositiveFloat = Annotated[float, Range(minimum=0, open_minimum=True)]
Fraction = Annotated[float, Range(minimum=0, maximum=1)]

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def run_setting(default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A plug-in field set by the run (a seed, the answer budget), not by its spec string:
    ``Registry.build`` fills it from its keyword context and ``spec`` leaves it out."""
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    return dataclasses.field(metadata={"run_setting": True}, **kwargs)


def spec_key(name: str) -> dict[str, str]:
    """Field metadata giving an option a spec name other than its field name (``lambda``)."""
    return {"spec_key": name}


def coerce(value: str, annotation: Any, where: str) -> Any:
    """``value`` (an option string) as ``annotation`` says; ValueError naming ``where``."""
    low, origin = value.strip(), typing.get_origin(annotation)
    if origin is Annotated:
        base, *extras = typing.get_args(annotation)
        result = coerce(value, base, where)
        for extra in extras:
            if isinstance(extra, Range) and result is not None and result not in extra:
                raise ValueError(f"{where}={value} is outside the allowed range ({extra})")
        return result
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if low.lower() in ("", "none") and len(options) < len(typing.get_args(annotation)):
            return None
        return coerce(value, options[0], where) if len(options) == 1 else low
    if origin is Literal:
        choices = typing.get_args(annotation)
        if low not in choices:
            raise ValueError(f"{where}={value!r}; choose from {', '.join(map(str, choices))}")
        return low
    if annotation is bool:
        if low.lower() not in _TRUE | _FALSE:
            raise ValueError(f"{where}={value!r} is not true or false")
        return low.lower() in _TRUE
    if annotation is int:
        try:
            return int(low)
        except ValueError:
            raise ValueError(f"{where}={value!r} is not an integer") from None
    if annotation is float:
        try:
            number = float(low)
        except ValueError:
            raise ValueError(f"{where}={value!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"{where}={value!r} is not a finite number")
        return number
    return low


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return embed_spec(str(value))


class Plugin:
    """A strategy built from a spec: a dataclass whose ``init`` fields are its options.

    ``name`` is set by ``Registry.register``. The canonical ``spec`` lists every option in
    field order (the run settings and ``init=False`` fields left out); a plug-in whose spec
    has a shape of its own overrides it.
    """

    name: ClassVar[str] = ""

    @classmethod
    def spec_fields(cls) -> Iterator[dataclasses.Field]:
        """The fields a spec string can set."""
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.init and not f.metadata.get("run_setting"):
                yield f

    @classmethod
    def option_help(cls) -> str:
        """``name[:key=..]`` with the choices of each option, for ``--help``."""
        hints = typing.get_type_hints(cls, include_extras=True)
        parts = []
        for f in cls.spec_fields():
            annotation = hints[f.name]
            if typing.get_origin(annotation) is Annotated:
                annotation = typing.get_args(annotation)[0]
            if typing.get_origin(annotation) is Literal:
                parts.append(
                    f"{f.metadata.get('spec_key', f.name)}="
                    + "|".join(map(str, typing.get_args(annotation)))
                )
            else:
                parts.append(f"{f.metadata.get('spec_key', f.name)}=..")
        return cls.name + (f"[:{','.join(parts)}]" if parts else "")

    @property
    def spec(self) -> str:
        values = [
            f"{f.metadata.get('spec_key', f.name)}={_format_value(getattr(self, f.name))}"
            for f in self.spec_fields()
        ]
        return self.name + (":" + ",".join(values) if values else "")


P = TypeVar("P", bound=Plugin)


class Registry(Generic[P]):
    """Plug-ins of one kind (scorers, policies, modes, engines), by name.

    A plug-in registers with ``@REGISTRY.register("name")`` in its own module; importing that
    module is all a new plug-in needs (``plugins.load_plugins`` imports outside ones).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type[P]] = {}

    def register(self, name: str) -> Callable[[type[P]], type[P]]:
        def decorate(cls: type[P]) -> type[P]:
            cls.name = name
            self._classes[name] = cls
            return cls

        return decorate

    @property
    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: str) -> bool:
        return name in self._classes

    def get(self, name: str) -> type[P]:
        """The class registered as ``name``."""
        if name not in self._classes:
            raise SpecError(f"unknown {self.kind} {name!r}; choose from {', '.join(self.names)}")
        return self._classes[name]

    def help(self) -> str:
        """Every registered plug-in with its options, for ``--help``."""
        return " | ".join(self._classes[n].option_help() for n in self.names)

    def build(self, spec: str, **context: Any) -> P:
        """The plug-in a spec names, its options converted to their annotated types.

        ``context`` fills the plug-in's run settings (``run_setting`` fields) it declares;
        the others are ignored, so one call site can serve every plug-in of a kind.
        """
        name, options = parse_spec(spec)
        cls = self.get(name)
        hints = typing.get_type_hints(cls, include_extras=True)
        keys = {f.metadata.get("spec_key", f.name): f for f in cls.spec_fields()}
        kwargs: dict[str, Any] = {}
        try:
            for key, value in options.items():
                if key not in keys:
                    known = ", ".join(keys) or "none"
                    raise SpecError(
                        f"{self.kind} {spec!r}: unknown option {key!r} (options: {known})"
                    )
                f = keys[key]
                kwargs[f.name] = coerce(value, hints[f.name], key)
            settings = {
                f.name
                for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if f.metadata.get("run_setting")
            }
            kwargs.update({k: v for k, v in context.items() if k in settings})
            return cls(**kwargs)
        except SpecError:
            raise
        except (TypeError, ValueError) as error:
            # A value the plug-in cannot take: the message names the spec, whatever the
            # plug-in's own message says.
            raise SpecError(f"{self.kind} {spec!r}: {error}") from None
