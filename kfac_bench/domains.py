"""The allowed values of config keys: domain classes declared beside each dataclass field, and
the type check (:func:`coerce`) that runs before them.

A field states its domain once, in :mod:`kfac_bench.config`::

    n_envs: int = setting(8, AtLeast(1))

``Literal`` fields get :class:`Choices` from their annotation and ``bool`` fields
:data:`BOOLEAN`, so every leaf of ``RunConfig`` has exactly one domain (:func:`domain_of`).
``None``, where the annotation allows it, is always allowed and means "off" / "the default rule".

Every domain has ``check(key, value)``, which raises :class:`ConfigError` with one line naming the
key, the value and the allowed range (``kfac.damping: inf is not allowed (must be a finite number
> 0)``), and ``describe()``, the range as ``kfac-bench presets --keys`` shows it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin


class ConfigError(ValueError):
    """A bad configuration key or value. The message is one line meant for the user."""


def show(value: Any) -> str:
    """A value as the user typed it: ``inf``, ``nan``, ``-1``, ``'nope'``, ``[64, 0]``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        text = "[" + ", ".join(show(v) for v in value) + "]"
    else:
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Domain:
    """The set of values a config key may take."""

    def allows(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        """The allowed values as a phrase: ``a finite number > 0``, ``an integer >= 1``."""
        raise NotImplementedError

    def check(self, key: str, value: Any) -> None:
        """Raise ConfigError naming ``key``, ``value`` and the allowed values if it is outside."""
        if not self.allows(value):
            raise ConfigError(f"{key}: {show(value)} is not allowed (must be {self.describe()})")


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Interval(Domain):
    """Numbers between ``low`` and ``high`` (each bound open or closed); NaN and ±inf never.

    ``integer`` restricts the set to integers (bool is not an integer here)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def allows(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        if math.isinf(self.low) and math.isinf(self.high):
            return kind
        if math.isinf(self.high):
            return f"{kind} {'>' if self.low_open else '>='} {_bound(self.low)}"
        if math.isinf(self.low):
            return f"{kind} {'<' if self.high_open else '<='} {_bound(self.high)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        kind = "an integer" if self.integer else "a number"
        return f"{kind} in {left}{_bound(self.low)}, {_bound(self.high)}{right}"


class Finite(Interval):
    """Any finite number."""

    def __init__(self) -> None:
        super().__init__()


class Positive(Interval):
    """A finite number > 0, optionally at most ``high``."""

    def __init__(self, high: float = math.inf) -> None:
        super().__init__(0.0, high, low_open=True)


class NonNegative(Interval):
    """A finite number >= 0."""

    def __init__(self) -> None:
        super().__init__(0.0)


class Probability(Interval):
    """A number in [0, 1], or [0, 1) with ``below_one`` (a decay or momentum: 1 never forgets)."""

    def __init__(self, below_one: bool = False) -> None:
        super().__init__(0.0, 1.0, high_open=below_one)


class Fraction(Interval):
    """A number in (0, 1]: a share of something that must not be empty."""

    def __init__(self) -> None:
        super().__init__(0.0, 1.0, low_open=True)


class AtLeast(Interval):
    """An integer >= ``low`` (and <= ``high`` where given)."""

    def __init__(self, low: int, high: float = math.inf) -> None:
        super().__init__(low, high, integer=True)


@dataclass(frozen=True)
class Choices(Domain):
    """One of a fixed set of values (a ``Literal`` annotation)."""

    values: tuple[Any, ...]

    def allows(self, value: Any) -> bool:
        return any(value == v and type(value) is type(v) for v in self.values)

    def describe(self) -> str:
        if set(self.values) == {True, False} and all(isinstance(v, bool) for v in self.values):
            return "true or false"
        return "one of " + ", ".join(show(v) for v in self.values)


BOOLEAN = Choices((True, False))


@dataclass(frozen=True)
class Each(Domain):
    """A list whose every element is in ``item`` (``policy.hidden``: widths >= 1)."""

    item: Domain

    def allows(self, value: Any) -> bool:
        return isinstance(value, (list, tuple)) and all(self.item.allows(v) for v in value)

    def describe(self) -> str:
        return f"a list, each {self.item.describe()}"


@dataclass(frozen=True)
class Identity(Domain):
    """A key that names the run (env, variant, preset): set by its own flag, never by ``--set``.

    ``what`` says what the value is; the registries that know the valid names (gymnasium,
    ``variants``, ``presets.PRESETS``) are consulted by ``build_config``, not here."""

    flag: str
    what: str

    def allows(self, value: Any) -> bool:
        return isinstance(value, str)

    def describe(self) -> str:
        return f"{self.what}, set with {self.flag}"


def setting(default: Any, domain: Domain) -> Any:
    """A config dataclass field with its default and its domain (``field.metadata["domain"]``)."""
    return dataclasses.field(default=default, metadata={"domain": domain})


def domain_of(field: dataclasses.Field, annotation: Any) -> Domain | None:
    """A field's declared domain; else Choices for a ``Literal`` (possibly ``| None``) or bool."""
    if "domain" in field.metadata:
        return field.metadata["domain"]
    tp = annotation
    if get_origin(tp) in (Union, types.UnionType):  # X | None: the domain of X
        args = [a for a in get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else tp
    if get_origin(tp) is Literal:
        return Choices(get_args(tp))
    return BOOLEAN if tp is bool else None


# ---------------------------------------------------------------------------------------------
# Types: a value against its field's annotation (before its domain)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        return "list of int"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against annotation ``tp`` (typed values from TOML/JSON). Raise ConfigError."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} has the wrong type (expected {_type_name(tp)})")
    if origin is tuple:
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            return tuple(value)
        raise ConfigError(f"{key}: {value!r} has the wrong type (expected a list of int)")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int literal beyond the float range
                raise ConfigError(f"{key}: {show(value)} is not a finite number") from None
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: {value!r} has the wrong type (expected {_type_name(tp)})")


def parse_cli_value(text: str) -> Any:
    """Turn a ``--set`` string into a typed value: JSON literal if it parses, else the string."""
    lowered = text.strip()
    if lowered in ("none", "None", "null"):
        return None
    if lowered in ("true", "True"):
        return True
    if lowered in ("false", "False"):
        return False
    try:
        return json.loads(lowered)
    except json.JSONDecodeError:
        return text
