"""Gemma-2-9B on a v5p-16 (8 chips x 95 GB).

Every hyper-parameter is in configs/base.py with its source; this file only picks the model, the slice and the
memory knobs. `spct plan --config configs/gemma2_9b_v5p.py`
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
        name="gemma2-9b-v5p-16",  # ours: names the logs and the default run_dir
        model="gemma2-9b",  # ours: a mid-size Gemma-2 ([P] trains 27B; the recipe is size-independent)
        accelerator_type="v5p-16",  # ours: 8 chips; `spct plan` shows the smallest slice that fits
        data=1, fsdp=-1, tensor=1,  # ours: pure FSDP over all 8 chips
        rft_microbatches=64,  # ours: 1024 rows / 8 chips / 64 = 2 rows of 4096 tokens per chip per micro-batch
        grpo_microbatches=32,  # ours: 512 rollouts / 8 chips / 32 = 2 rows per chip per micro-batch
        metarm_microbatches=32,  # ours: 512 / 8 / 32 = 2 rows per chip per micro-batch
        rollout_batch_prompts=8,  # ours: 16 sampler calls of 8 prompts x G = 32 rows (4 per chip)
        inference_batch_prompts=1,  # ours: 1 prompt x k=32 = 32 rows, 4 per chip
        sample_rows=32,  # ours: rows per RFT / meta-RM sampler call (256 needs 101 GB of KV cache per chip)
        grpo_beta=0.08,  # [P] App. C.1: 0.08 is the 27B value; the paper tuned no 9B (0.002 was for 16B)
    )
    validate(config)
    return config
