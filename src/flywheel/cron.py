"""Cron schedules as both cluster doors take them: a standard 5-field expression, checked field by field
before anything is created (a Kubeflow recurring run, an Argo CronWorkflow), so a typo is one line."""

from __future__ import annotations

import re

from flywheel.errors import InputError

# Standard 5-field cron: minute hour day-of-month month day-of-week, as (name, low, high, names).
CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day of week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)
_CRON_ITEM = re.compile(r"^(\*|\?|(\w+)(?:-(\w+))?)(?:/(\d+))?$")


def check_cron(expression: str) -> str:
    """Validate a standard 5-field cron expression; return KFP's 6-field form (seconds first)."""
    fields = expression.split()
    if len(fields) != 5:
        raise InputError("--cron", f"expected 5 fields (minute hour day-of-month month day-of-week), "
                                   f"got {len(fields)} in {expression!r}")
    for text, (name, low, high, names) in zip(fields, CRON_FIELDS):
        for item in text.split(","):
            match = _CRON_ITEM.match(item.upper())
            if not match or (match.group(1) == "?" and name not in ("day of month", "day of week")):
                raise InputError("--cron", f"{name} field {text!r} is not a cron field")
            for bound in (match.group(2), match.group(3)):
                if bound is None:
                    continue
                value = names.index(bound) + low if bound in names else int(bound) if bound.isdigit() else None
                if value is None or not low <= value <= high:
                    raise InputError("--cron", f"{name} field {text!r}: {bound} is outside {low}-{high}")
            if match.group(4) is not None and int(match.group(4)) == 0:
                raise InputError("--cron", f"{name} field {text!r}: step must be >= 1")
    return "0 " + " ".join(fields)
