"""The one error type a user sees: bad input, reported as a single line, exit code 2."""

from __future__ import annotations


class InputError(Exception):
    """Bad input from the user: a file, a row, a field, a config key.

    The CLI prints ``str(error)`` on one line and exits with code 2; no traceback.
    ``row`` is 1-based (the line number of a JSONL file, the row of a Parquet file).
    """

    def __init__(self, source: str, message: str, *, row: int | None = None, field: str | None = None):
        self.source = str(source)
        self.message = message
        self.row = row
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [self.source]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return ": ".join(where) + ": " + self.message


class ConfigError(ValueError):
    """A config value out of range; ``key`` is dotted (``train.steps``). Becomes an ``InputError`` on load."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


def chain(error: BaseException | None):
    """``error``, then what caused it (``__cause__``, else ``__context__``), and so on: a library often wraps the
    OSError that says what went wrong (a full disk, a read-only store) in errors of its own."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def one_line(value, limit: int = 200) -> str:
    """``value`` as text on one line (whitespace collapsed), cut to ``limit`` characters: for error messages."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Terminated(BaseException):
    """SIGTERM arrived (``flywheel.termination.install_termination_handler``): unwind like Ctrl-C, exit 143."""
