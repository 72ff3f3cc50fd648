"""Durations as people write and read them: ``--budget 1h30m``, "4.5 min", "ends ~14:32"."""
from __future__ import annotations

import math
import re
from datetime import datetime

from pipeline.errors import OEEMError

DURATION_FORMS = "90s, 45m, 2h, 1h30m, or a number of minutes (60)"


def parse_duration(text: str | float | int) -> float:
    """Seconds of a duration as a person writes it: ``90s``, ``45m``, ``2h``, ``1h30m``; a bare number is minutes
    (the plugin's field, ``--budget 60``). Anything else is an :class:`OEEMError` naming the accepted forms."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text) * 60
    else:
        s = str(text).strip().lower().replace(" ", "")
        number = r"(\d+(?:\.\d+)?)"
        bare = re.fullmatch(number, s)
        parts = re.fullmatch(rf"(?:{number}h)?(?:{number}m(?:in)?)?(?:{number}s)?", s)
        if bare:
            seconds = float(bare.group(1)) * 60
        elif parts and s:
            h, m, sec = (float(g) if g else 0.0 for g in parts.groups())
            seconds = h * 3600 + m * 60 + sec
        else:
            raise OEEMError(f"{text!r} is not a duration: accepted forms are {DURATION_FORMS}")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise OEEMError(f"a time budget must be longer than 0 (got {text!r}): accepted forms are {DURATION_FORMS}")
    return seconds


def fmt_duration(seconds: float) -> str:
    """``12 s``, ``4.5 min``, ``5 min``, ``1 h 32 min``: what a person reads at a glance."""
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 90 * 60:
        minutes = seconds / 60
        return f"{minutes:.0f} min" if minutes == round(minutes) else f"{minutes:.1f} min"
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m:02d} min"


def fmt_clock(when: datetime, now: datetime) -> str:
    """``14:32``, or ``Tue 09:10`` when it is not today."""
    return f"{when:%H:%M}" if when.date() == now.date() else f"{when:%a %H:%M}"
