"""argparse value types that refuse nonsense with the option named and the allowed range
(``argument --episodes: must be an integer in [1, 1000000], got '-5'``, exit 2), before any
work starts. One implementation for every command and benchmark."""

from __future__ import annotations

import argparse
import math


def int_in(lo: int, hi: int):
    """An integer in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer in [{lo}, {hi}], got "
                                             f"{text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be an integer in [{lo}, {hi}], got {v}")
        return v

    parse.__name__ = f"integer in [{lo}, {hi}]"
    return parse


def float_in(lo: float, hi: float, *, open_low: bool = False):
    """A finite number in [lo, hi] (``open_low``: above lo)."""
    left = "(" if open_low else "["

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        ok = math.isfinite(v) and (v > lo if open_low else v >= lo) and v <= hi
        if not ok:
            raise argparse.ArgumentTypeError(f"must be a finite number in {left}{lo}, {hi}], "
                                             f"got {text!r}")
        return v

    parse.__name__ = f"number in {left}{lo}, {hi}]"
    return parse
