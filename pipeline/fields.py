"""Declared ranges and choices of configuration fields, and the one check that enforces them.

A config dataclass states what each field accepts next to the field::

    lr: float = checked(5e-5, gt=0)
    flip_prob: float = checked(0.5, ge=0, le=1)
    snr_db: tuple[float, float] = checked((-5.0, 5.0), ordered=True)
    attn_implementation: str = checked("sdpa", choices=("eager", "sdpa"))

``check_fields`` walks a config (nested sections included) and raises ``FieldError`` for the first
value outside its declaration, naming the key, the value and what is accepted; a section whose
fields must also agree with each other says so in a static ``check_together(values, prefix)``,
which ``check_fields`` calls after the section's own fields. Types are not this
module's concern: the training config converts every value to its field's type first
(``training.config``), and code that builds a config in Python passes typed values.

The module sits at the bottom of the package graph (standard library only) so that ``pipeline``
and ``model`` declare their own fields without importing the trainer.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import MISSING, dataclass
from typing import Any

RULE = "accepts"  # the dataclass field metadata key


class FieldError(ValueError):
    """A value outside its field's declaration; the message names the key, the value and what is accepted."""

    def __init__(self, key: str, value: Any, accepted: str):
        super().__init__(f"{key} must be {accepted}, got {value!r}")
        self.key, self.value, self.accepted = key, value, accepted

    def __reduce__(self):  # crosses process boundaries whole (the default would re-call __init__ with the message)
        return type(self), (self.key, self.value, self.accepted)


def _number(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Rule:
    """What one field accepts. Bounds and choices apply to a value, or to each item of a list or tuple."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple | None = None
    ordered: bool = False  # a (low, high) pair with low <= high
    nonempty: bool = False  # a list with at least one item

    def bound(self) -> str:
        """The bounds in words: ``> 0``, ``>= 1``, ``in [0, 1]``, ``in (0, 1]``; '' when unbounded."""
        low = ("(", self.gt) if self.gt is not None else ("[", self.ge) if self.ge is not None else None
        high = (self.lt, ")") if self.lt is not None else (self.le, "]") if self.le is not None else None
        if low and high:
            return f"in {low[0]}{_number(low[1])}, {_number(high[0])}{high[1]}"
        if low:
            return f"{'>' if low[0] == '(' else '>='} {_number(low[1])}"
        if high:
            return f"{'<' if high[1] == ')' else '<='} {_number(high[0])}"
        return ""

    def accepted(self, sequence: bool) -> str:
        """What the field accepts, in words (the end of a ``must be ...`` sentence)."""
        if self.choices is not None:
            names = [str(c) for c in self.choices]
            choice = " or ".join(names) if len(names) <= 2 else "one of " + ", ".join(names)
            if not sequence:
                return choice
            return f"{'a non-empty list' if self.nonempty else 'a list'} whose items are each {choice}"
        bound = self.bound()
        if not sequence:
            return bound or "a number"
        words = (
            "a [low, high] pair with low <= high" if self.ordered else "a non-empty list" if self.nonempty else "a list"
        )
        return f"{words}, each {bound}" if bound else words

    def allows(self, value: Any) -> bool:
        if self.choices is not None:
            if _is_sequence(value):  # a list of choices (e.g. several trackers)
                items = list(value)
                return bool(items or not self.nonempty) and all(x in self.choices for x in items)
            return value in self.choices
        if _is_sequence(value):
            items = list(value)
            if self.nonempty and not items:
                return False
            if self.ordered and not (len(items) == 2 and all(map(_is_number, items)) and items[0] <= items[1]):
                return False
            return all(self._number_allowed(x) for x in items)
        return self._number_allowed(value)

    def _number_allowed(self, x: Any) -> bool:
        if not (self.gt is not None or self.ge is not None or self.lt is not None or self.le is not None):
            return True
        # NaN fails every comparison; an infinite learning rate, probability or count is no setting either
        return (
            _is_number(x)
            and math.isfinite(x)
            and (self.gt is None or x > self.gt)
            and (self.ge is None or x >= self.ge)
            and (self.lt is None or x < self.lt)
            and (self.le is None or x <= self.le)
        )


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_sequence(x: Any) -> bool:
    # duck-typed: lists and tuples, and the list nodes of a structured config
    return not isinstance(x, (str, bytes, dict)) and hasattr(x, "__iter__") and hasattr(x, "__len__")


def checked(
    default: Any = MISSING,
    *,
    factory: Any = MISSING,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    choices: tuple | None = None,
    ordered: bool = False,
    nonempty: bool = False,
) -> Any:
    """A dataclass field (``default`` or ``factory``, as ``dataclasses.field``) with what it accepts."""
    rule = Rule(
        gt=gt,
        ge=ge,
        lt=lt,
        le=le,
        choices=tuple(choices) if choices is not None else None,
        ordered=ordered,
        nonempty=nonempty,
    )
    return dataclasses.field(default=default, default_factory=factory, metadata={RULE: rule})


def rule_of(field: dataclasses.Field) -> Rule | None:
    return field.metadata.get(RULE)


def check_value(key: str, rule: Rule, value: Any) -> None:
    """Raise ``FieldError`` when ``value`` is outside ``rule``; ``None`` passes (optional fields)."""
    if value is not None and not rule.allows(value):
        shown = list(value) if _is_sequence(value) else value  # as a YAML list is written
        raise FieldError(key, shown, rule.accepted(_is_sequence(value)))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(config: Any, prefix: str = "", cls: type | None = None) -> None:
    """Check every declared field of ``config`` and of its nested sections, in field order.

    ``config`` is a dataclass instance, or any object whose attributes hold the fields of
    ``cls`` (a structured config node before it becomes the dataclass)."""
    cls = cls or type(config)
    hints = _hints(cls)
    for field in dataclasses.fields(cls):
        value = getattr(config, field.name)
        section = hints.get(field.name)
        if dataclasses.is_dataclass(section) and value is not None:
            check_fields(value, f"{prefix}{field.name}.", section)
        elif (rule := rule_of(field)) is not None:
            check_value(f"{prefix}{field.name}", rule, value)
    together = getattr(cls, "check_together", None)
    if together is not None:  # the fields against each other (e.g. the loader's streams and its pace)
        together(config, prefix)
