"""Decoded rows from .json, .jsonl, gzip (of either) and .parquet files, each with its location.

A row that cannot be decoded on its own (a JSONL line that is not JSON or not UTF-8) is returned as a `BadRow`
so that callers can skip and report it. A problem that spoils the whole file (a truncated JSON array, a broken
gzip stream, a missing parquet engine) raises DataError at once: there is no row to skip.

Locations are `file:LINE` (1-based) for JSONL and `file:[INDEX]` (0-based element index) for JSON arrays and
parquet, `file:["key"]` for a JSON object whose values are all rows (a single other object is one row).
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
import zlib
from pathlib import Path
from typing import Any

from spct_jax.data.schema import DataError

SUFFIXES = (".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz", ".ndjson.gz", ".parquet")


@dataclasses.dataclass(frozen=True)
class RawRow:
    loc: str
    value: Any


@dataclasses.dataclass(frozen=True)
class BadRow:
    loc: str
    reason: str


def is_data_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(SUFFIXES)


def read_rows(path: str | Path) -> list[RawRow | BadRow]:
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".parquet"):
        return _parquet_rows(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if data[:2] == b"\x1f\x8b":  # gzip magic: trust the bytes over the extension
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"{path}: gzip stream is truncated or corrupt ({e})") from None
    inner = name[:-3] if name.endswith(".gz") else name
    if inner.endswith((".jsonl", ".ndjson")):
        return _jsonl_rows(path, data)
    if inner.endswith(".json"):
        return _json_rows(path, data)
    raise DataError(f"{path}: unsupported file type (expected one of {', '.join(SUFFIXES)})")


def _jsonl_rows(path: Path, data: bytes) -> list[RawRow | BadRow]:
    out: list[RawRow | BadRow] = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM is an editor artefact, not content
            raw = raw[3:]
        if not raw.strip():
            continue
        loc = f"{path}:{lineno}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            out.append(BadRow(loc, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"))
            continue
        try:
            out.append(RawRow(loc, json.loads(text)))
        except json.JSONDecodeError as e:
            out.append(BadRow(loc, f"invalid JSON ({e.msg}, column {e.colno})"))
    return out


def _json_rows(path: Path, data: bytes) -> list[RawRow | BadRow]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        # Many files named .json are really JSON Lines; a whole-document parse stops at the second object.
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            return _jsonl_rows(path, data)
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno}); "
                        "the file is truncated or malformed, no rows were read") from None
    if isinstance(doc, list):
        return [RawRow(f"{path}:[{i}]", v) for i, v in enumerate(doc)]
    if isinstance(doc, dict):
        if doc and all(isinstance(v, dict) for v in doc.values()):
            return [RawRow(f"{path}:[{json.dumps(k)}]", v) for k, v in doc.items()]
        return [RawRow(f"{path}:1", doc)]  # one JSON object: a one-row JSON Lines file saved as .json
    raise DataError(f"{path}: expected a JSON array of rows or an object of rows, got {type(doc).__name__}")


def _parquet_rows(path: Path) -> list[RawRow | BadRow]:
    if importlib.util.find_spec("pyarrow") is None:
        raise DataError(f"{path}: reading parquet needs pyarrow, which is not installed (pip install pyarrow)")
    import pyarrow
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (OSError, pyarrow.ArrowException) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    return [RawRow(f"{path}:[{i}]", v) for i, v in enumerate(rows)]
