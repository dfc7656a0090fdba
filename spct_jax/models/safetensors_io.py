"""A small, streaming safetensors reader and writer (no pickle, no torch).

Why our own: the numpy backend of the `safetensors` package cannot represent bfloat16, which is how Gemma-2 and
Llama checkpoints ship. The format is trivial (8-byte little-endian header length, a JSON header of
{name: {dtype, shape, data_offsets}}, then raw row-major bytes), so a slice of a tensor's leading axis is one
contiguous byte range:

    tensor [R, C] at data offset o:   rows [a, b)  =  bytes [o + a*C*s, o + b*C*s)     (s = itemsize)

`read_rows` reads exactly that range with one positioned read (`os.preadv` into the destination buffer; a
`seek` + `readinto` on a remote file, i.e. one range request). Nothing else of the file is touched, so a process
that loads its shards of a 27B model reads only its share, and the bytes it read count once in its memory: a
memory map would add every touched page of the file to the process's resident set. The writer streams tensors
(a row block at a time) behind a header written first, so no file ever needs the whole model in memory.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import ml_dtypes
import numpy as np

from spct_jax import paths

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024

# (name, shape, dtype, produce): produce() returns the whole array, or an iterator of consecutive row blocks
# (None blocks on a process that only takes part in the collectives that make them, see weights.write_checkpoint).
TensorItem = tuple[str, tuple[int, ...], Any, Callable[[], Any]]


class SafetensorsError(ValueError):
    pass


class WriteFailed(OSError):
    """Writing the file failed (disk full, permission, a bad block); every producer was still drained, so the
    processes that only fed collectives are not left waiting. The cause is chained."""


def _nbytes(shape: Iterable[int], dtype) -> int:
    return int(np.prod(tuple(shape), dtype=np.int64)) * np.dtype(dtype).itemsize


class SafetensorsFile:
    """Lazy view of one .safetensors file (a local path, a gcsfuse path, or `gs://...`)."""

    def __init__(self, path: paths.PathLike):
        self.path = paths.as_path(path)
        self._local = not paths.is_remote(self.path)
        try:
            with self.path.open("rb") as f:
                raw = f.read(8)
                if len(raw) != 8:
                    raise SafetensorsError(f"{self.path}: truncated header; download or export the file again")
                (n,) = struct.unpack("<Q", raw)
                if n > _MAX_HEADER:
                    raise SafetensorsError(f"{self.path}: header of {n} bytes is implausible")
                blob = f.read(n)
                size = f.seek(0, os.SEEK_END)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path}: no such file") from None
        try:
            header = json.loads(blob)
        except json.JSONDecodeError as e:
            raise SafetensorsError(f"{self.path}: header is not JSON ({e})") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self._entries = header
        self._base = 8 + n
        for name, e in header.items():  # checked up front: a bad tensor is named before any loading starts
            if e["dtype"] not in _DTYPES:
                raise SafetensorsError(f"{self.path}: tensor {name!r} has unsupported dtype {e['dtype']}")
            start, end = e["data_offsets"]
            if end - start != _nbytes(e["shape"], _DTYPES[e["dtype"]]):
                raise SafetensorsError(f"{self.path}: tensor {name!r} has {end - start} bytes for shape "
                                       f"{tuple(e['shape'])}")
            if self._base + end > size:
                # Named up front, before any loading: an interrupted download or copy is the usual cause.
                raise SafetensorsError(f"{self.path}: truncated: tensor {name!r} ends at byte {self._base + end} but "
                                       f"the file has {size}; download or export the file again")
        self._fd: int | None = None
        self._file = None

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def dtype(self, name: str) -> np.dtype:
        return _DTYPES[self._entries[name]["dtype"]]

    def _read_into(self, buf: np.ndarray, offset: int) -> None:
        view = memoryview(buf.reshape(-1).view(np.uint8))
        if self._local:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            done = 0
            while done < len(view):  # preadv may return short counts (signals, huge reads)
                got = os.preadv(self._fd, [view[done:]], offset + done)
                if got <= 0:
                    raise SafetensorsError(f"{self.path}: unexpected end of file at byte {offset + done}")
                done += got
            return
        if self._file is None:
            self._file = self.path.open("rb")
        self._file.seek(offset)
        done = 0
        while done < len(view):
            got = self._file.readinto(view[done:])
            if not got:
                raise SafetensorsError(f"{self.path}: unexpected end of file at byte {offset + done}")
            done += got

    def read_rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of the tensor's leading axis (a 0-d tensor: itself), as a new array in the file's
        dtype. Only those rows' bytes are read."""
        if name not in self._entries:
            raise KeyError(name)
        dtype, shape = self.dtype(name), self.shape(name)
        if not shape:
            out = np.empty((), dtype)
            self._read_into(out, self._base + self._entries[name]["data_offsets"][0])
            return out
        stop = shape[0] if stop is None else stop
        if not 0 <= start <= stop <= shape[0]:
            raise SafetensorsError(f"{self.path}: rows [{start}, {stop}) of tensor {name!r} {shape}")
        row_bytes = _nbytes(shape[1:], dtype)
        out = np.empty((stop - start, *shape[1:]), dtype)
        if out.size:
            self._read_into(out, self._base + self._entries[name]["data_offsets"][0] + start * row_bytes)
        return out

    def get(self, name: str) -> np.ndarray:
        """The whole tensor (a private copy)."""
        return self.read_rows(name)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._file is not None:
            self._file.close()
            self._file = None


class CheckpointReader:
    """All tensors of an HF checkpoint folder: one model.safetensors, or shards listed by the index file."""

    def __init__(self, folder: paths.PathLike):
        folder = paths.as_path(folder)
        index = folder / "model.safetensors.index.json"
        self._where: dict[str, SafetensorsFile] = {}
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise SafetensorsError(f"{index}: not a safetensors index ({e!r})") from None
            files = {}
            for name in sorted(set(weight_map.values())):
                if not (folder / name).exists():
                    held = sorted(t for t, f in weight_map.items() if f == name)
                    raise FileNotFoundError(f"{index} names shard file {name!r} (holding {held[0]!r}"
                                            + (f" and {len(held) - 1} more" if len(held) > 1 else "")
                                            + f"), which is missing from {folder}")
                files[name] = SafetensorsFile(folder / name)
            for tensor, name in weight_map.items():
                if tensor not in files[name].keys():
                    raise SafetensorsError(f"{index} puts tensor {tensor!r} in {name!r}, which does not hold it")
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

    def dtype(self, name: str) -> np.dtype:
        return self._where[name].dtype(name)

    def file_of(self, name: str) -> paths.Path:
        return self._where[name].path

    def read_rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._where[name].read_rows(name, start, stop)

    def get(self, name: str) -> np.ndarray:
        return self._where[name].get(name)

    def close(self):
        for f in set(self._where.values()):
            f.close()


def _blocks(produced: Any) -> Iterator[Any]:
    if produced is None or isinstance(produced, np.ndarray) or hasattr(produced, "__array__"):
        yield produced
    else:
        yield from produced


def _write_block(f, block: np.ndarray) -> None:
    # One place that puts bytes in the file (tests slow it down to play a slow writer).
    f.write(memoryview(np.ascontiguousarray(block).reshape(-1).view(np.uint8)))


def write_safetensors(path: paths.PathLike, tensors: Iterable[TensorItem], metadata: dict[str, str] | None = None,
                      *, write: bool = True, atomic: bool = True) -> None:
    """Write tensors given as (name, shape, dtype, produce), produced in turn after the header.

    produce() returns the array or an iterator of its consecutive row blocks; each block is written and released
    before the next is produced. write=False drains every producer without opening a file (a process that only
    takes part in the collectives producing the blocks). atomic: write to a temp name and rename (a folder that is
    itself temporary does without, which on an object store saves a copy of every byte).
    """
    items = list(tensors)
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype, _ in items:
        nbytes = _nbytes(shape, dtype)
        header[name] = {"dtype": _NAMES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data section
    path = paths.as_path(path)
    # An object store publishes an object whole when its upload completes: no temp name needed (a rename there
    # would copy every byte once more).
    target = path.parent / (path.name + ".tmp") if atomic and not paths.is_remote(path) else path
    f = None
    error: Exception | None = None  # once set: stop writing, keep draining (other processes' collectives finish)
    try:
        if write:
            try:
                f = target.open("wb")
                f.write(struct.pack("<Q", len(blob)))
                f.write(blob)
            except Exception as e:  # noqa: BLE001 - re-raised below, after the producers are drained
                error = e
        for name, shape, dtype, produce in items:
            rows = 0
            for block in _blocks(produce()):
                if f is None or error is not None:
                    continue
                try:
                    block = np.asarray(block)
                    want = tuple(shape[1:]) if shape else ()
                    if block.dtype != np.dtype(dtype) or (tuple(block.shape[1:]) if shape else block.shape) != want:
                        raise SafetensorsError(f"tensor {name!r}: produced a {block.dtype} block of shape "
                                               f"{block.shape}, declared {np.dtype(dtype)} {tuple(shape)}")
                    _write_block(f, block)
                    rows += block.shape[0] if shape else 1
                except Exception as e:  # noqa: BLE001
                    error = e
            if f is not None and error is None and rows != (shape[0] if shape else 1):
                error = SafetensorsError(f"tensor {name!r}: produced {rows} rows, declared {tuple(shape)}")
        if error is not None:
            raise WriteFailed(f"{path}: {error}") from error
        if f is not None:
            f.close()
            f = None
            if target != path:
                os.replace(target, path)
    except BaseException:
        if f is not None:
            f.close()
        if write:
            paths.rmtree(target)
        raise
