"""Bring your own data: prompt and eval rows from JSONL, Parquet or a saved ``datasets`` directory.

``data.columns`` maps the prompt contract's keys to your column names; unmapped keys
use their own name (``{"prompt": "question"}`` reads the prompt from ``question``):
  id       unique id (default: the row index, ``row-<i>``)
  prompt   the question text (required, non-empty)
  answer   reference answer (required in the eval file; in the prompt file only audits use it)
  bucket   group name that evaluate reports per (default: none, reported as "all")
  tests    code task only: a list of tests (see ``tasks/code.py``); expected outputs become the answer
A round takes ``data.per_round`` prompts: successive slices (``order: slice``, wrapping
around) or a seeded sample (``order: sample``). Every problem is an ``InputError``
naming the file, the row and the column, raised before anything is written.
"""

from __future__ import annotations

import json
import math
import random
from decimal import Decimal
from pathlib import Path

from flywheel.errors import InputError


DEFAULT_COLUMNS = {"id": "id", "prompt": "prompt", "answer": "answer", "bucket": "bucket", "tests": "tests"}


def read_records(path: str | Path, *, key: str) -> list[dict]:
    """Raw rows of a JSONL/JSON-lines, Parquet or ``datasets.save_to_disk`` directory. ``key`` names the config
    field."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "data file not found", field=key)
    if path.is_dir():
        records = _read_dataset_dir(path)
    elif path.suffix in (".jsonl", ".json"):
        from flywheel.io import _read_jsonl

        records = _read_jsonl(path)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        from flywheel.io import _check_names

        try:
            _check_names(path, pq.read_schema(path).names)
            records = pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise InputError(path, f"not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    else:
        raise InputError(path, "unknown data format (expected .jsonl, .parquet or a datasets directory)", field=key)
    if not records:
        raise InputError(path, "the data file has no rows", field=key)
    return records


def _read_dataset_dir(path: Path) -> list[dict]:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise InputError(path, f"not a saved datasets directory ({str(exc).splitlines()[0]})") from None
    if isinstance(dataset, datasets.DatasetDict):
        raise InputError(path, f"holds several splits ({', '.join(dataset)}); point at one split's directory")
    return dataset.to_list()


def to_prompt_rows(records: list[dict], columns: dict, *, task, source, labeled: bool) -> list[dict]:
    """Raw records -> ``schemas.PROMPTS`` rows (``answer`` kept for eval and audit)."""
    mapping = {**DEFAULT_COLUMNS, **columns}
    present = set().union(*(record.keys() for record in records))
    # Mapped keys must exist, except reference answers in an unlabeled file (the same mapping serves both files).
    required = {"prompt"} | (set(columns) if labeled else set(columns) - {"answer"})
    if labeled and mapping["tests"] not in present:
        required.add("answer")
    for key in sorted(required):
        if mapping[key] not in present:
            raise InputError(source, f"column '{mapping[key]}' not found (data.columns.{key}); "
                             f"columns: {', '.join(sorted(present))}", field=mapping[key])
    rows, seen = [], set()
    for index, record in enumerate(records, start=1):
        prompt = record.get(mapping["prompt"])
        if prompt is None:
            raise InputError(source, "prompt is null or missing", row=index, field=mapping["prompt"])
        if not isinstance(prompt, str):
            raise InputError(source, f"prompt must be text, got {type(prompt).__name__}", row=index,
                             field=mapping["prompt"])
        if not prompt.strip():
            raise InputError(source, "prompt is empty", row=index, field=mapping["prompt"])
        problem = task.prompt_issue(prompt)
        if problem:
            raise InputError(source, problem, row=index, field=mapping["prompt"])
        raw_id = as_text(record.get(mapping["id"]), source=source, row=index, field=mapping["id"])
        row_id = f"row-{index - 1}" if raw_id is None else raw_id
        if row_id in seen:
            raise InputError(source, f"duplicate id {row_id!r}", row=index, field=mapping["id"])
        seen.add(row_id)
        answer = as_text(record.get(mapping["answer"]), source=source, row=index, field=mapping["answer"])
        meta = None
        tests = record.get(mapping["tests"])
        if task.takes_tests and answer is not None:
            # The code task's reference is its labeled tests (is_correct runs them); free text cannot grade.
            raise InputError(source, f"the {task.name} task grades by its tests column ({mapping['tests']!r}), "
                             "not an answer column", row=index, field=mapping["answer"])
        if tests is not None:
            if not task.takes_tests:
                raise InputError(source, f"the {task.name} task takes no tests column", row=index,
                                 field=mapping["tests"])
            # Labeled tests become the hidden answer; only unlabeled inputs (and their style) reach meta.
            test_meta, expected = task.split_tests(tests, source=source, row=index, field=mapping["tests"])
            meta = json.dumps(test_meta)
            answer = expected
        if labeled and answer is None:
            raise InputError(source, "the eval set needs a reference answer", row=index,
                             field=mapping["tests"] if mapping["tests"] in present else mapping["answer"])
        bucket = as_text(record.get(mapping["bucket"]), source=source, row=index, field=mapping["bucket"])
        rows.append({"id": row_id, "prompt": prompt, "bucket": bucket, "meta": meta,
                     "answer": None if answer is None else str(answer)})
    return rows


def as_text(value, *, source, row: int, field: str) -> str | None:
    """A user's id, answer or bucket as text, numbers as they are written: pandas stores a column of integers
    with a missing value as floats, and 3.0 is the answer "3" (no addition answer equals "3.0"), NaN a missing
    one (not the answer "nan"). Anything else (a list, a mapping) is an error: its repr is no answer."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            raise InputError(source, f"must be a finite number, got {value!r}", row=row, field=field)
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (bool, int, Decimal)):
        return str(value)
    raise InputError(source, f"expected text or a number, got {type(value).__name__} {value!r:.40}", row=row,
                     field=field)


def load_prompts(config, task) -> list[dict]:
    """All rows of ``data.prompts`` (answers, where given, only ever reach the audit file)."""
    records = read_records(config.prompts, key="data.prompts")
    return to_prompt_rows(records, config.columns, task=task, source=config.prompts, labeled=False)


def load_eval(config, task) -> list[dict]:
    """``data.eval`` as labeled eval rows (first ``eval_limit`` rows when set); no bucket reads as "all"."""
    records = read_records(config.eval, key="data.eval")
    if config.eval_limit:
        records = records[:config.eval_limit]
    rows = to_prompt_rows(records, config.columns, task=task, source=config.eval, labeled=True)
    for row in rows:
        row["bucket"] = row["bucket"] or "all"
        row["id"] = f"eval-{row['id']}"  # never collides with a prompt id in audits
    return rows


def round_rows(rows: list[dict], config, round_index: int) -> list[dict]:
    """The prompts of round ``round_index`` (1-based): a slice or a seeded sample of ``data.per_round`` rows."""
    count = min(config.per_round or len(rows), len(rows))
    if config.order == "sample":
        return random.Random(f"data:{config.seed}:{round_index}").sample(rows, count)
    start = (round_index - 1) * count % len(rows)
    return (rows[start:] + rows[:start])[:count]
