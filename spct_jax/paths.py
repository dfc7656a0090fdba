"""One path type for local folders, gcsfuse mounts and object stores (`gs://bucket/run`): `etils.epath`.

Run dirs, orbax checkpoints, metrics logs and HF exports all go through here, so `run_dir = "gs://bucket/run"`
works natively and a gcsfuse mount keeps working as the plain local path it is. `epath.Path` reaches `gs://`
through fsspec (`gcsfs`) or TensorFlow's gfile, whichever is installed.

What an object store lacks, and how callers cope:
  - appending: a log on a remote store is rewritten whole when flushed (`train/metrics.py`);
  - renaming a folder: `commit_dir` copies a finished temporary folder's files into place, the file that makes
    the folder loadable last, and removes the temporary one; on a local disk it is one `os.replace`.

This module imports nothing from spct_jax: everything above may use it.
"""
from __future__ import annotations

import os
import re
import shutil
import uuid

from etils import epath

Path = epath.Path
PathLike = str | os.PathLike

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_remote(path: PathLike) -> bool:
    """True for `scheme://...` (gs://, s3://, ...); False for local paths, gcsfuse mounts included."""
    return bool(_SCHEME.match(os.fspath(path)))


def as_path(path: PathLike) -> epath.Path:
    """An `epath.Path`; a local path is made absolute (orbax requires it), a URI is kept as written."""
    if isinstance(path, epath.Path) and is_remote(path):
        return path
    text = os.fspath(path)
    return epath.Path(text if is_remote(text) else os.path.abspath(text))


def join(path: PathLike, *parts: str) -> epath.Path:
    return as_path(path).joinpath(*parts)


def makedirs(path: PathLike) -> epath.Path:
    p = as_path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def exists(path: PathLike) -> bool:
    return as_path(path).exists()


def rmtree(path: PathLike) -> None:
    """Remove a folder (or file) and everything under it; nothing when it does not exist."""
    p = as_path(path)
    if not p.exists():
        return
    if p.is_dir():
        p.rmtree()
    else:
        p.unlink()


def write_text_atomic(path: PathLike, text: str) -> None:
    """Readers see the old text or the new, never half of it (local: temp file + rename; an object store
    publishes an object only when its upload completes)."""
    p = as_path(path)
    if is_remote(p):
        p.write_text(text)
        return
    tmp = p.parent / f".{p.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(text)
    os.replace(tmp, p)


def copy_file(src: PathLike, dst: PathLike) -> None:
    """Copy one file, across backends (a local file into gs:// and back) when needed."""
    s, d = as_path(src), as_path(dst)
    if not is_remote(s) and not is_remote(d):
        shutil.copyfile(s, d)
        return
    with s.open("rb") as fin, d.open("wb") as fout:
        shutil.copyfileobj(fin, fout, 16 << 20)


def temp_sibling(path: PathLike, tag: str = "partial") -> epath.Path:
    """`parent/.name.<tag>`: where a folder is built before `commit_dir` publishes it. The name is fixed, so a
    leftover of a killed run is found (and replaced) by the next one, and never mistaken for the output."""
    p = as_path(path)
    return p.parent / f".{p.name}.{tag}"


def commit_dir(tmp: PathLike, final: PathLike, *, last: str | None = None) -> None:
    """Publish the finished folder `tmp` as `final`, replacing what was there.

    Local (gcsfuse included): `final` is renamed aside, `tmp` renamed into place, the old one removed; a reader
    sees the old folder or the new one, whole. Object store: the old objects are deleted, then `tmp`'s files are
    copied in with `last` (the file that makes the folder loadable, e.g. config.json) copied last, then `tmp` is
    deleted; a reader can see a folder without `last` while this runs, never one with `last` and missing files.
    """
    t, f = as_path(tmp), as_path(final)
    if not is_remote(f):
        old = temp_sibling(f, "old")
        rmtree(old)
        if f.exists():
            os.replace(f, old)
        os.replace(t, f)
        rmtree(old)
        return
    rmtree(f)
    names = sorted((q.name for q in t.iterdir()), key=lambda n: (n == last, n))
    try:
        f.mkdir(parents=True, exist_ok=True)
        for name in names:
            copy_file(t / name, f / name)
    except BaseException:
        rmtree(f)  # nothing partial under the output's name
        raise
    rmtree(t)


__all__ = ["Path", "PathLike", "is_remote", "as_path", "join", "makedirs", "exists", "rmtree", "write_text_atomic",
           "copy_file", "temp_sibling", "commit_dir"]
