"""Gemma-2-2B on a v5e-16 (v5litepod-16: 16 chips x 16 GB): the small model, for shakedown runs.

Every hyper-parameter is in configs/base.py with its source; this file only picks the model, the slice and the
memory knobs. `spct plan --config configs/gemma2_2b_v5e.py`
prints the per-device memory table.
"""
import importlib.util
import pathlib


def _load_base():
    # configs/ is not a package and `spct` runs from an entry point: load the sibling file by path.
    spec = importlib.util.spec_from_file_location("spct_configs_base", pathlib.Path(__file__).with_name("base.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


base = _load_base()
validate = base.validate


def get_config():
    config = base.make_config(
        name="gemma2-2b-v5e-16",  # ours: names the logs and the default run_dir
        model="gemma2-2b",  # ours: the small Gemma-2 ([P] trains 27B; the recipe is size-independent)
        accelerator_type="v5litepod-16",  # ours: 16 chips (GRPO does not fit 8 x 16 GB at 4K tokens per row)
        data=1, fsdp=-1, tensor=1,  # ours: pure FSDP over all 16 chips
        rft_microbatches=64,  # ours: 1024 rows / 16 chips / 64 = 1 row of 4096 tokens per chip per micro-batch
        grpo_microbatches=32,  # ours: 512 rollouts / 16 chips / 32 = 1 row per chip per micro-batch
        metarm_microbatches=32,  # ours: 512 / 16 / 32 = 1 row per chip per micro-batch
        rollout_batch_prompts=16,  # ours: 8 sampler calls of 16 prompts x G = 64 rows (4 per chip)
        inference_batch_prompts=2,  # ours: 2 prompts x k=32 = 64 rows, 4 per chip
        sample_rows=64,  # ours: rows per RFT / meta-RM sampler call (256 needs 15.7 GB of KV cache per chip)
        grpo_beta=0.08,  # [P] App. C.1: 0.08 is the 27B value; the paper tuned no 2B (0.002 was for 16B)
    )
    validate(config)
    return config
