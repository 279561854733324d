"""Rebuild the bring-your-own example from examples/math: other column names, Parquet and a datasets directory.

Run from the repository root: python examples/byo/make_byo.py
"""

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq


def rows(path):
    with open(path) as handle:
        for line in handle:
            record = json.loads(line)
            yield {"problem": record["question"], "final": record["answer"].split("####")[-1].strip(),
                   "level": "easy" if len(record["question"]) < 90 else "hard"}


pq.write_table(pa.Table.from_pylist(list(rows("examples/math/prompts.jsonl"))), "examples/byo/prompts.parquet")
datasets.Dataset.from_list(list(rows("examples/math/eval.jsonl"))).save_to_disk("examples/byo/eval")
