"""Reading run records: numbers from JSON values, and the JSONL metrics file of a run (local or a
URL, through `ascl_jax.storage`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ascl_jax import storage

PathLike = str | os.PathLike


def lookup(record: Mapping[str, Any], key: str) -> Any:
    """``record[key]``, else the value of a key ending in ``'/' + key`` (e.g. ``'train/' + key``)."""
    if key in record:
        return record[key]
    suffix = "/" + key
    for k, v in record.items():
        if isinstance(k, str) and k.endswith(suffix):
            return v
    return None


def to_float(value: Any) -> float:
    if value is None:
        return float("nan")
    try:
        return float(np.asarray(value, np.float64).reshape(-1).mean())
    except (TypeError, ValueError):
        return float("nan")


def read_jsonl(path: PathLike) -> list[dict[str, Any]]:
    records = []
    with storage.path(path).open("r") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                # e.g. a line cut short by a killed run; the rest of the file is still usable.
                continue
            if isinstance(rec, dict):
                records.append(rec)
    return records


def resolve_metrics_file(path: PathLike) -> storage.Path:
    path = storage.path(path)
    if path.is_dir():
        if (path / "metrics.jsonl").is_file():
            return path / "metrics.jsonl"
        candidates = sorted(path.glob("*.jsonl"))
        if len(candidates) == 1:
            return candidates[0]
        raise FileNotFoundError(
            f"{path} is a directory without metrics.jsonl and with {len(candidates)} *.jsonl files; "
            "pass the metrics file itself."
        )
    if not path.is_file():
        raise FileNotFoundError(f"metrics file {path} does not exist.")
    return path
