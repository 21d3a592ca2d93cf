"""The exploration-std schedule: RoboBase/DrQ-v2 syntax, parsed and checked once.

``spec`` is a constant (``"0.2"``), ``linear(init,final,N)`` (init -> final over N steps, then
constant) or ``step_linear(init,final1,N1,final2,N2)`` (init -> final1 over N1, then final1 ->
final2 over the next N2). The value at a step is computed exactly as RoboBase's
``utils.schedule`` does (the same float64 expressions), so acting and learning match it.

Parsing refuses what would stop a robot later: non-finite numbers, durations that are not
positive (division by zero), and values outside ``[0, MAX_STD]`` (a huge std makes the
truncated normal's sample ``inf - inf = NaN``). The schedule is piecewise linear, so the
values at its knots bound it over the whole step range: a schedule that parses is finite and
in range at every step. This is the package's only implementation of the schedule.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

#: The largest std accepted. Actions live in [-1, 1]; RoboBase schedules stay <= 1.
MAX_STD = 10.0
_MAX_SPEC_CHARS = 200
_NUM = r"\s*([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?|[-+]?(?:inf|nan|infinity))\s*"
_LINEAR = re.compile(rf"linear\({_NUM},{_NUM},{_NUM}\)", re.IGNORECASE)
_STEP_LINEAR = re.compile(rf"step_linear\({_NUM},{_NUM},{_NUM},{_NUM},{_NUM}\)", re.IGNORECASE)


class ScheduleError(ValueError):
    """A schedule that cannot be evaluated safely over the whole step range."""


@dataclass(frozen=True)
class StdSchedule:
    spec: str
    kind: str                    # "constant" | "linear" | "step_linear"
    params: tuple[float, ...]

    @classmethod
    def parse(cls, spec: str | float) -> StdSchedule:
        raw = str(spec)
        if len(raw) > _MAX_SPEC_CHARS:
            raise ScheduleError(f"schedule of {len(raw)} characters (at most {_MAX_SPEC_CHARS})")
        text = raw.strip()
        kind, params = cls._split(text)
        if not all(math.isfinite(p) for p in params):
            raise ScheduleError(f"schedule {text!r} has a non-finite number")
        values, durations = (params, ()) if kind == "constant" else (
            (params[0], params[1]) if kind == "linear" else (params[0], params[1], params[3]),
            (params[2],) if kind == "linear" else (params[2], params[4]))
        if any(d <= 0 for d in durations):
            raise ScheduleError(f"schedule {text!r}: durations must be > 0 (division by zero)")
        if any(not 0.0 <= v <= MAX_STD for v in values):
            raise ScheduleError(f"schedule {text!r}: std values must lie in [0, {MAX_STD}]")
        return cls(text, kind, params)

    @staticmethod
    def _split(text: str) -> tuple[str, tuple[float, ...]]:
        try:
            return "constant", (float(text),)
        except ValueError:
            pass
        m = _STEP_LINEAR.fullmatch(text)
        if m:
            return "step_linear", tuple(float(g) for g in m.groups())
        m = _LINEAR.fullmatch(text)
        if m:
            return "linear", tuple(float(g) for g in m.groups())
        raise ScheduleError(f"schedule {text!r} is not understood (a constant, "
                            "linear(init,final,N) or step_linear(init,final1,N1,final2,N2))")

    def __call__(self, step: int | float) -> float:
        p = self.params
        if self.kind == "constant":
            return p[0]
        if self.kind == "linear":
            init, final, n = p
            mix = np.clip(step / n, 0.0, 1.0)
            return float((1.0 - mix) * init + mix * final)
        init, final1, n1, final2, n2 = p
        if step <= n1:
            mix = np.clip(step / n1, 0.0, 1.0)
            return float((1.0 - mix) * init + mix * final1)
        mix = np.clip((step - n1) / n2, 0.0, 1.0)
        return float((1.0 - mix) * final1 + mix * final2)


    def first_step_at(self, std: float) -> int:
        """The first integer step at which the schedule is at or below ``std`` (where a
        start checkpoint should sit to explore with ``std``); a value the schedule never
        reaches is refused with its lowest value."""
        if not math.isfinite(std):
            raise ScheduleError(f"std must be finite, got {std}")
        p = self.params
        if self.kind == "constant":
            legs = [(0.0, p[0], p[0], 1.0)]
        elif self.kind == "linear":
            legs = [(0.0, p[0], p[1], p[2])]
        else:
            legs = [(0.0, p[0], p[1], p[2]), (p[2], p[1], p[3], p[4])]
        for start, a, b, n in legs:   # value a at step start, b at start + n
            if a <= std:
                step = math.ceil(start)
            elif b <= std:
                step = max(0, math.floor(start + n * (a - std) / (a - b)) - 1)
            else:
                continue
            while self(step) > std:  # float rounding of the inverse
                step += 1
            return step
        raise ScheduleError(f"schedule {self.spec!r} never reaches std {std} (lowest "
                            f"{min(min(a, b) for _, a, b, _ in legs)})")


@lru_cache(maxsize=64)
def parse_schedule(spec: str) -> StdSchedule:
    """:meth:`StdSchedule.parse`, cached (the actor evaluates its schedule every tick)."""
    return StdSchedule.parse(spec)


def schedule(spec: str | float, step: int | float) -> float:
    """Value of the schedule ``spec`` at ``step`` (parses and checks ``spec``)."""
    return parse_schedule(str(spec))(step)
