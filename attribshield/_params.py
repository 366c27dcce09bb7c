"""Declarative hyperparameter validation, in the manner of scikit-learn's ``_parameter_constraints``.

A component lists, per constructor parameter, the constraints any one of which a valid
value satisfies; :func:`validate_params` checks them all and raises one ``ValueError``
naming the parameter, what it accepts and what it got::

    class MyAttack(Component):
        _parameter_constraints = {"eps": [Real(0, None)], "steps": [Integral(1, None)],
                                  "norm": [Options("Linf", "L2")], "random_state": [None, "random_state"]}

Constraint forms: an :class:`Interval` (``Real`` / ``Integral``), :class:`Options`, ``None``
(the value may be ``None``), a type (``bool``, ``str``, ``dict``, ...; ``bool`` is never taken
as a number), ``"random_state"`` (None, int, NumPy or torch generator) or a callable
returning ``True`` for valid values.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Interval", "Real", "Integral", "Options", "validate_params", "check_param"]


@dataclass(frozen=True)
class Interval:
    """Numbers of ``kind`` ("real" or "integral") between ``low`` and ``high`` (None: unbounded)."""

    kind: str
    low: float | None = None
    high: float | None = None
    closed: str = "both"  # "both", "left", "right", "neither"

    def __call__(self, v) -> bool:
        if isinstance(v, bool) or isinstance(v, (np.bool_,)):
            return False
        if self.kind == "integral":
            if not isinstance(v, (numbers.Integral, np.integer)):
                return False
        elif not isinstance(v, (numbers.Real, np.floating, np.integer)) or not math.isfinite(float(v)):
            return False
        lo_ok = self.low is None or (v >= self.low if self.closed in ("both", "left") else v > self.low)
        hi_ok = self.high is None or (v <= self.high if self.closed in ("both", "right") else v < self.high)
        return bool(lo_ok and hi_ok)

    def __str__(self) -> str:
        what = "an integer" if self.kind == "integral" else "a finite number"
        if self.low is None and self.high is None:
            return what
        # an unbounded (or infinite) side is open whatever ``closed`` says: inf is never a value
        lo_inf = self.low is None or math.isinf(self.low)
        hi_inf = self.high is None or math.isinf(self.high)
        left = "[" if self.closed in ("both", "left") and not lo_inf else "("
        right = "]" if self.closed in ("both", "right") and not hi_inf else ")"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"{what} in {left}{lo}, {hi}{right}"


def Real(low=None, high=None, closed="both") -> Interval:  # noqa: N802 - reads like a type
    """A finite real number in an interval (``bool`` excluded)."""
    return Interval("real", low, high, closed)


def Integral(low=None, high=None, closed="both") -> Interval:  # noqa: N802
    """An integer in an interval (``bool`` excluded)."""
    return Interval("integral", low, high, closed)


class Options:
    """One of the listed values."""

    def __init__(self, *values):
        self.values = tuple(values)

    def __call__(self, v) -> bool:
        # the type test first: an array or tensor is never compared (its ``==`` is elementwise
        # and has no truth value), so it is simply not one of the options
        return any(type(v) is type(o) and bool(v == o) for o in self.values)

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.values)


def _is_random_state(v) -> bool:
    return v is None or isinstance(v, (np.random.Generator, np.random.RandomState, torch.Generator)) or (
        isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, bool) and v >= 0)


def _describe(c) -> str:
    if c is None:
        return "None"
    if c == "random_state":
        return "None, an int >= 0 or a generator"
    if isinstance(c, type):
        return {bool: "a bool", str: "a str"}.get(c, f"an instance of {c.__name__}")
    if isinstance(c, (Interval, Options)):
        return str(c)
    return getattr(c, "__doc__", None) or getattr(c, "__name__", "valid")


def _satisfies(v, c) -> bool:
    if c is None:
        return v is None
    if c == "random_state":
        return _is_random_state(v)
    if isinstance(c, type):
        if c is bool:
            return isinstance(v, (bool, np.bool_))
        return isinstance(v, c) and not (isinstance(v, bool) and c is not bool)
    return bool(c(v))


def check_param(owner: str, name: str, value, constraints) -> None:
    """Raise ``ValueError`` unless ``value`` satisfies one of ``constraints``."""
    if any(_satisfies(value, c) for c in constraints):
        return
    allowed = " or ".join(_describe(c) for c in constraints)
    raise ValueError(f"{owner}: {name} must be {allowed}, got {value!r}")


def validate_params(obj, constraints: dict | None = None) -> None:
    """Check every parameter of ``obj`` listed in ``obj._parameter_constraints`` (or ``constraints``)."""
    constraints = getattr(type(obj), "_parameter_constraints", {}) if constraints is None else constraints
    owner = type(obj).__name__
    for name, cons in constraints.items():
        check_param(owner, name, getattr(obj, name), cons)
