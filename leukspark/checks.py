"""Declarative checks of setting values: accepted types, range and special values.

Configuration keys and model parameters declare a `Check` each, so a bad value fails where
it is read (config load), with a one-line reason, instead of deep inside a Spark task.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    """A value passes when it is one of `special`, or of `types` and inside [low, high].

    `low_open` / `high_open` exclude the bound itself. `each` makes this a check of a
    non-empty list whose items all pass `each`.
    """

    types: tuple[type, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    special: tuple = ()
    each: "Check | None" = None

    def problem(self, value: Any) -> str | None:
        """Why `value` fails, as 'must be ...; got ...', or None when it passes."""
        return None if self.accepts(value) else f"must be {self.describe()}; got {value!r}"

    def accepts(self, value: Any) -> bool:
        if any(_same(value, s) for s in self.special):
            return True
        if self.each is not None:
            return isinstance(value, list) and bool(value) and all(self.each.accepts(v) for v in value)
        # YAML's true/false are ints to Python; a boolean is never a number here.
        if isinstance(value, bool) or not isinstance(value, self.types):
            return False
        # NaN compares false with every bound, so it would pass any range; infinity passes an
        # open-ended one. No setting means either: a number must be finite.
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def describe(self) -> str:
        parts = []
        if self.each is not None:
            parts.append(f"a non-empty list, each {self.each.describe()}")
        elif self.types:
            parts.append(_kind(self.types) + self._range())
        parts += ["null" if s is None else repr(s) for s in self.special]
        return " or ".join(parts)

    def _range(self) -> str:
        if self.low is not None and self.high is not None:
            return f" in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f" {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f" {'<' if self.high_open else '<='} {self.high}"
        return ""


def integer(low: int | None = None, high: int | None = None, *, special: tuple = ()) -> Check:
    return Check((int,), low, high, special=special)


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False, special: tuple = ()) -> Check:
    return Check((int, float), low, high, low_open, high_open, special=special)


def positive(*, special: tuple = ()) -> Check:
    return number(0, low_open=True, special=special)


def one_of(*values: Any, types: tuple[type, ...] = ()) -> Check:
    """Exactly one of `values`, or any value of `types` (e.g. a class-weight mapping)."""
    return Check(types, special=values)


def list_of(item: Check) -> Check:
    return Check(each=item)


@dataclass(frozen=True)
class AnyOf(Check):
    """Passes when one of `options` passes (e.g. a count of genes or a fraction of them)."""

    options: tuple[Check, ...] = ()

    def accepts(self, value: Any) -> bool:
        return any(option.accepts(value) for option in self.options)

    def describe(self) -> str:
        return " or ".join(option.describe() for option in self.options)


def any_of(*options: Check) -> AnyOf:
    return AnyOf(options=options)


def non_finite_number(value: Any, where: str = "") -> tuple[str, float] | None:
    """(dotted place, value) of the first NaN or infinity inside `value` (nested mappings and lists), or None.

    Free-form settings (model parameters, a class-weight mapping) have no declared range, but a
    NaN in them is still a mistake that would only surface deep inside training.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return where or "value", value
    if isinstance(value, dict):
        items = ((f"{where}.{key}" if where else str(key), item) for key, item in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    return next((found for place, item in items if (found := non_finite_number(item, place)) is not None), None)


def nesting_depth(value: Any, limit: int) -> int:
    """How deep lists and mappings nest in a parsed JSON value, counted up to `limit` + 1 (iterative:
    a hostile file cannot exhaust the recursion limit here)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        node, level = pending.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            if level <= limit:
                pending.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def relative_folder_problem(name: Any) -> str | None:
    """Why `name` is not a folder strictly inside a lake root (relative, no '..', not the root), or None."""
    from pathlib import PurePosixPath

    if not isinstance(name, str) or not name.strip():
        return f"must be a non-empty folder name inside the lake; got {name!r}"
    if "://" in name or "\\" in name or "\x00" in name:
        return f"must be a plain relative folder name (no URI, backslash or NUL); got {name!r}"
    if re.search(r"%[0-9A-Fa-f]{2}", name):  # delta-rs percent-decodes table paths once more
        return f"must not hold a '%' followed by two hex digits (delta-rs reads it as an escape); got {name!r}"
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("~"):
        return f"must be relative to the lake root, not an absolute path; got {name!r}"
    if ".." in path.parts:
        return f"must stay inside the lake (no '..'); got {name!r}"
    if not [part for part in path.parts if part != "."]:
        return f"must name a folder inside the lake, not the lake root itself; got {name!r}"
    return None


def _same(value: Any, special: Any) -> bool:
    # 1 == True in Python: keep booleans and numbers apart.
    return type(value) is type(special) and value == special if special is not None else value is None


def _kind(types: tuple[type, ...]) -> str:
    if set(types) == {int, float}:
        return "a number"
    if types == (int,):
        return "an integer"
    return " or ".join(f"a {t.__name__}" for t in types)


@dataclass(frozen=True)
class OddInteger(Check):
    """An odd integer in [low, high] (or one of `special`): k-TSP's number of voting pairs."""

    def accepts(self, value: Any) -> bool:
        if any(_same(value, s) for s in self.special):
            return True
        return super().accepts(value) and value % 2 == 1

    def describe(self) -> str:
        return " or ".join(["an odd integer" + self._range()] + ["null" if s is None else repr(s) for s in self.special])


def odd_integer(low: int | None = None, high: int | None = None, *, special: tuple = ()) -> OddInteger:
    return OddInteger((int,), low, high, special=special)
