"""The ``type=`` of every numeric command-line option: parse the text, then check it is finite and in range.

A value out of range is refused while parsing, so it is argparse's own one-line error and exit code 2 before
anything loads::

    p.add_argument("--max-batches", type=positive_int)          # 1, 2, ...
    p.add_argument("--samples", type=non_negative_int)          # 0, 1, ...
    p.add_argument("--temperature", type=finite_float(min=0))   # 0.0 <= x, not nan or inf
    p.add_argument("--top-p", type=probability)                 # 0 < p <= 1

``tests/test_cli_numbers.py`` walks the parser and refuses a numeric option declared with a plain ``int`` or
``float``: every number goes through a :class:`Number`.
"""

from __future__ import annotations

import argparse
import math


class Number:
    """An argparse ``type=``: text -> ``int`` or ``float`` in ``[min, max]`` (an open end where asked).

    Args:
        kind: ``int`` or ``float`` (a float must be finite: no ``nan`` or ``inf``).
        min, max: the bounds (``None`` = unbounded).
        min_open, max_open: exclude the bound itself.

    Raises:
        argparse.ArgumentTypeError: (when called) text that is not a number of that kind or is out of range;
            the message says what the option accepts and what it got.
    """

    def __init__(self, kind: type, min: float | None = None, max: float | None = None, *,
                 min_open: bool = False, max_open: bool = False):
        if kind not in (int, float):
            raise ValueError(f"kind must be int or float, got {kind!r}")
        self.kind, self.min, self.max, self.min_open, self.max_open = kind, min, max, min_open, max_open
        self.__name__ = kind.__name__  # argparse names a type by it in its own messages

    def describe(self) -> str:
        """What the option accepts, e.g. ``an integer >= 1`` or ``a finite number in (0, 1]``."""
        what = "an integer" if self.kind is int else "a finite number"
        if self.min is not None and self.max is not None:
            return f"{what} in {'(' if self.min_open else '['}{self.min:g}, {self.max:g}{')' if self.max_open else ']'}"
        if self.min is not None:
            return f"{what} {'>' if self.min_open else '>='} {self.min:g}"
        if self.max is not None:
            return f"{what} {'<' if self.max_open else '<='} {self.max:g}"
        return what

    def accepts(self, value: float) -> bool:
        """True when ``value`` (already a number) is finite and within the bounds."""
        if not math.isfinite(value):
            return False
        low = self.min is None or (value > self.min if self.min_open else value >= self.min)
        high = self.max is None or (value < self.max if self.max_open else value <= self.max)
        return low and high

    def __call__(self, text: str) -> int | float:
        try:
            value = self.kind(text.strip())
        except ValueError:
            value = None
        if value is None or not self.accepts(value):
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text!r}")
        return value

    def __repr__(self) -> str:
        return f"Number({self.describe()})"


def finite_float(min: float | None = None, max: float | None = None, *, min_open: bool = False,
                 max_open: bool = False) -> Number:
    """A finite float in ``[min, max]`` (``nan`` and ``inf`` refused); ``min_open``/``max_open`` exclude a bound."""
    return Number(float, min, max, min_open=min_open, max_open=max_open)


integer = Number(int)
positive_int = Number(int, 1)
non_negative_int = Number(int, 0)
probability = finite_float(0.0, 1.0, min_open=True)
