"""Numeric flag types for argparse: every numeric flag of every command is finite and in range.

A bad value is refused while the command line is parsed, before any file is read or written,
as one line (`mobilebert finetune: error: argument --epochs: must be a finite number > 0, got nan`)
and exit code 2 (cli.OneLineErrorParser). Use them as `type=` of `add_argument`:

    parser.add_argument("--epochs", type=number(above=0), default=6.0)
    parser.add_argument("--batch-size", type=integer(minimum=1), default=64)
    parser.add_argument("--adam-beta1", type=number(minimum=0, below=1), default=0.9)
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

SEED_MAX = 2**32 - 1   # numpy's RandomState takes seeds in [0, 2**32 - 1]


def _bounds_text(minimum, maximum, above, below) -> str:
    def show(value) -> str:
        return str(value) if isinstance(value, int) else f"{value:g}"

    parts = [f"{sign} {show(value)}" for sign, value in ((">=", minimum), (">", above), ("<=", maximum), ("<", below))
             if value is not None]
    return " and ".join(parts)


def _checker(kind: str, parse: Callable[[str], float], minimum=None, maximum=None, above=None, below=None):
    bounds = _bounds_text(minimum, maximum, above, below)
    description = f"{kind}{' ' + bounds if bounds else ''}"

    def convert(text: str):
        try:
            value = parse(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"must be {description}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be {description}, got {text}")
        if ((minimum is not None and value < minimum) or (maximum is not None and value > maximum)
                or (above is not None and value <= above) or (below is not None and value >= below)):
            raise argparse.ArgumentTypeError(f"must be {description}, got {text}")
        return value

    convert.__name__ = kind    # argparse names the type in some messages
    convert.bounds = {"minimum": minimum, "maximum": maximum, "above": above, "below": below}   # for tests
    return convert


def number(minimum: float | None = None, maximum: float | None = None, above: float | None = None,
           below: float | None = None):
    """A finite float within the bounds (minimum/maximum inclusive, above/below exclusive)."""
    return _checker("a finite number", float, minimum, maximum, above, below)


def integer(minimum: int | None = None, maximum: int | None = None):
    """An integer within the inclusive bounds."""
    return _checker("an integer", int, minimum, maximum)


def integers(minimum: int | None = None, maximum: int | None = None):
    """A comma-separated list of integers, each within the inclusive bounds ("1,8" -> [1, 8])."""
    one = integer(minimum, maximum)
    bounds = _bounds_text(minimum, maximum, None, None)
    description = f"comma-separated integers{' ' + bounds if bounds else ''}"

    def convert(text: str) -> list[int]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"must be {description}, got {text!r}")
        try:
            return [one(item) for item in items]
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"must be {description}, got {text!r}") from None

    convert.__name__ = "integers"
    convert.bounds = one.bounds
    return convert


def seed():
    """A random seed numpy, Python and Paddle all accept."""
    return integer(minimum=0, maximum=SEED_MAX)
