"""A small, streaming safetensors reader and writer (no pickle, no torch).

Why our own: the numpy backend of the `safetensors` package cannot represent bfloat16, which is how Gemma-2 and
Llama checkpoints ship. The format is trivial (8-byte little-endian header length, a JSON header of
{name: {dtype, shape, data_offsets}}, then raw bytes), so we memory-map each file and hand out one tensor at a
time as a numpy view; nothing is read until a tensor is asked for, and a 27B checkpoint never sits in host memory
twice.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    pass


class SafetensorsFile:
    """Lazy view of one .safetensors file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise SafetensorsError(f"{self.path}: truncated header")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER:
                raise SafetensorsError(f"{self.path}: header of {n} bytes is implausible")
            try:
                header = json.loads(f.read(n))
            except json.JSONDecodeError as e:
                raise SafetensorsError(f"{self.path}: header is not JSON ({e})") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self._entries = header
        self._base = 8 + n
        self._map: mmap.mmap | None = None

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        if name not in self._entries:
            raise KeyError(name)
        e = self._entries[name]
        if e["dtype"] not in _DTYPES:
            raise SafetensorsError(f"{self.path}: tensor {name!r} has unsupported dtype {e['dtype']}")
        if self._map is None:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        start, end = e["data_offsets"]
        dtype = _DTYPES[e["dtype"]]
        shape = tuple(e["shape"])
        if end - start != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise SafetensorsError(f"{self.path}: tensor {name!r} has {end - start} bytes for shape {shape}")
        return np.frombuffer(self._map, dtype=dtype, count=int(np.prod(shape, dtype=np.int64)),
                             offset=self._base + start).reshape(shape)

    def close(self):
        if self._map is not None:
            self._map.close()
            self._map = None


class CheckpointReader:
    """All tensors of an HF checkpoint folder: one model.safetensors, or shards listed by the index file."""

    def __init__(self, folder: str | os.PathLike):
        folder = Path(folder)
        index = folder / "model.safetensors.index.json"
        self._where: dict[str, SafetensorsFile] = {}
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = {name: SafetensorsFile(folder / name) for name in sorted(set(weight_map.values()))}
            self._where = {tensor: files[name] for tensor, name in weight_map.items()}
        else:
            single = folder / "model.safetensors"
            if not single.exists():
                raise FileNotFoundError(f"{folder}: neither model.safetensors nor model.safetensors.index.json")
            f = SafetensorsFile(single)
            self._where = {k: f for k in f.keys()}

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name].shape(name)

    def get(self, name: str) -> np.ndarray:
        return self._where[name].get(name)

    def close(self):
        for f in set(self._where.values()):
            f.close()


def write_safetensors(path: str | os.PathLike, tensors: Iterator[tuple[str, tuple[int, ...], np.dtype, callable]],
                      metadata: dict[str, str] | None = None) -> None:
    """Write tensors given as (name, shape, dtype, produce) where produce() returns the array when its turn comes.

    Shapes are known up front, so the header is written first and each tensor is produced, written and
    released in turn. The file appears atomically (written to a temp name, then renamed).
    """
    items = list(tensors)
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype, _ in items:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _NAMES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data section
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype, produce in items:
            arr = np.ascontiguousarray(produce(), dtype=dtype)
            if arr.shape != tuple(shape):
                raise SafetensorsError(f"tensor {name!r}: produced shape {arr.shape}, declared {tuple(shape)}")
            f.write(arr.tobytes())
    os.replace(tmp, path)
