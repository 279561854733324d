"""The data contracts between stages (docs/design.md, "Data contracts").

A ``Schema`` is a list of typed columns. Stages write with ``io.write_rows`` and
read with ``io.read_rows``, which checks each row and names the first bad field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyarrow as pa

from flywheel.errors import InputError

_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


@dataclass(frozen=True)
class Column:
    name: str
    type: type
    required: bool = True
    nonempty: bool = False  # for strings: "" is an error (an empty prompt is never useful)
    # for numbers: the range a value must lie in (a vote share of 5, or a positive log-probability, would pass
    # every filter downstream unnoticed)
    minimum: float | None = None
    maximum: float | None = None

    def out_of_range(self, value) -> str | None:
        """Why the number ``value`` is outside the column's range, else None."""
        if self.minimum is not None and value < self.minimum:
            return f"must be at least {self.minimum:g}, got {value!r}"
        if self.maximum is not None and value > self.maximum:
            return f"must be at most {self.maximum:g}, got {value!r}"
        return None


@dataclass(frozen=True)
class Schema:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()  # columns whose values together are unique per row (ids); checked on read

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    def arrow(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, _ARROW[c.type], nullable=not c.required) for c in self.columns])

    def check(self, record: dict, *, source, row: int | None = None) -> None:
        """Raise ``InputError`` for the first missing, null, mistyped or empty field of ``record``."""
        for column in self.columns:
            value = record.get(column.name)
            if value is None:
                if column.required:
                    what = "missing" if column.name not in record else "null"
                    raise InputError(source, f"required {self.name} field is {what}", row=row, field=column.name)
                continue
            if not _is_type(value, column.type):
                raise InputError(source, f"expected {column.type.__name__}, got {type(value).__name__} {value!r:.40}",
                                 row=row, field=column.name)
            if column.nonempty and isinstance(value, str) and not value.strip():
                raise InputError(source, "must not be empty", row=row, field=column.name)
            if column.type is float and not math.isfinite(value):
                # NaN compares false with every threshold, so one NaN would pass every filter downstream.
                raise InputError(source, f"must be a finite number, got {value!r}", row=row, field=column.name)
            if column.type is int and not -2**63 <= value < 2**63:
                raise InputError(source, f"{value!r:.40} is out of range (a 64-bit integer)", row=row,
                                 field=column.name)
            problem = column.out_of_range(value) if column.type in (int, float) else None
            if problem:
                raise InputError(source, problem, row=row, field=column.name)

    def check_unique(self, rows: list[dict], *, source) -> None:
        """Raise ``InputError`` naming the second row whose ``key`` repeats an earlier row's."""
        if not self.key:
            return
        seen: dict[tuple, int] = {}
        for index, row in enumerate(rows, start=1):
            value = tuple(row.get(name) for name in self.key)
            if value in seen:
                shown = value[0] if len(value) == 1 else dict(zip(self.key, value))
                raise InputError(source, f"duplicate {self.name} {shown!r} (first in row {seen[value]})", row=index,
                                 field=",".join(self.key))
            seen[value] = index


def conform(values: pa.Array | pa.ChunkedArray, column: Column) -> pa.Array | pa.ChunkedArray | None:
    """``values`` as the contract's Arrow type of ``column`` when they are an encoding of it, else None: for text
    any string encoding (string, large_string, string_view, dictionary of one; pandas, Polars and DuckDB write
    them), for integers any width (one outside int64: None), for floats any float or integer. No value changes,
    but an integer past 2**53 read as a float rounds, as the row reader's float() would."""
    kind = values.type.value_type if pa.types.is_dictionary(values.type) else values.type
    if not _ENCODINGS[column.type](kind):
        return None
    try:
        return values.cast(_ARROW[column.type], safe=not (column.type is float and pa.types.is_integer(kind)))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # e.g. a uint64 past int64's range
        return None


def _is_text(kind: pa.DataType) -> bool:
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(kind)))


_ENCODINGS = {str: _is_text, int: pa.types.is_integer, bool: pa.types.is_boolean,
              float: lambda kind: pa.types.is_floating(kind) or pa.types.is_integer(kind)}


def _is_type(value, expected: type) -> bool:
    if isinstance(value, bool):
        return expected is bool
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


def bucket_key(name: str) -> tuple:
    """Sort key for ``bucket`` values: numeric ones in numeric order ("2" before "10"), then the rest by name."""
    return (0, int(name), "") if name.isascii() and name.isdigit() else (1, 0, name)  # int("²") fails


PROMPTS = Schema("prompt", (
    Column("id", str, nonempty=True),
    Column("prompt", str, nonempty=True),
    Column("bucket", str, required=False),  # what evaluate groups by (digit length for addition)
    Column("meta", str, required=False),  # JSON object, task-specific
    Column("answer", str, required=False),  # hidden truth: eval and audit sets only, never trained on
), key=("id",))

SAMPLES = Schema("sample", (
    Column("prompt_id", str),
    Column("sample_idx", int),
    Column("voter", int),  # which member of the champion produced it (0 for a single model)
    Column("completion", str),
    Column("answer", str, required=False),  # null when no answer could be extracted
    Column("n_tokens", int, minimum=0),
    Column("logprob", float, maximum=0.0),  # sum of token log-probabilities under the sampling distribution
    # generate.search=step_beam: every token the search generated while growing this sample (its rollouts);
    # null for plain sampling, whose cost is n_tokens
    Column("search_tokens", int, required=False, minimum=0),
), key=("prompt_id", "voter", "sample_idx"))


def generated_tokens(samples: list[dict] | pa.Table) -> int:
    """Every token generate spent on ``samples`` (rows or an Arrow table): a searched sample's ``search_tokens``
    (its rollouts), a drawn sample's ``n_tokens``."""
    if isinstance(samples, pa.Table):
        import pyarrow.compute as pc

        cost = samples.column("n_tokens")
        if "search_tokens" in samples.column_names:
            cost = pc.coalesce(samples.column("search_tokens"), cost)
        return int(pc.sum(cost).as_py() or 0)
    return sum(s["n_tokens"] if s.get("search_tokens") is None else s["search_tokens"] for s in samples)


VOTES = Schema("vote", (
    Column("prompt_id", str),
    Column("majority_answer", str, required=False),  # null when no sample had an answer
    Column("vote_share", float, minimum=0.0, maximum=1.0),
    Column("entropy", float, minimum=0.0),  # nats, over answer classes (no-answer counts as its own class)
    Column("n_samples", int, minimum=0),
    Column("n_answers", int, minimum=0),  # distinct answers
), key=("prompt_id",))

AGREEMENT = Schema("agreement", (
    Column("prompt_id", str),
    Column("sample_idx", int),
    Column("voter", int),
    Column("agrees", bool),
), key=("prompt_id", "voter", "sample_idx"))

CURATED = Schema("curated", (
    Column("prompt", str, nonempty=True),
    Column("completion", str, nonempty=True),
    Column("prompt_id", str, required=False),
    Column("round", int, required=False),
    Column("bucket", str, required=False),
))

CURATED_PAIRS = Schema("curated pair", (  # DPO: chosen agrees with the prompt's majority, rejected does not
    Column("prompt", str, nonempty=True),
    Column("chosen", str, nonempty=True),
    Column("rejected", str),  # may be empty: an empty completion is a legitimate "no answer" to reject
    Column("prompt_id", str, required=False),
    Column("round", int, required=False),
    Column("bucket", str, required=False),
))

RL_PROMPTS = Schema("rl prompt", (  # GRPO: prompts whose vote shows disagreement; no answers, no labels
    Column("prompt", str, nonempty=True),
    Column("prompt_id", str, required=False),
    Column("vote_share", float, required=False, minimum=0.0, maximum=1.0),
    Column("round", int, required=False),
    Column("bucket", str, required=False),
    Column("meta", str, required=False),  # the code task's test inputs: the GRPO reward runs programs on them
))
