"""A seconds-long CPU smoke run of `spct rft|grpo|metarm` with tiny-random on a 3-item RewardBench fixture.

The schema and every paper value are configs/base.py's; this file only shrinks steps, batches and lengths.
tiny-random writes garbage, so it is a test of the plumbing, not of learning: RFT accepts nothing (the SFT is then
skipped and the unchanged model saved), GRPO sees only -1 rewards (zero-variance groups: the update is the KL
term alone), and the meta RM sees only negative labels (AUC undefined, reported as null).

    spct rft    --config configs/tiny_cpu.py
    spct grpo   --config configs/tiny_cpu.py --config.model.init_checkpoint=runs/tiny_cpu/rft/model
    spct metarm --config configs/tiny_cpu.py
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

# Three pairwise items of the RewardBench (allenai/reward-bench) layout, in the repository, readable from any cwd.
FIXTURE = str(pathlib.Path(__file__).resolve().parents[1] / "tests/fixtures/data/formats/rewardbench.jsonl")


def get_config():
    config = base.make_config(
        name="tiny-cpu",
        # The preset only sizes `spct plan`; the weights are model.init_checkpoint's. The smallest real preset.
        model="smollm2-135m",
        accelerator_type="v5litepod-1",  # validate() needs a slice name; 1 chip = the one CPU device here
        data=1, fsdp=1, tensor=1,
        rollout_batch_prompts=1, inference_batch_prompts=1,
    )
    c = config
    c.run_dir = "runs/tiny_cpu"
    c.model.init_checkpoint = "tiny-random"  # seeded random llama with the byte tokenizer (vocab 263)
    c.model.compute_dtype = "float32"
    c.grpo.kv_dtype = "float32"  # validate(): the sampler's KV cache is in the compute dtype
    c.meta_rm.preset = "smollm2-135m"
    c.checkpoint.every = 1
    c.checkpoint.keep = 1

    # The byte tokenizer spells the paper's ~3,000-character template as ~3,900 tokens; tiny-random's positions
    # go to 4096, so every length is 4096 and generations are short.
    c.rft.batch_size, c.rft.steps, c.rft.n_rft, c.rft.max_seq_len, c.rft.data = 2, 1, 2, 4096, FIXTURE
    c.rft.max_new_tokens = 8

    c.grpo.batch_size, c.grpo.group_size, c.grpo.steps, c.grpo.data = 2, 2, 1, FIXTURE  # 1 prompt x G=2 per step
    c.grpo.max_prompt_len, c.grpo.max_new_tokens = 4080, 8

    c.metarm.batch_size, c.metarm.steps, c.metarm.n_rft, c.metarm.max_seq_len, c.metarm.data = 2, 1, 2, 4096, FIXTURE
    c.metarm.holdout_fraction = 0.34  # 1 of the 3 items is held out for AUC / accuracy

    c.inference.k, c.inference.k_meta = 2, 1
    c.inference.max_prompt_len, c.inference.max_new_tokens = 4080, 8
    validate(config)
    return config
