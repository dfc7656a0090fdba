"""HF checkpoints <-> spct-jax params: `from_pretrained` and `save_pretrained`.

A checkpoint folder is transformers' layout: `config.json` plus `model.safetensors` or shards listed in
`model.safetensors.index.json`. Only safetensors are read: pickled `.bin` checkpoints are refused by design.
Folders may be local, on a gcsfuse mount, or `gs://` (spct_jax.paths).

Loading follows the training layout (DESIGN "Pod scale"). Without a mesh, tensors are read whole, one at a time.
With a mesh, each process reads only the rows its own devices hold. transformers stores a Linear [out, in] and our
kernels are [in, out], and the partition rules often split the dim that is a column of the file (fsdp splits D,
the file's in-dim of q/k/v/gate/up); a column slice of a row-major tensor is a strided read touching most pages.
So every tensor is first read in a *staging* layout, its file rows split over as many mesh axes as divide them,
which makes each device's share one contiguous byte range, and then moved to the rules' layout on device:

    file tensor [R, C] --rows over (data, fsdp, tensor)--> staging [R, C] --jit (transpose and) reshard--> kernel
    each process reads R / (devices) rows per local device: its share of the bytes, read once

Conversion to the param dtype happens per staging slice, so `dtype=bfloat16` never makes a float32 copy.

Stacked layers. The decoder keeps every block param stacked, [L, ...] (models/transformer.py), while a checkpoint
has one tensor per layer; a mapping entry names the slice (`TensorMap.layer`). Loading reads layer l's tensor
exactly as a whole param is read (its rows only, in the per-layer layout: the rules never split the layer dim, so
a device's share of layer l is slice l of its share of the stack) and writes it into slice l of the stacked array
in place (a donated update on device); the stack is allocated once, already sharded, so no host or device ever
holds a layer twice. Exporting a slice cuts it on device, inside the same compiled row-block program.

Export is the reverse, without a gather: row blocks of each tensor (in the file's orientation, cast on device) are
replicated one at a time and process 0 writes them; so no host holds more than one block, and every process
leaves `write_checkpoint` only after a barrier, once the folder is published whole (written under a temporary name,
then renamed; a failed export leaves nothing under the output's name).
"""
from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from spct_jax import paths
from spct_jax.models.config import ConfigError, ModelConfig
from spct_jax.models.param_map import (Mapping, Path_, ShardingFn, StackedParams, TensorMap, WeightsError,
                                       decoder_mapping, layer_sharding, lm_mapping, sharded_zeros, tensor_shape)
from spct_jax.models.safetensors_io import CheckpointReader, TensorItem, WriteFailed, write_safetensors
from spct_jax.models.transformer import Decoder

# Tensors transformers may write that carry no parameters of ours.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# Export: the largest row block replicated for the writer at once.
EXPORT_BLOCK_BYTES = 256 * 1024**2


def read_hf_config(folder: paths.PathLike) -> dict[str, Any]:
    path = paths.join(folder, "config.json")
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no config.json")
    return json.loads(path.read_text())


# -- loading ------------------------------------------------------------------------------------------------------
def rule_shardings(mesh, rules=None) -> ShardingFn:
    """The partition rules' NamedSharding for each param (spct_jax.parallel.rules, the layout the train steps use).
    Imported here, not at the top: the rules sit above the models in the import order."""
    from spct_jax.parallel.rules import DEFAULT_RULES, param_specs

    rules = DEFAULT_RULES if rules is None else rules

    def sharding(path: Path_, shape: tuple[int, ...]) -> NamedSharding:
        name = "/".join(map(str, path))
        return NamedSharding(mesh, param_specs(mesh, {name: jax.ShapeDtypeStruct(shape, jnp.float32)}, rules)[name])

    return sharding


def staging_spec(mesh, rows: int, row_axes: tuple[str, ...], col_axes: tuple[str, ...]) -> P:
    """The staging layout of a file tensor whose target splits its rows by `row_axes` and its columns by
    `col_axes`: rows split by row_axes and then by as many col_axes as still divide them. Each device's staging
    slice is one contiguous byte range of the file, and no bigger than its slice of the target; a process reads
    the rows of its own devices' slices, nothing of the axes the target replicates over.

    The order makes the relayout one all-to-all per column axis (its tiles move from the rows to the columns);
    staging over every mesh axis instead can make XLA's partitioner give up and replicate the whole tensor on
    every device ("involuntary full rematerialization"), seen for q_proj on a (data, fsdp, tensor) = (2, 2, 2)
    mesh."""
    row_axes = tuple(a for a in row_axes if mesh.shape[a] > 1)
    col_axes = tuple(a for a in col_axes if mesh.shape[a] > 1)
    best: tuple[str, ...] = row_axes  # the target splits the rows by these, so they divide them
    for n in range(len(col_axes), 0, -1):
        for combo in itertools.combinations(col_axes, n):  # order kept
            ways = int(np.prod([mesh.shape[a] for a in row_axes + combo]))
            if rows % ways == 0 and len(row_axes + combo) > len(best):
                best = row_axes + combo
        if len(best) > len(row_axes):
            break
    return P(best if len(best) > 1 else best[0]) if best else P()


@functools.lru_cache(maxsize=None)
def _relayout(transpose: bool, target: jax.sharding.Sharding, into_stack: bool = False) -> Callable:
    """(transpose and) reshard to `target`: x -> x'. into_stack: `target` is a stacked param's layout and the
    program writes x' into slice `layer` of the (donated, so updated in place) stack: (stack, x, layer) -> stack.
    One compiled program per (tensor shape, layout pair, into_stack), the layer traced: a model needs a handful
    (each costs XLA:CPU ~1.5 MB of host memory for its code, which is why the write shares the relayout's program)."""
    move = (lambda x: x.T) if transpose else (lambda x: x)  # noqa: E731
    if not into_stack:
        return jax.jit(move, out_shardings=target)

    def put(stack: jax.Array, x: jax.Array, layer: jax.Array) -> jax.Array:
        # The layer dim is never split: each device writes its own share of the slice, no communication.
        return jax.lax.dynamic_update_index_in_dim(stack, move(x).astype(stack.dtype), layer, 0)

    return jax.jit(put, donate_argnums=0, out_shardings=target)


def _file_axes(target: NamedSharding, ndim: int, transpose: bool) -> list[tuple[str, ...]]:
    """The mesh axes `target` splits each dim of the FILE tensor by."""
    spec = tuple(target.spec) + (None,) * (ndim - len(target.spec))
    axes = [() if e is None else (e,) if isinstance(e, str) else tuple(e) for e in spec]
    return axes[::-1] if transpose else axes


def _shard_reader(reader: CheckpointReader, hf: str, transpose: bool, dtype: np.dtype, direct: bool):
    """rows_for(index) -> this device's slice of tensor `hf`: in our orientation when `direct` (transposed on the
    host), else the file's. Devices holding the same rows share one read."""
    shape = reader.shape(hf)
    slices: dict[tuple[int, int], np.ndarray] = {}

    def rows_for(index: tuple[slice, ...]) -> np.ndarray:
        if not shape:
            return reader.read_rows(hf).astype(dtype, copy=False)
        file_index = tuple(reversed(index)) if direct and transpose else tuple(index)
        start, stop, _ = file_index[0].indices(shape[0])
        if (start, stop) not in slices:
            block = reader.read_rows(hf, start, stop).astype(dtype, copy=False)
            slices[(start, stop)] = np.ascontiguousarray(block.T) if direct and transpose else block
        rest = file_index[1:]
        return slices[(start, stop)][(tuple(reversed(rest)) + (slice(None),)) if direct and transpose
                                     else (slice(None),) + rest]

    return rows_for


def _load_sharded(reader: CheckpointReader, hf: str | list[str], transpose: bool, dtype: np.dtype,
                  target: NamedSharding) -> jax.Array:
    """One tensor into `target`, this process reading only its devices' rows (module docstring).

    When the target splits at most the file's rows (o_proj / down_proj under fsdp, norms), each device's slice is
    read straight into place (transposed on host). Otherwise the tensor goes through the staging layout and one
    compiled relayout moves it to `target` on device.

    hf a list: the L tensors of a stacked param [L, ...] laid out by `target` (the layer dim whole). Read straight
    into place, the stack is one array built from every layer's rows; otherwise each layer is staged and relaid
    out into its slice of the stack, which the relayout's program writes in place (no program of its own).
    """
    names = [hf] if isinstance(hf, str) else list(hf)
    per_layer = target if isinstance(hf, str) else layer_sharding(target)
    shape = reader.shape(names[0])
    file_axes = _file_axes(per_layer, len(shape), transpose)
    direct = not any(file_axes[1:])  # the target splits at most the file's rows
    stage = per_layer if direct else NamedSharding(target.mesh, staging_spec(
        target.mesh, shape[0], file_axes[0], tuple(a for axes in file_axes[1:] for a in axes)))
    our_shape = tuple(reversed(shape)) if direct and transpose else shape
    if isinstance(hf, str) or direct:
        readers = [_shard_reader(reader, name, transpose, dtype, direct) for name in names]
        if isinstance(hf, str):
            out = jax.make_array_from_callback(our_shape, stage, readers[0])
        else:  # each device's [L, ...] share: its rows of every layer
            out = jax.make_array_from_callback((len(names), *our_shape), target,
                                               lambda index: np.stack([r(index[1:]) for r in readers]))
        del readers
        if not direct:
            out = _relayout(transpose, target)(out)
    else:
        out = sharded_zeros((len(names), *(shape[::-1] if transpose else shape)), dtype, target)
        for layer, name in enumerate(names):
            staged = jax.make_array_from_callback(our_shape, stage, _shard_reader(reader, name, transpose, dtype,
                                                                                    False))
            out = _relayout(transpose, target, True)(out, staged, jnp.int32(layer))
            del staged
            out.block_until_ready()
            _release_freed_host_memory()
    out.block_until_ready()  # one tensor at a time: bounded memory, no collective queue (deadlock trap)
    _release_freed_host_memory()
    return out


def _release_freed_host_memory() -> None:
    # glibc keeps the freed staging blocks (read buffers, XLA:CPU temporaries) in per-thread arenas and reuses them
    # poorly across tensor shapes; handing them back after each tensor keeps a host's footprint near its shards
    # plus one tensor in flight (measured, 2 processes x 4 CPU devices loading a 316 MB model: peak RSS growth
    # 0.64x of the checkpoint without this, 0.58x with it).
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def load_into(module: nnx.Module, folder: paths.PathLike, mapping: Mapping, *, dtype,
              place: Callable[[Path_, np.ndarray], jax.Array] | None = None, sharding: ShardingFn | None = None,
              strict: bool = True) -> nnx.Module:
    """Fill an (abstract or concrete) module's params from a checkpoint, one tensor at a time.

    sharding(path, shape): each param's layout; each process then reads only its own devices' rows (module
    docstring). place(path, host_array): the older hook, given each param whole on every process (e.g.
    `parallel.rules.rule_placer`; a stacked param is assembled on the host, then placed). Neither: the tensors
    are copied to the default device one at a time.
    """
    if place is not None and sharding is not None:
        raise ValueError("give place= or sharding= (mesh=), not both")
    dtype = np.dtype(dtype)
    graphdef, state = nnx.split(module)
    flat = dict(nnx.to_flat_state(state))
    reader = CheckpointReader(folder)
    try:
        expected = {m.hf for m in mapping}
        missing = [m.hf for m in mapping if m.hf not in reader]
        if missing:
            raise WeightsError(f"{folder}: checkpoint is missing tensor {missing[0]!r}"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        if strict:
            extra = [k for k in reader.keys() if k not in expected and not k.endswith(_IGNORED_SUFFIXES)
                     and not (k == "lm_head.weight" and "lm_head.weight" not in expected)]  # tied copies are harmless
            if extra:
                raise WeightsError(f"{folder}: unexpected tensor {extra[0]!r} for this model"
                                   + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
        for m in mapping:  # every shape before any read: a bad file fails in seconds
            if m.path not in flat:
                raise WeightsError(f"internal: no parameter at {'/'.join(map(str, m.path))} for tensor {m.hf!r}")
            want, got = tensor_shape(tuple(flat[m.path].shape), m), reader.shape(m.hf)
            if got != want:
                raise WeightsError(f"{folder}: tensor {m.hf!r} (in {reader.file_of(m.hf).name}) has shape {got}, "
                                   f"expected {want}")
        order = list(mapping)
        if sharding is not None:
            # Largest tensor first (a stack's layers together): a relayout's transient buffers (a few times the
            # tensor's share, on CPU devices in host RAM) and its program's compilation then come while the host
            # holds least, so they do not stack on top of a loaded model.
            order.sort(key=lambda m: (-int(np.prod(reader.shape(m.hf), dtype=np.int64)), m.path, m.layer or 0))
        stacks = StackedParams()
        done: set[Path_] = set()
        for m in order:
            var = flat[m.path]
            shape = tuple(var.shape)
            if sharding is not None:
                if m.path not in done:  # a stacked param: all its layers at once
                    names = m.hf if m.layer is None else [e.hf for e in sorted(
                        (e for e in mapping if e.path == m.path), key=lambda e: e.layer)]
                    var.set_value(_load_sharded(reader, names, m.transpose, dtype, sharding(m.path, shape)))
                    done.add(m.path)
                continue
            host = reader.get(m.hf).astype(dtype, copy=False)  # a private copy, converted once
            host = np.ascontiguousarray(host.T) if m.transpose else host
            if m.layer is None:
                var.set_value(jnp.asarray(host) if place is None else place(m.path, host))
            elif place is not None:  # the hook places whole params: the stack is assembled on the host
                stacks.put(m.path, shape, dtype, m.layer, host)
            else:
                stack = stacks.device(m.path, shape, dtype, None)
                stacks.set(m.path, _relayout(False, stack.sharding, True)(stack, host, jnp.int32(m.layer)))
                del stack
            del host
        for path, arr in stacks.arrays.items():
            flat[path].set_value(place(path, arr) if isinstance(arr, np.ndarray) else arr)
    finally:
        reader.close()
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def from_pretrained(path: paths.PathLike, *, dtype=jnp.float32, compute_dtype=None,
                    place: Callable[[Path_, np.ndarray], jax.Array] | None = None, mesh=None) -> Decoder:
    """Load an HF causal-LM folder (Gemma-2, Llama, Qwen2) or a `.gguf` file into a `Decoder`.

    dtype: the params' dtype; compute_dtype defaults to it. mesh: params land in the partition rules' layout on
    it, each process reading only its own devices' rows (a `.gguf` is read whole on every process). place: see
    `load_into`.
    """
    if paths.as_path(path).suffix == ".gguf":
        from spct_jax.models.gguf_import import from_gguf

        if mesh is not None and place is None:
            from spct_jax.parallel.rules import rule_placer

            place = rule_placer(mesh)
        return from_gguf(path, dtype=dtype, compute_dtype=compute_dtype, place=place)
    cfg = ModelConfig.from_hf_config(read_hf_config(path))
    abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0), dtype=compute_dtype or dtype, param_dtype=dtype))
    return load_into(abstract, path, lm_mapping(cfg), dtype=dtype, place=place,
                     sharding=None if mesh is None else rule_shardings(mesh))


# -- export -------------------------------------------------------------------------------------------------------
def spans_processes(module: nnx.Module) -> bool:
    """True when some param has shards on another process: exporting it is then a collective."""
    return any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in jax.tree.leaves(nnx.state(module)))


@functools.lru_cache(maxsize=None)
def _per_process_mesh(mesh) -> Mesh | None:
    """The mesh's devices as ("proc", "local"): one row per process (None when processes hold unequal counts)."""
    by_process: dict[int, list] = {}
    for d in mesh.devices.flat:
        by_process.setdefault(d.process_index, []).append(d)
    rows = [sorted(ds, key=lambda d: d.id) for _, ds in sorted(by_process.items())]
    if len({len(r) for r in rows}) != 1:
        return None
    return Mesh(np.array(rows), ("proc", "local"), axis_types=(AxisType.Auto,) * 2)


def _block_sharding(mesh, shape: tuple[int, ...]) -> NamedSharding:
    """Where one row block of an export goes: whole on every PROCESS, split over that process's devices (columns,
    else rows), so each host holds one copy of the block in all, not one per device, and process 0 assembles it
    from its own shards."""
    per = _per_process_mesh(mesh)
    if per is not None:
        local = per.shape["local"]
        if len(shape) > 1 and shape[1] % local == 0:
            return NamedSharding(per, P(None, "local"))
        if shape and shape[0] % local == 0:
            return NamedSharding(per, P("local"))
    return NamedSharding(mesh, P())


@functools.lru_cache(maxsize=None)
def _row_block(transpose: bool, start: int, stop: int, dtype: np.dtype, out: NamedSharding, stacked: bool):
    # Rows [start, stop) of the file orientation (of layer `l` of a stacked param), cast on device, laid out by
    # `_block_sharding`. Static bounds, a traced layer: XLA slices each shard locally before gathering
    # (memory_analysis: temporaries of one block, not the tensor), one program for every layer.
    def block(x, layer):
        if stacked:
            x = jax.lax.dynamic_index_in_dim(x, layer, 0, keepdims=False)
        return (x.T if transpose else x)[start:stop].astype(dtype)

    return jax.jit(block, out_shardings=out)


@jax.jit
def _layer_slice(x: jax.Array, layer: jax.Array) -> jax.Array:
    return jax.lax.dynamic_index_in_dim(x, layer, 0, keepdims=False)


def tensor_blocks(arr: jax.Array, transpose: bool, dtype, *, block_bytes: int = EXPORT_BLOCK_BYTES,
                  layer: int | None = None):
    """Consecutive row blocks of `arr` (of its slice `layer` when it is a stacked param; transposed: the file's
    [out, in]) in `dtype`, for `write_safetensors`.

    A host-local array: numpy blocks cut from one host copy of the tensor. An array spanning processes: a
    collective per block, which every process must drive in the same order; process 0 gets the blocks, the others
    None.
    """
    dtype = np.dtype(dtype)
    if not isinstance(arr, jax.Array) or arr.is_fully_addressable:
        if layer is not None:  # one layer to the host, not the stack
            arr = _layer_slice(arr, jnp.int32(layer)) if isinstance(arr, jax.Array) else arr[layer]
        host = np.asarray(jax.device_get(arr))
        host = host.T if transpose else host
        rows = max(1, block_bytes // max(1, host[:1].size * dtype.itemsize)) if host.ndim else 1
        for start in range(0, max(1, host.shape[0] if host.ndim else 1), rows):
            yield np.ascontiguousarray(host[start:start + rows] if host.ndim else host, dtype=dtype)
        return
    if not isinstance(arr.sharding, NamedSharding):
        raise TypeError(f"cannot export an array with {type(arr.sharding).__name__}; expected a NamedSharding")
    shape = tuple(arr.shape[1:] if layer is not None else arr.shape)
    shape = tuple(reversed(shape)) if transpose else shape
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    rows = max(1, block_bytes // max(1, row_bytes))
    for start in range(0, shape[0], rows):
        stop = min(shape[0], start + rows)
        out = _block_sharding(arr.sharding.mesh, (stop - start,) + shape[1:])
        block = _row_block(transpose, start, stop, dtype, out, layer is not None)(arr, jnp.int32(layer or 0))
        block.block_until_ready()
        if jax.process_index() == 0:
            host = np.empty(block.shape, dtype)
            for shard in block.addressable_shards:  # they tile the whole block on every process
                host[shard.index] = np.asarray(shard.data)
            del block
            yield host
        else:
            del block
            yield None
        _release_freed_host_memory()


def export_tensors(module: nnx.Module, mapping: Mapping, dtype) -> list[TensorItem]:
    flat = dict(nnx.to_flat_state(nnx.state(module)))
    out = []
    for m in mapping:
        var = flat[m.path]
        out.append((m.hf, tensor_shape(tuple(var.shape), m), np.dtype(dtype),
                    lambda var=var, m=m: tensor_blocks(var[...], m.transpose, dtype, layer=m.layer)))
    return out


def _any_process(flag: bool) -> bool:
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def write_checkpoint(folder: paths.PathLike, hf_config: dict[str, Any], tensors: list[TensorItem], *,
                     max_shard_bytes: int, collective: bool = False,
                     extra_files: Callable[[paths.Path], None] | None = None) -> None:
    """config.json plus one safetensors file, or shards and an index when larger than max_shard_bytes, published
    whole: built in `.NAME.partial` next to `folder`, then renamed (paths.commit_dir); on failure nothing is left.

    collective: every process calls this with the same tensors (some span processes); process 0 writes, all
    drive the block collectives, and all return after a barrier, or all raise. extra_files(tmp_folder) adds files
    (a tokenizer) before the folder is published.
    """
    from jax.experimental import multihost_utils

    folder = paths.as_path(folder)
    tmp = paths.temp_sibling(folder)
    writer = not collective or jax.process_index() == 0
    error: BaseException | None = None
    if writer:
        try:
            paths.rmtree(tmp)  # a killed earlier export
            tmp.mkdir(parents=True)
        except OSError as e:
            error = e
    shards: list[list[TensorItem]] = [[]]
    size = 0
    for t in tensors:
        nbytes = int(np.prod(t[1], dtype=np.int64)) * np.dtype(t[2]).itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    try:
        for name, shard in zip(names, shards):
            try:
                write_safetensors(tmp / name, shard, write=writer and error is None, atomic=False)
            except WriteFailed as e:  # drained: the other processes' collectives are done too
                error = e
        if writer and error is None:
            if len(shards) > 1:
                total = sum(int(np.prod(t[1], dtype=np.int64)) * np.dtype(t[2]).itemsize for t in tensors)
                weight_map = {t[0]: name for name, shard in zip(names, shards) for t in shard}
                (tmp / "model.safetensors.index.json").write_text(
                    json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
            (tmp / "config.json").write_text(json.dumps(hf_config, indent=1))
            if extra_files is not None:
                extra_files(tmp)
            paths.commit_dir(tmp, folder, last="config.json")
    except Exception as e:  # noqa: BLE001 - every process must hear of it below
        if not writer:
            raise
        error = e
    if writer and error is not None:
        try:
            paths.rmtree(tmp)
        except OSError:
            pass
    failed = _any_process(error is not None) if collective else error is not None
    if failed:
        if error is not None:
            raise error
        raise OSError(f"exporting {folder} failed on process 0 (see its log)")
    if collective and jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"spct export {folder}")


def lm_hf_config(cfg: ModelConfig, dtype) -> dict[str, Any]:
    """transformers' config.json of a causal LM with `cfg`, its weights stored in `dtype`."""
    hf_config = cfg.to_hf_config()
    hf_config["torch_dtype"] = {np.dtype(np.float32): "float32"}.get(np.dtype(dtype), "bfloat16")
    return hf_config


def save_pretrained(model: Decoder, path: paths.PathLike, *, dtype=np.float32,
                    max_shard_bytes: int = 5 * 1024**3,
                    extra_files: Callable[[paths.Path], None] | None = None) -> None:
    """Write `model` as an HF causal-LM folder that transformers and vLLM load.

    A model whose params span processes is written collectively: call it on every process (`write_checkpoint`).
    """
    cfg = model.config
    write_checkpoint(path, lm_hf_config(cfg, dtype), export_tensors(model, lm_mapping(cfg), dtype), max_shard_bytes=max_shard_bytes,
                     collective=spans_processes(model), extra_files=extra_files)


__all__ = ["ConfigError", "WeightsError", "TensorMap", "from_pretrained", "save_pretrained", "decoder_mapping",
           "layer_sharding", "load_into", "lm_hf_config", "lm_mapping", "rule_shardings", "staging_spec",
           "spans_processes", "tensor_blocks", "tensor_shape", "write_checkpoint"]
