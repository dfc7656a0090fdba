"""Gemma-2-27B on a v5p-64 (32 chips x 95 GB): the paper's DeepSeek-GRM-27B and its meta RM.

[P] trained it on 128 A100s (RFT 19.2 h, RL 15.6 h). Every hyper-parameter is in configs/base.py with its source;
this file only picks the model, the slice and the memory knobs. `spct plan --config configs/gemma2_27b_v5p.py`
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
        name="gemma2-27b-v5p-64",  # ours: names the logs and the default run_dir
        model="gemma2-27b",  # [P] §2: DeepSeek-GRM-27B is Gemma-2-27B (pretrained)
        accelerator_type="v5p-64",  # ours: 32 chips; `spct plan` shows the smallest slice that fits
        data=1, fsdp=-1, tensor=2,  # ours: fsdp 16 x tensor 2 (heads and MLP width over tensor): peak 55.0 GB per
        #                            chip; tensor=1 (fsdp 32) fits too, at 56.2 GB (`spct plan`)
        rft_microbatches=16,  # ours: 1024 rows / 16 row shards / 16 = 4 rows of 4096 tokens per shard per micro-batch
        grpo_microbatches=8,  # ours: 512 rollouts / 16 row shards / 8 = 4 rows per shard per micro-batch
        metarm_microbatches=8,  # ours: 512 / 16 / 8 = 4 rows per shard per micro-batch
        rollout_batch_prompts=32,  # ours: 4 sampler calls of 32 prompts x G = 128 rows (4 per chip)
        inference_batch_prompts=4,  # ours: 4 prompts x k=32 = 128 rows, 8 per row shard
        sample_rows=128,  # ours: rows per RFT / meta-RM sampler call (256 needs 27.8 GB of KV cache per chip)
        grpo_beta=0.08,  # [P] App. C.1: beta = 0.08 for DeepSeek-GRM-27B
    )
    validate(config)
    return config
