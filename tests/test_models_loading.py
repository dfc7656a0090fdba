"""Sharded loading: each process reads only its share, params land in the rules' layout, bad files are named.

The multi-process checks run this file as a script in fresh processes (`worker`), 2 processes x 4 fake CPU
devices on 127.0.0.1 as in test_parallel_multiprocess.py, each under a timeout.

What the memory figure measures: the kernel's peak resident set (VmHWM) is reset to the current RSS just before
the load (5 -> /proc/self/clear_refs), so VmHWM after it minus VmRSS before is the load's own peak growth,
transients included. Fake CPU devices keep their buffers in host RAM, so the growth includes the process's half of
the model (0.5x the checkpoint) plus XLA's compile state and the relayout temporaries. Reads go through pread, not
a memory map, so file pages sit in the page cache, not in the process's RSS; `rchar` (/proc/self/io) counts the
bytes the process read.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# A random Llama-shaped model of 316 MB in float32: twelve layers, so no single tensor dominates (the largest, the
# embedding and the untied head, are 3.3% each; Gemma-2-27B's embedding is 4.4% of it).
BIG = dict(family="llama", vocab_size=4096, hidden_size=640, intermediate_size=2560, num_layers=12, num_heads=10,
           num_kv_heads=5, head_dim=64, tie_embeddings=False)


def write_random_checkpoint(folder, cfg, *, seed=0, dtype=np.float32, max_shard_bytes=64 << 20, scalar_rm=False):
    """An HF folder of random weights for `cfg`, written tensor by tensor with our own writer (plus a tokenizer)."""
    from flax import nnx

    from spct_jax.models.scalar_head import ScalarRM, scalar_rm_mapping
    from spct_jax.models.transformer import Decoder
    from spct_jax.models.weights import lm_mapping, tensor_shape, write_checkpoint
    from spct_jax.tokenizers.save import byte_tokenizer_json

    build = (lambda: ScalarRM(cfg, rngs=nnx.Rngs(0))) if scalar_rm else (lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    abstract = nnx.eval_shape(build)
    flat = dict(nnx.to_flat_state(nnx.state(abstract)))
    mapping = scalar_rm_mapping(cfg) if scalar_rm else lm_mapping(cfg)
    rng = np.random.default_rng(seed)
    tensors = []
    for m in mapping:
        shape = tensor_shape(tuple(flat[m.path].shape), m)
        tensors.append((m.hf, shape, np.dtype(dtype),
                        lambda shape=shape: (rng.standard_normal(shape, np.float32) * 0.05).astype(dtype)))
    hf_config = cfg.to_hf_config()
    if scalar_rm:
        hf_config.update(architectures=["LlamaForSequenceClassification"], id2label={"0": "LABEL_0"})

    def tokenizer(dest):
        byte_tokenizer_json().save(str(dest / "tokenizer.json"))
        (dest / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>", "pad_token": "<pad>"}))

    write_checkpoint(folder, hf_config, tensors, max_shard_bytes=max_shard_bytes, extra_files=tokenizer)
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))


# -- the worker (a fresh process) ------------------------------------------------------------------------------------
def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1]) * 1024


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def worker(folder: str, out_path: str, mode: str, export_to: str = "") -> None:
    """mode "single": one device, no mesh (the reference); "mesh": `load_model(dir, mesh=...)` on an fsdp mesh
    over both processes; "mesh-bf16": the same with dtype=bfloat16; "place": the older
    `load_model(dir, place=rule_placer(mesh))`, kept for the before/after figures. export_to: after the
    measured load ("mesh"), export the model there with `save_model` and measure that too."""
    from spct_jax.parallel.mesh import MeshConfig, initialize_distributed, make_mesh

    initialize_distributed()  # SPCT_* variables, or one process
    import hashlib

    import jax
    from flax import nnx
    from jax.experimental import multihost_utils

    from spct_jax.models.registry import load_model
    from spct_jax.parallel.rules import named_leaves, param_shardings, rule_placer

    mesh = None if mode == "single" else make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1))
    jax.block_until_ready(jax.numpy.zeros(8) + 1)  # the backend is up before the baseline is taken
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    rss0, rchar0 = _status("VmRSS"), _rchar()
    if mode == "place":
        model, tokenizer = load_model(folder, place=rule_placer(mesh))
    else:
        model, tokenizer = load_model(folder, mesh=mesh,
                                      dtype=jax.numpy.bfloat16 if mode == "mesh-bf16" else jax.numpy.float32)
    jax.block_until_ready(nnx.state(model))
    report = {"process": jax.process_index(), "peak_growth": _status("VmHWM") - rss0, "rchar": _rchar() - rchar0}
    if mode == "mesh" and export_to:  # then write it back out: the export's own peak, measured the same way
        import ctypes

        from spct_jax.train.stage_common import save_model

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # the load's freed slack is not the export's to reuse
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss0 = _status("VmRSS")
        save_model(model, tokenizer, folder, export_to, "float32")
        report["export_peak_growth"] = _status("VmHWM") - rss0

    state = nnx.state(model, nnx.Param)
    digests = {}
    for name, leaf in named_leaves(state):  # one param at a time, after the measurement
        host = np.asarray(multihost_utils.process_allgather(leaf, tiled=True) if mesh is not None else leaf)
        digests[name] = hashlib.sha1(host.tobytes()).hexdigest()
    report["digests"] = digests
    if mesh is not None:
        want = dict(named_leaves(param_shardings(mesh, state)))
        report["wrong_shardings"] = [n for n, leaf in named_leaves(state) if leaf.sharding != want[n]]
    ids = np.random.default_rng(0).integers(3, model.config.vocab_size, (2, 7)).astype(np.int32)
    graphdef, params = nnx.split(model)
    logits = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))(params, ids)
    if mesh is not None:
        logits = multihost_utils.process_allgather(logits, tiled=True)
    report["logits"] = np.asarray(logits).tolist()
    with open(f"{out_path}.{jax.process_index()}.json", "w") as f:
        json.dump(report, f)
    print("WORKER_DONE", jax.process_index(), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPCT_")}
    return {**env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, **extra}


def run_workers(folder, out, mode: str, timeout: float = 120, export_to: str = "") -> list[dict]:
    """Two processes (or one for "single"); every one must exit 0 within `timeout`; -> their reports."""
    port, n = _free_port(), 1 if mode == "single" else 2
    procs = []
    for pid in range(n):
        extra = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"} if n == 1 else {
            "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "SPCT_COORDINATOR": f"127.0.0.1:{port}",
            "SPCT_NUM_PROCESSES": "2", "SPCT_PROCESS_ID": str(pid)}
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), str(folder), str(out), mode,
                                       str(export_to)],
                                      cwd=ROOT, env=_env(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout))
    finally:
        for p in procs:  # a hung collective must not outlive the test
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (o, e) in zip(procs, outputs):
        assert p.returncode == 0, o[-2000:] + e[-4000:]
    reports = []
    for pid in range(n):
        with open(f"{out}.{pid}.json") as f:
            reports.append(json.load(f))
    return reports


@pytest.mark.timeout(180)
def test_two_processes_each_read_their_share_and_match_one_process(tmp_path):
    """fsdp=8 over 2 processes x 4 devices: each process reads half the bytes, its peak RSS grows by <= 0.65x the
    checkpoint (before this loader: 1.62-1.64x, see docs/training-on-tpu.md), every param carries the rules'
    sharding, and params (bit for bit) and logits equal the one-process load. Exporting the sharded model back
    (`save_model`) grows each process's RSS by <= 0.25x and writes the checkpoint's exact tensors."""
    from spct_jax.models.config import ModelConfig

    size = write_random_checkpoint(tmp_path / "ckpt", ModelConfig(**BIG))
    assert size >= 200e6
    ref = run_workers(tmp_path / "ckpt", tmp_path / "single", "single")[0]
    reports = run_workers(tmp_path / "ckpt", tmp_path / "mesh", "mesh", export_to=tmp_path / "export")
    for r in reports:
        print(f"process {r['process']}: peak RSS growth {r['peak_growth'] / size:.3f}x, read "
              f"{r['rchar'] / size:.3f}x of the {size / 1e6:.0f} MB checkpoint; exporting it: peak RSS growth "
              f"{r['export_peak_growth'] / size:.3f}x")
        assert r["wrong_shardings"] == []
        assert r["rchar"] <= 0.51 * size, r["rchar"] / size  # its half, plus file headers and small norms
        assert r["peak_growth"] <= 0.65 * size, r["peak_growth"] / size
        # No gather: far below the half each host holds (before: every host gathered the whole, 1.5-1.7x).
        assert r["export_peak_growth"] <= 0.25 * size, r["export_peak_growth"] / size
        assert r["digests"] == ref["digests"]
        np.testing.assert_allclose(np.asarray(r["logits"]), np.asarray(ref["logits"]), rtol=1e-5, atol=1e-5)
    from spct_jax.models.safetensors_io import CheckpointReader

    src, out = CheckpointReader(tmp_path / "ckpt"), CheckpointReader(tmp_path / "export")
    assert sorted(src.keys()) == sorted(out.keys())
    assert all(np.array_equal(src.get(k), out.get(k)) for k in src.keys())  # the export is the checkpoint


# -- layouts and dtypes on 8 fake devices, in one fresh process ------------------------------------------------------
LAYOUT_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, ml_dtypes, numpy as np
from flax import nnx
from spct_jax.models import safetensors_io
from spct_jax.models.registry import load_model
from spct_jax.models.scalar_head import load_scalar_rm
from spct_jax.parallel import MeshConfig, make_mesh
from spct_jax.parallel.rules import named_leaves, param_shardings

assert jax.device_count() == 8
out = {}
reads = []  # (matrix, rows read, rows of the matrix)
orig = safetensors_io.SafetensorsFile.read_rows
def spy(self, name, start=0, stop=None):
    block = orig(self, name, start, stop)
    if len(self.shape(name)) == 2:  # matrices (vectors are norms, replicated: every device reads them whole)
        reads.append((name, block.shape[0], self.shape(name)[0]))
    return block
safetensors_io.SafetensorsFile.read_rows = spy
for name, folder, kind, mesh_cfg in json.loads(sys.argv[1]):
    mesh = make_mesh(MeshConfig(**mesh_cfg))
    res = {}
    for dtype in ("float32", "bfloat16"):
        dt = jnp.float32 if dtype == "float32" else jnp.bfloat16
        ref = load_model(folder, dtype=dt)[0] if kind == "lm" else load_scalar_rm(folder, dtype=dt)
        reads.clear()  # from here: the sharded load's reads
        got = load_model(folder, dtype=dt, mesh=mesh)[0] if kind == "lm" else load_scalar_rm(folder, dtype=dt, mesh=mesh)
        state = nnx.state(got, nnx.Param)
        want = dict(named_leaves(param_shardings(mesh, state)))
        ref_leaves = dict(named_leaves(nnx.state(ref, nnx.Param)))
        res[dtype] = {
            "wrong_sharding": [n for n, x in named_leaves(state) if x.sharding != want[n]],
            "wrong_dtype": [n for n, x in named_leaves(state) if x.dtype != np.dtype(dt)],
            "unequal": [n for n, x in named_leaves(state)
                        if not np.array_equal(np.asarray(x).view(np.uint8), np.asarray(ref_leaves[n]).view(np.uint8))],
            "split": sorted({str(x.sharding.spec) for _, x in named_leaves(state)}),
            "largest_read_fraction": max(r / n for _, r, n in reads if n >= 8),  # the score head [1, D]: 1 row
        }
    out[name] = res
print("RESULT" + json.dumps(out))
"""


@pytest.mark.timeout(180)
def test_every_loaded_param_has_the_rules_sharding_on_8_devices(tmp_path):
    """Gemma-2 (tied), Qwen2 (q/k/v biases) and the meta RM, on meshes with tensor and data axes: every param
    carries the NamedSharding `param_shardings` assigns, equals the one-device load bit for bit, in float32 and
    in bfloat16 (converted slice by slice), and no read is bigger than one device's slice."""
    import ml_dtypes

    from spct_jax.models.config import ModelConfig

    small = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                 head_dim=16)
    gemma = ModelConfig(family="gemma2", query_pre_attn_scalar=16, attn_logit_softcap=50.0,
                        final_logit_softcap=30.0, sliding_window=8, **small)
    qwen = ModelConfig(family="qwen2", qkv_bias=True, tie_embeddings=False, **small)
    write_random_checkpoint(tmp_path / "gemma", gemma)
    write_random_checkpoint(tmp_path / "qwen", qwen, dtype=ml_dtypes.bfloat16)  # as checkpoints ship
    write_random_checkpoint(tmp_path / "rm", ModelConfig(family="llama", **small), scalar_rm=True)
    cases = [("gemma", str(tmp_path / "gemma"), "lm", {"data": 1, "fsdp": 4, "tensor": 2}),
             ("qwen", str(tmp_path / "qwen"), "lm", {"data": 2, "fsdp": 2, "tensor": 2}),
             ("rm", str(tmp_path / "rm"), "rm", {"data": 1, "fsdp": 8, "tensor": 1})]
    proc = subprocess.run([sys.executable, "-c", LAYOUT_SCRIPT, json.dumps(cases)], cwd=ROOT, capture_output=True,
                          text=True, timeout=150, env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # The staging layout's axis order lets XLA reshard with collectives, never by a whole copy on every device.
    assert "Involuntary full rematerialization" not in proc.stderr, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    for name, per_dtype in result.items():
        for dtype, r in per_dtype.items():
            print(name, dtype, r["split"], f"largest read {r['largest_read_fraction']:.3f} of a tensor")
            assert r["wrong_sharding"] == [] and r["wrong_dtype"] == [] and r["unequal"] == [], (name, dtype, r)
            assert len(r["split"]) > 1  # the rules really split something
            # No read is bigger than one device's slice of the target (params are replicated over "data").
            mesh = next(c[3] for c in cases if c[0] == name)
            assert r["largest_read_fraction"] <= 1 / (mesh["fsdp"] * mesh["tensor"]) + 1e-9, (name, dtype, r)


# -- bad input ---------------------------------------------------------------------------------------------------
TINY = dict(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=8, tie_embeddings=False)


def test_a_shape_that_disagrees_with_the_config_is_named(tmp_path):
    from spct_jax.models.config import ModelConfig
    from spct_jax.models.weights import WeightsError, from_pretrained

    cfg = ModelConfig(**TINY)
    write_random_checkpoint(tmp_path / "m", cfg)
    hf = json.loads((tmp_path / "m" / "config.json").read_text())
    hf["intermediate_size"] = 48  # the file's MLP tensors are 64 wide
    (tmp_path / "m" / "config.json").write_text(json.dumps(hf))
    with pytest.raises(WeightsError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight.*\(64, 32\).*\(48, 32\)"):
        from_pretrained(tmp_path / "m")


def test_a_missing_shard_file_is_named(tmp_path):
    from spct_jax.models.config import ModelConfig
    from spct_jax.models.registry import load_model

    write_random_checkpoint(tmp_path / "m", ModelConfig(**TINY), max_shard_bytes=20_000)
    shards = sorted(f for f in os.listdir(tmp_path / "m") if f.endswith(".safetensors"))
    assert len(shards) > 2
    os.remove(tmp_path / "m" / shards[1])
    with pytest.raises(FileNotFoundError, match=f"{shards[1]}.*missing"):
        load_model(tmp_path / "m")


def test_a_truncated_file_is_named(tmp_path):
    from spct_jax.models.config import ModelConfig
    from spct_jax.models.safetensors_io import SafetensorsError
    from spct_jax.models.weights import from_pretrained

    write_random_checkpoint(tmp_path / "m", ModelConfig(**TINY))
    path = tmp_path / "m" / "model.safetensors"
    os.truncate(path, os.path.getsize(path) - 100)
    with pytest.raises(SafetensorsError, match=r"model\.safetensors: truncated: tensor 'lm_head\.weight' ends at byte"):
        from_pretrained(tmp_path / "m")


def test_place_and_mesh_are_exclusive_and_place_still_works(tmp_path):
    import jax
    import ml_dtypes
    from flax import nnx

    from spct_jax.models.config import ModelConfig
    from spct_jax.models.registry import load_model

    write_random_checkpoint(tmp_path / "m", ModelConfig(**TINY))
    seen = []

    def place(path, host):
        seen.append((path, host.dtype))
        return jax.device_put(host)

    model, _ = load_model(tmp_path / "m", place=place, dtype=ml_dtypes.bfloat16)
    assert len(seen) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert {d for _, d in seen} == {np.dtype(ml_dtypes.bfloat16)}
    with pytest.raises(ValueError, match="mesh= or place="):
        load_model(tmp_path / "m", place=place, mesh=object())


if __name__ == "__main__":
    worker(*sys.argv[1:5])
