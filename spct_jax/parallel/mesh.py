"""The device mesh (data, fsdp, tensor), the multi-host runtime, and per-host input feeding.

One program runs everywhere: a single CPU, 8 fake CPU devices, or every host of a TPU pod. Each host runs the
same Python process; `jax.distributed` connects them and GSPMD partitions every jitted step over a global `Mesh`:

    axis     what is split over it                         typical size
    data     the batch (params replicated: pure DP)         1 on one slice
    fsdp     the batch AND one dim of every matrix          most devices (ZeRO-3 style)
    tensor   heads / MLP width / vocab (Megatron style)     1-8, within a host's fast links

Axes are `AxisType.Auto`: jax 0.10's `jax.make_mesh` defaults to Explicit axes, under which plain GSPMD code fails
to trace ("Contracting dimensions are sharded ... specify out_sharding").
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES: tuple[str, str, str] = ("data", "fsdp", "tensor")
BATCH_AXES: tuple[str, str] = ("data", "fsdp")  # the batch is split over both: FSDP is data parallel too

# Environment variables for an explicit (GPU cluster / CPU test) multi-process setup.
ENV_COORDINATOR = "SPCT_COORDINATOR"  # host:port of process 0
ENV_NUM_PROCESSES = "SPCT_NUM_PROCESSES"
ENV_PROCESS_ID = "SPCT_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "SPCT_LOCAL_DEVICE_IDS"  # optional, comma separated (one process per GPU)


class MeshError(ValueError):
    """A mesh shape that cannot be built on the available devices; the message names the axis."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Axis sizes of the (data, fsdp, tensor) mesh. At most one may be -1: it takes the remaining devices."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def __post_init__(self):
        sizes = self.as_dict()
        for name, size in sizes.items():
            if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or (size < 1 and size != -1):
                raise MeshError(f"mesh axis {name!r}: size must be a positive int or -1, got {size!r}")
        fill = [n for n, s in sizes.items() if s == -1]
        if len(fill) > 1:
            raise MeshError(f"mesh axes {fill} are all -1; at most one axis may fill the remaining devices")

    def as_dict(self) -> dict[str, int]:
        return {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> "MeshConfig":
        unknown = set(m) - set(AXES)
        if unknown:
            raise MeshError(f"unknown mesh axes {sorted(unknown)}; the axes are {AXES}")
        return cls(**{k: int(v) for k, v in m.items()})

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """Concrete (data, fsdp, tensor) for `num_devices`; raises MeshError naming the axis that does not fit."""
        sizes = self.as_dict()
        fixed = int(np.prod([s for s in sizes.values() if s != -1]))
        fill = [n for n, s in sizes.items() if s == -1]
        if fill:
            if num_devices % fixed:
                raise MeshError(f"mesh axis {fill[0]!r}=-1: the other axes ({fixed} devices) do not divide "
                                f"the {num_devices} devices")
            sizes[fill[0]] = num_devices // fixed
        elif fixed != num_devices:
            raise MeshError(f"mesh {sizes} covers {fixed} devices but there are {num_devices}; "
                            "set one axis to -1 to fill the rest")
        return sizes["data"], sizes["fsdp"], sizes["tensor"]


# -- TPU slices ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Accelerator:
    family: str  # gcloud prefix: v5p, v5litepod, v4, v6e
    chips: int
    hbm_bytes: int  # per chip

    @property
    def name(self) -> str:
        return f"{self.family}-{self.chips * TPU_FAMILIES[self.family][1]}"

    @property
    def min_chips(self) -> int:
        """The smallest slice of this family, in chips."""
        return TPU_FAMILIES[self.family][2]


# family -> (HBM bytes per chip, gcloud's number per chip in "v5p-N" (TensorCores), smallest slice in chips).
# HBM from the Cloud TPU system-architecture pages (GB = 1e9, the conservative reading).
TPU_FAMILIES: dict[str, tuple[int, int, int]] = {
    "v5p": (95 * 10**9, 2, 4),
    "v5litepod": (16 * 10**9, 1, 1),
    "v4": (32 * 10**9, 2, 4),
    "v6e": (32 * 10**9, 1, 1),
}


def parse_accelerator(accelerator_type: str) -> Accelerator:
    """"v5p-64" -> 32 chips of 95 GB; "v5litepod-16" (or "v5e-16") -> 16 chips of 16 GB."""
    m = re.fullmatch(r"(v5p|v5litepod|v5e|v4|v6e)-(\d+)", accelerator_type)
    if not m:
        raise ValueError(f"unknown accelerator type {accelerator_type!r}; expected e.g. v5p-64, v5litepod-16, "
                         "v4-32, v6e-8")
    family = "v5litepod" if m.group(1) == "v5e" else m.group(1)
    hbm, per_chip, _ = TPU_FAMILIES[family]
    n = int(m.group(2))
    if n % per_chip:
        raise ValueError(f"{accelerator_type}: {family} slices count {per_chip} TensorCores per chip")
    return Accelerator(family, n // per_chip, hbm)


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types over `devices` (default: all devices of all hosts).

    jax.make_mesh orders devices by the physical topology (ICI rings on TPU), so the innermost axis, tensor,
    lands on the closest chips.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = cfg.resolve(len(devices))
    auto = jax.sharding.AxisType.Auto
    return jax.make_mesh(shape, AXES, axis_types=(auto,) * len(AXES), devices=devices)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh's axes that split the batch (those of BATCH_AXES it has)."""
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_shards(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (row) dim over ("data", "fsdp"), every other dim whole."""
    return NamedSharding(mesh, P(batch_axes(mesh)))


def host_local_to_global(batch: Any, mesh: Mesh) -> Any:
    """Assemble global [B, ...] arrays from each host's own rows: a pytree of [B / num_processes, ...] numpy arrays.

    Every host passes only the rows it loaded (its data-loader shard); no host ever holds the global batch.
    The local rows must be the global rows `HostFeed(mesh).rows(B)` names for this host: with `make_mesh`'s
    device order on CPU and GPU, host h holds rows h*b .. h*b + b-1 (b = local rows). On one host this is a
    plain device_put. Rows must divide evenly over the batch shards.
    """
    leaves = [np.asarray(x) for x in jax.tree.leaves(batch)]
    if not leaves or leaves[0].ndim == 0:
        raise ValueError("host_local_to_global: every batch field needs a leading row dim, got a scalar")
    return HostFeed(mesh).to_global(batch, leaves[0].shape[0] * jax.process_count())


@dataclasses.dataclass(frozen=True)
class HostFeed:
    """Per-host batch feeding: which rows of a global batch this process builds, and how they become global arrays.

    `batch_sharding` splits a [B, ...] batch into contiguous row blocks, one per batch shard. A process builds
    exactly the rows its own devices hold (`rows(B)`: ascending global row indices; a block held by several of
    its devices, replicas along "tensor", counted once), and `to_global` assembles every process's rows into
    [B, ...] arrays with `jax.make_array_from_process_local_data`. No process builds the whole batch. Every
    process must agree on the global batch (the same example indices, the same padded length); only the rows
    each one builds differ. Without a mesh there is one device: `rows` is every row and `to_global` returns the
    host batch unchanged.

        B = 8, mesh data=2 fsdp=2 tensor=2 over 2 processes x 4 devices (make_mesh's order):
        process 0 devices hold rows 0-1, 2-3 (each twice, along "tensor")  -> rows(8) = [0 1 2 3]
        process 1 devices hold rows 4-5, 6-7                               -> rows(8) = [4 5 6 7]
    """

    mesh: Mesh | None = None

    def rows(self, global_rows: int) -> np.ndarray:
        """[local rows] int64: the global row indices this process builds, ascending."""
        if self.mesh is None:
            return np.arange(global_rows)
        shards = batch_shards(self.mesh)
        if global_rows % shards:
            raise ValueError(f"a batch of {global_rows} rows does not split over the {shards} batch shards of "
                             f"mesh {dict(self.mesh.shape)}")
        index_map = batch_sharding(self.mesh).addressable_devices_indices_map((global_rows,))
        spans = sorted({(index[0].start or 0, global_rows if index[0].stop is None else index[0].stop)
                        for index in index_map.values()})
        # make_array_from_process_local_data reads the local rows as these blocks concatenated in this order.
        return np.concatenate([np.arange(start, stop) for start, stop in spans])

    def to_global(self, local: Any, global_rows: int) -> Any:
        """A pytree of [len(rows(global_rows)), ...] host arrays -> [global_rows, ...] arrays on the batch
        sharding (unchanged without a mesh)."""
        if self.mesh is None:
            return local
        sharding = batch_sharding(self.mesh)
        local_rows = len(self.rows(global_rows))

        def one(x: Any) -> jax.Array:
            x = np.asarray(x)
            if x.ndim == 0 or x.shape[0] != local_rows:
                raise ValueError(f"HostFeed.to_global: expected {local_rows} local rows of a {global_rows}-row "
                                 f"batch, got shape {x.shape}")
            return jax.make_array_from_process_local_data(sharding, x, (global_rows, *x.shape[1:]))

        return jax.tree.map(one, local)

# -- the multi-host runtime ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DistributedSetup:
    """How this process joins (or not) a multi-process JAX run.

    mode: "explicit" (coordinator/processes/id given), "auto" (jax.distributed.initialize() detects a TPU pod,
    SLURM or Open MPI job), "single" (one process; nothing to initialize).
    """

    mode: Literal["explicit", "auto", "single"]
    reason: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None


def _tpu_chips_on_pci() -> int:
    # Google's PCI vendor id on a device node = a TPU chip on this VM. Reading sysfs (as jax's own TPU detection
    # does) instead of asking a backend keeps this usable before jax.distributed.initialize, which must come first.
    chips = 0
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            chips += Path(vendor).read_text().strip() == "0x1ae0"
        except OSError:
            continue
    return chips


def resolve_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                        process_id: int | None = None, local_device_ids: Sequence[int] | None = None, *,
                        environ: Mapping[str, str] | None = None, tpu_chips: int | None = None) -> DistributedSetup:
    """Decide how to initialize, from arguments (flags) first, then SPCT_* variables, then the cluster.

    Explicit settings must be complete: a coordinator without a process id is an error, not a guess.
    `environ` and `tpu_chips` exist for tests.
    """
    env = os.environ if environ is None else environ
    coord = coordinator_address or env.get(ENV_COORDINATOR) or None
    n = num_processes if num_processes is not None else _int_env(env, ENV_NUM_PROCESSES)
    pid = process_id if process_id is not None else _int_env(env, ENV_PROCESS_ID)
    if local_device_ids is None and env.get(ENV_LOCAL_DEVICE_IDS):
        local_device_ids = [int(i) for i in env[ENV_LOCAL_DEVICE_IDS].split(",")]
    given = {"coordinator address": coord, "number of processes": n, "process id": pid}
    if any(v is not None for v in given.values()):
        missing = [name for name, v in given.items() if v is None]
        if missing:
            raise ValueError(f"incomplete multi-process setup: missing {', '.join(missing)} (flags, or "
                             f"{ENV_COORDINATOR} / {ENV_NUM_PROCESSES} / {ENV_PROCESS_ID})")
        if not 0 <= pid < n:
            raise ValueError(f"process id {pid} is outside [0, {n})")
        ids = None if local_device_ids is None else tuple(int(i) for i in local_device_ids)
        return DistributedSetup("explicit", "coordinator given", coord, n, pid, ids)

    chips = _tpu_chips_on_pci() if tpu_chips is None else tpu_chips
    if chips > 0 or env.get("TPU_WORKER_HOSTNAMES") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        # Cloud TPU VMs (single or multi host): jax finds the workers from the metadata server by itself.
        return DistributedSetup("auto", "Cloud TPU VM detected")
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return DistributedSetup("auto", "JAX_COORDINATOR_ADDRESS set")
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:
        return DistributedSetup("auto", "SLURM job with several tasks")
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return DistributedSetup("auto", "Open MPI job with several ranks")
    return DistributedSetup("single", "no coordinator and no cluster detected")


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, local_device_ids: Sequence[int] | None = None, *,
                           timeout_s: int = 300) -> DistributedSetup:
    """Join the multi-process run, before any other JAX call. Idempotent; a no-op for a single process.

    TPU VMs: no arguments needed (`launch/run.sh` passes none). GPU clusters and CPU tests: pass the coordinator
    (host:port of process 0), process count and this process's id, as arguments or SPCT_* variables.
    """
    setup = resolve_distributed(coordinator_address, num_processes, process_id, local_device_ids)
    if jax.distributed.is_initialized() or setup.mode == "single":
        return setup
    if setup.mode == "auto":
        jax.distributed.initialize(initialization_timeout=timeout_s)
    else:
        jax.distributed.initialize(coordinator_address=setup.coordinator_address,
                                   num_processes=setup.num_processes, process_id=setup.process_id,
                                   local_device_ids=setup.local_device_ids, initialization_timeout=timeout_s)
    return setup


__all__ = ["AXES", "BATCH_AXES", "MeshConfig", "MeshError", "Accelerator", "TPU_FAMILIES", "parse_accelerator",
           "make_mesh", "batch_axes", "batch_shards",
           "batch_sharding", "host_local_to_global", "HostFeed", "DistributedSetup", "resolve_distributed",
           "initialize_distributed", "ENV_COORDINATOR", "ENV_NUM_PROCESSES", "ENV_PROCESS_ID",
           "ENV_LOCAL_DEVICE_IDS"]
