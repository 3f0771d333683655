"""Rows of a dataset from a local file or the Hugging Face Hub, and the checks that turn them into a `Dataset`.

Task loaders (:mod:`dipod_trl.tasks`) and ``--dataset_path`` read data through here: ``path`` is either a local
``.jsonl``/``.json``/``.csv``/``.parquet`` file or a Hub dataset id, so every task also works offline.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset

LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def is_local(path: str | Path) -> bool:
    """Whether ``path`` names a local file (by suffix or existence) rather than a Hub dataset id."""
    return Path(path).suffix.lower() in LOCAL_SUFFIXES or Path(path).exists()


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a local ``.jsonl``, ``.json`` (list, or dict of a list), ``.csv`` or ``.parquet`` file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file {p} not found; pass an existing .jsonl/.json/.csv/.parquet path")
    suffix = p.suffix.lower()
    try:
        if suffix == ".jsonl":
            with open(p, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
        elif suffix == ".json":
            with open(p, encoding="utf-8") as f:
                rows = json.load(f)
            if isinstance(rows, dict):
                lists = [v for v in rows.values() if isinstance(v, list)]
                rows = lists[0] if len(lists) == 1 else rows
        elif suffix == ".csv":
            with open(p, encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f))
        elif suffix == ".parquet":
            rows = Dataset.from_parquet(str(p)).to_list()
        else:
            raise ValueError(f"unsupported file type {suffix!r}; use .jsonl, .json, .csv or .parquet")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise ValueError(f"cannot read {p}: {e}; expected a {suffix} file with one record per row") from e
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{p}: expected a list of records (objects), got {type(rows).__name__}")
    return rows


def hub_records(hub_id: str, config: str | None, split: str) -> list[dict[str, Any]]:
    """Rows of a Hub dataset split, with an error that names the offline alternative."""
    from datasets import load_dataset

    try:
        return load_dataset(hub_id, config, split=split).to_list()
    except Exception as e:
        raise RuntimeError(
            f"could not load {hub_id!r} (split {split!r}) from the Hugging Face Hub: {e}. "
            "Offline, pass path=<local .jsonl/.json/.csv/.parquet file>."
        ) from e


def records(path: str | Path | None, hub_id: str, config: str | None, split: str) -> list[dict[str, Any]]:
    """Rows of ``path`` (a local file or a Hub id), or of ``hub_id`` when ``path`` is None."""
    source = str(path) if path is not None else hub_id
    return read_records(source) if is_local(source) else hub_records(source, config, split)


def field(row: dict[str, Any], names: Sequence[str], source: str, i: int) -> Any:
    """The first non-empty column of ``row`` among ``names`` (case-insensitive), or a clear error."""
    lowered = {str(k).lower(): v for k, v in row.items()}
    for name in names:
        if lowered.get(name) not in (None, ""):
            return lowered[name]
    raise ValueError(f"{source}: row {i} has no {' / '.join(names)} column (columns: {sorted(row)})")


def build(rows: list[dict[str, Any]], convert: Callable[[dict[str, Any], int], dict[str, Any]]) -> Dataset:
    """A `Dataset` of ``convert(row, index)`` for every row; an empty source is an error."""
    if not rows:
        raise ValueError("no rows to build a dataset from; check the file or the split")
    return Dataset.from_list([convert(row, i) for i, row in enumerate(rows)])


def empty(columns: list[str]) -> Dataset:
    """A 0-row dataset with ``columns``."""
    return Dataset.from_dict({c: [] for c in columns})
