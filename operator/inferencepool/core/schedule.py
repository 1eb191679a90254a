"""Scheduled warm floors (spec.schedule): a floor by time of day and day of week, in one explicit time zone.

Pure: the floor at a unix time, and the parse of the spec's schedule with errors that name the field and
the fix. A window is days + [start, end) in local wall-clock time (HH:MM, end 24:00 for midnight); while
one is active its minReplicas is the pool's floor instead of spec.minReplicas (higher for business hours,
lower for nights). Windows that overlap must agree on the floor, so the floor at any moment has one
answer; a window never crosses midnight (write two). Local time comes from the IANA database (zoneinfo,
https://docs.python.org/3/library/zoneinfo.html), so daylight-saving changes move the windows with the
clock on the wall, as a business day does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # index = datetime.weekday()
MAX_WINDOWS = 16
_CLOCK = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$|^(24):(00)$")


class ScheduleError(ValueError):
    """A schedule field that cannot be used: `field` is its path under spec, the message says the fix."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Window:
    name: str
    days: tuple[int, ...]  # 0 = Monday, sorted
    start: int  # minutes after local midnight
    end: int  # minutes after local midnight, > start, at most 1440
    min_replicas: int

    def covers(self, weekday: int, minute: int) -> bool:
        return weekday in self.days and self.start <= minute < self.end


@dataclass(frozen=True)
class Schedule:
    time_zone: str
    windows: tuple[Window, ...]
    clock_offset: float = 0.0  # unix seconds at the decision clock's 0 (the simulator's trace start); 0 in the operator

    def active(self, unix_time: float) -> Window | None:
        """The window covering this moment in the schedule's time zone, or None."""
        local = datetime.fromtimestamp(unix_time + self.clock_offset, ZoneInfo(self.time_zone))
        minute = local.hour * 60 + local.minute
        return next((w for w in self.windows if w.covers(local.weekday(), minute)), None)


def floor(min_replicas: int, schedule: Schedule | None, unix_time: float) -> tuple[int, Window | None]:
    """The pool's warm floor at this moment: the active window's minReplicas, else spec.minReplicas."""
    usable = schedule is not None and math.isfinite(unix_time) and abs(unix_time) < 1e11  # within datetime's range
    window = schedule.active(unix_time) if usable else None
    return (window.min_replicas, window) if window is not None else (min_replicas, None)


def _minutes(text, field: str) -> int:
    match = _CLOCK.match(text) if isinstance(text, str) else None
    if not match:
        raise ScheduleError(field, f'must be a 24-hour time HH:MM such as "09:00" (or "24:00" for an end at midnight), got {text!r}')
    hours, minutes = (match[1], match[2]) if match[1] else (match[3], match[4])
    return int(hours) * 60 + int(minutes)


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def parse(raw, max_replicas: int) -> Schedule | None:
    """spec.schedule as a Schedule (None when unset); ScheduleError names the first bad field and the fix."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ScheduleError("schedule", "must be an object with timeZone and windows")
    zone = raw.get("timeZone")
    if not isinstance(zone, str) or not zone.strip():
        raise ScheduleError("schedule.timeZone", 'is required: an IANA time zone such as "Europe/Paris" or "UTC"')
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError("schedule.timeZone", f'{zone!r} is not an IANA time zone: use a name such as '
                            '"Europe/Paris", "America/New_York" or "UTC"') from None
    items = raw.get("windows")
    if not isinstance(items, list) or not items or len(items) > MAX_WINDOWS:
        raise ScheduleError("schedule.windows", f"must be a list of 1 to {MAX_WINDOWS} windows")
    windows = []
    for i, item in enumerate(items):
        at = f"schedule.windows[{i}]"
        if not isinstance(item, Mapping):
            raise ScheduleError(at, "must be an object with start, end and minReplicas")
        days = item.get("days") or list(DAYS)
        if not isinstance(days, list) or not all(d in DAYS for d in days):
            raise ScheduleError(f"{at}.days", f"must list days from {', '.join(DAYS)}, got {days!r}")
        start, end = _minutes(item.get("start"), f"{at}.start"), _minutes(item.get("end"), f"{at}.end")
        if end <= start:
            raise ScheduleError(f"{at}.end", f"must be after start ({_clock(end)} <= {_clock(start)}): a window ends on "
                                "the day it starts; split one that crosses midnight in two (e.g. 22:00-24:00 and "
                                "00:00-06:00 on the next day)")
        floor_ = item.get("minReplicas")
        if isinstance(floor_, bool) or not isinstance(floor_, int) or not 0 <= floor_ <= max_replicas:
            raise ScheduleError(f"{at}.minReplicas", f"must be a whole number between 0 and maxReplicas ({max_replicas}), "
                                f"got {floor_!r}")
        name = item.get("name") or f"windows[{i}]"
        windows.append(Window(str(name), tuple(sorted({DAYS.index(d) for d in days})), start, end, floor_))
    for i, a in enumerate(windows):
        for j, b in enumerate(windows[:i]):
            shared = sorted(set(a.days) & set(b.days))
            if a.min_replicas != b.min_replicas and shared and a.start < b.end and b.start < a.end:
                raise ScheduleError(
                    f"schedule.windows[{i}]",
                    f"overlaps windows[{j}] on {DAYS[shared[0]]} {_clock(max(a.start, b.start))}-"
                    f"{_clock(min(a.end, b.end))} with a different minReplicas ({a.min_replicas} vs {b.min_replicas}): "
                    "make the windows meet end to start, or give them the same minReplicas")
    return Schedule(zone, tuple(windows))
