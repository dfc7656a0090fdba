"""What every run config shares: the paper's hyper-parameters, our defaults, and the validation run on load.

Not a config itself (it has no get_config). A config file loads it by path (configs/ is not a package, and
`spct` runs from an installed entry point, so `import configs` would not resolve):

    base = _load_base()
    def get_config():
        config = base.make_config(model="gemma2-27b", accelerator_type="v5p-64", ...)
        base.validate(config)
        return config
    validate = base.validate   # `spct` re-validates after --config.KEY=VALUE overrides

Sources. [P] = "Inference-Time Scaling for Generalist Reward Modeling" (arXiv 2504.02495 v3); section numbers are
the paper's, as quoted in shared/SPEC.md §2-§5. "ours" = the paper is silent and this is our choice.
"""
from __future__ import annotations

import ml_collections

from spct_jax.models.config import PRESETS
from spct_jax.parallel.mesh import MeshConfig, parse_accelerator

DTYPES = ("float32", "bfloat16")
HINTED_MODES = ("all", "unsolved", "none")  # spct_jax.train.rft.HINTED_MODES (not imported: keeps loading cheap)
REMAT = ("none", "full", "save_dots")  # spct_jax.models.transformer.REMAT_POLICIES (not imported: no JAX here)


def make_config(*, name: str, model: str, accelerator_type: str, data: int = 1, fsdp: int = -1, tensor: int = 1,
                rft_microbatches: int = 1, grpo_microbatches: int = 1, metarm_microbatches: int = 1,
                inference_batch_prompts: int = 8, rollout_batch_prompts: int = 128, sample_rows: int = 256,
                grpo_beta: float = 0.08) -> ml_collections.ConfigDict:
    """A full run config for one model on one slice; keyword arguments are what differs between the files."""
    c = ml_collections.ConfigDict()
    c.name = name  # ours: names logs and the default run dir
    c.run_dir = f"/mnt/spct/{name}"  # ours: placeholder; on multi-host a gcsfuse mount every worker shares (launch/README.md)
    c.seed = 0  # ours

    c.model = ml_collections.ConfigDict()
    c.model.preset = model  # [P] §2 / App. C.1: DeepSeek-GRM-27B starts from the pretrained Gemma-2-27B
    c.model.init_checkpoint = ""  # ours: HF folder (local or under the gcsfuse mount) of the base model; "" = random init (tests)
    c.model.param_dtype = "float32"  # ours: params are the fp32 master weights AdamW updates
    c.model.compute_dtype = "bfloat16"  # ours: matmuls in bf16 (kernels are cast per layer)
    c.model.remat = "full"  # ours: recompute each block in the backward pass (only block inputs are kept); "save_dots"
    #                         also keeps the weight matmuls' outputs (less recompute, more memory), "none" keeps all

    c.meta_rm = ml_collections.ConfigDict()
    c.meta_rm.preset = model  # [P] §5 / App. C.1: "The meta RM is trained on Gemma-2-27B" (same base as the GRM)
    c.meta_rm.init_checkpoint = ""  # ours: as model.init_checkpoint

    c.hardware = ml_collections.ConfigDict()
    c.hardware.accelerator_type = accelerator_type  # ours: gcloud's name, e.g. v5p-64 = 32 chips
    c.hardware.hbm_usable_fraction = 0.9  # ours: headroom for XLA's own buffers and fragmentation

    c.runtime = ml_collections.ConfigDict()  # ours: the stage commands' JAX runtime (spct_jax/parallel/compilation.py)
    c.runtime.compilation_cache = ""  # ours: persistent XLA compilation cache dir; "" = $SPCT_COMPILATION_CACHE, else
    #                                   run_dir/compilation_cache (survives pod restarts); "off" disables it
    c.runtime.compilation_cache_min_secs = 1.0  # ours: only programs compiling at least this long are cached (JAX's
    #                                             default; the tiny eager programs would only fill the directory)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = data  # ours: pure data parallel (params replicated) across this axis
    c.mesh.fsdp = fsdp  # ours: -1 = every remaining chip; params, grads and Adam moments are split over it
    c.mesh.tensor = tensor  # ours: heads / MLP width / vocab split over it

    c.optimizer = ml_collections.ConfigDict()  # AdamW: [P] names no optimizer; SPEC §9 suggests AdamW
    c.optimizer.b1 = 0.9  # ours
    c.optimizer.b2 = 0.95  # ours: the usual LLM fine-tuning value
    c.optimizer.eps = 1e-8  # ours
    c.optimizer.weight_decay = 0.0  # ours: [P] gives none
    c.optimizer.clip_norm = 1.0  # ours: global-norm clipping (SPEC §9)
    c.optimizer.warmup_steps = 0  # ours: [P] gives no schedule
    c.optimizer.schedule = "constant"  # ours: [P] gives no schedule

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 50  # ours: a 27B step is minutes; a spot preemption should lose little
    c.checkpoint.keep = 3  # ours
    c.checkpoint.log_every = 1  # ours

    c.rft = ml_collections.ConfigDict()
    c.rft.learning_rate = 5e-6  # [P] App. C.1
    c.rft.batch_size = 1024  # [P] App. C.1 (sequences per step)
    c.rft.steps = 900  # [P] App. C.1: "Both stages are trained for 900 steps"
    c.rft.n_rft = 3  # [P] §3.2 / App. C.1: N_RFT = 3 trajectories per item in rejective sampling
    c.rft.max_seq_len = 4096  # ours: [P] does not give it; GRM prompt + critique fit (SPEC §1.4: ~250-400 tokens out)
    c.rft.num_microbatches = rft_microbatches  # ours: gradient accumulation to bound activation memory
    c.rft.data = ""  # ours: path of the RFT data (local or under the gcsfuse mount)
    c.rft.hinted = "all"  # [P] §3.2 hinted sampling, one hinted sample per item: "all" (ours: our reading of the
    #                       paper, Table 4 ablates it as a full source), "unsolved" (only items no plain sample got
    #                       right) or "none" (Table 4's "w/o Hinted Sampling"); docs/paper-choices.md
    c.rft.temperature = 1.0  # ours: [P] gives no sampling temperature for rejective sampling
    c.rft.max_new_tokens = 1024  # ours: as grpo.max_new_tokens (both sample training trajectories)
    c.rft.general_data = ""  # ours: JSONL of general instruction data mixed into the SFT ([P] mixes 1070K); "" = none
    c.rft.sample_rows = sample_rows  # ours: rows per sampler call of rejective sampling (bounds its KV cache)
    c.rft.chunk_items = 512  # ours: items per chunk of rejective sampling written as it goes (a preemption loses
    #                           at most one chunk; a rerun resumes at the first unfinished one)

    c.grpo = ml_collections.ConfigDict()
    c.grpo.learning_rate = 4e-7  # [P] App. C.1
    c.grpo.batch_size = 512  # [P] App. C.1; read as rollouts per step = 128 prompts x G (ours: [P] is ambiguous)
    c.grpo.steps = 900  # [P] App. C.1
    c.grpo.group_size = 4  # [P] §3.2: G = 4
    c.grpo.beta = grpo_beta  # [P] App. C.1: 0.08 for 27B (grid {0, 0.01, 0.02, 0.08}); 0.002 was the 16B's value
    c.grpo.epsilon = 0.2  # ours: [P] uses "original GRPO" without a value; PPO / DeepSeekMath default
    c.grpo.max_prompt_len = 3072  # ours: GRM template (~700 tokens) + conversation + responses
    c.grpo.max_new_tokens = 1024  # ours: SPEC §1.4, Fig. 7: critiques are ~250-400 tokens; 1K is ample
    c.grpo.temperature = 1.0  # ours: [P] gives no rollout temperature
    c.grpo.logprob_rows = c.grpo.batch_size // grpo_microbatches  # ours: rows per reference log-prob call, as in
    #                                                                one micro-batch of the update (bounds its memory)
    c.grpo.rollout_batch_prompts = rollout_batch_prompts  # ours: prompts per sampler call (x G rows): bounds the KV
    c.grpo.num_microbatches = grpo_microbatches  # ours
    c.grpo.ref_dtype = "bfloat16"  # ours: the frozen reference (= the RFT checkpoint) only runs forward
    c.grpo.kv_dtype = "bfloat16"  # ours; must equal model.compute_dtype (the sampler's KV cache is in it)
    c.grpo.data = ""  # ours
    # [P] App. C.1: RL items whose 3 samples by a smaller GRM (DeepSeek-V2-Lite-Chat) are all correct are removed.
    c.grpo.filter_too_easy = True  # [P] App. C.1
    c.grpo.filter_samples = 3  # [P] App. C.1: "all generated rewards are correct for three times"
    c.grpo.filter_checkpoint = ""  # ours: the filtering GRM; "" = model.init_checkpoint (the paper used a smaller one)
    c.grpo.filter_rows = sample_rows  # ours: rows per sampler call of the filter (bounds its KV cache, as sample_rows)

    c.metarm = ml_collections.ConfigDict()
    c.metarm.learning_rate = 1e-5  # [P] App. C.1
    c.metarm.batch_size = 512  # [P] App. C.1
    c.metarm.steps = 900  # ours: [P] gives no step count; the same as RFT / RL
    c.metarm.n_rft = 3  # [P] App. C.1: DeepSeek-GRM-27B rejective sampling with N_RFT = 3 for meta-RM data
    c.metarm.max_seq_len = 4096  # ours: meta-RM template (query, responses, principles, critique)
    c.metarm.num_microbatches = metarm_microbatches  # ours
    c.metarm.data = ""  # ours
    c.metarm.holdout_fraction = 0.1  # ours: [P] reports no held-out split; a seeded fraction of the items
    c.metarm.sample_rows = sample_rows  # ours: rows per sampler call when sampling the guided GRM's trajectories
    c.metarm.chunk_items = 512  # ours: items per chunk of the guided GRM's sampling written as it goes (as rft's)
    # [P] §5 / App. C.1: "last_token", a scalar head on the last token fine-tuned by BCE. "likelihood" (ours): the
    # frozen LM's mean log-likelihood of a trajectory after the GRM's prompt, scale and bias fit by BCE
    # (grm/likelihood_meta_rm.py); what the CPU demo uses, where the paper's head ranks an item's samples at chance.
    c.metarm.head = "last_token"  # [P] §5 / App. C.1 (the comment above)

    c.inference = ml_collections.ConfigDict()
    c.inference.temperature = 0.5  # [P] App. D.1: "the temperature is set to 0.5" for inference-time scaling
    c.inference.k = 32  # [P] Table 4 / §5: Voting@32 and MetaRM@32
    c.inference.k_meta = 16  # [P] §5.1: k_meta = k / 2
    c.inference.max_prompt_len = 3072  # ours
    c.inference.max_new_tokens = 1024  # ours
    c.inference.batch_prompts = inference_batch_prompts  # ours: prompts sampled together (x k rows)
    c.inference.dtype = "bfloat16"  # ours: GRM and meta RM weights when only sampling / scoring
    return c


class ConfigValidationError(ValueError):
    """A run config with an impossible value; the message names the field."""


def validate(c: ml_collections.ConfigDict) -> None:
    """Raise ConfigValidationError naming the first bad field. Cheap: no JAX, no devices."""

    def need(ok: bool, field: str, why: str) -> None:
        if not ok:
            raise ConfigValidationError(f"config field {field!r}: {why}")

    need(bool(c.run_dir), "run_dir", "must be set (a path every worker shares on a multi-host slice, e.g. a gcsfuse mount)")
    for f in ("model", "meta_rm"):
        need(c[f].preset in PRESETS, f"{f}.preset", f"unknown {c[f].preset!r}; known: {sorted(PRESETS)}")
    for f in ("model.param_dtype", "model.compute_dtype", "grpo.ref_dtype", "grpo.kv_dtype", "inference.dtype"):
        section, key = f.split(".")
        need(c[section][key] in DTYPES, f, f"{c[section][key]!r} is not one of {DTYPES}")
    need(c.model.remat in REMAT, "model.remat", f"{c.model.remat!r} is not one of {REMAT}")
    need(c.grpo.kv_dtype == c.model.compute_dtype, "grpo.kv_dtype",
         f"{c.grpo.kv_dtype!r} differs from model.compute_dtype {c.model.compute_dtype!r}: the sampler keeps its KV "
         "cache in the model's compute dtype, so set both to the same value")
    try:
        accel = parse_accelerator(c.hardware.accelerator_type)
    except ValueError as e:
        raise ConfigValidationError(f"config field 'hardware.accelerator_type': {e}") from None
    need(0 < c.hardware.hbm_usable_fraction <= 1, "hardware.hbm_usable_fraction", "must be in (0, 1]")
    need(c.runtime.compilation_cache_min_secs >= 0, "runtime.compilation_cache_min_secs", "must be >= 0")
    try:
        data, fsdp, tensor = MeshConfig.from_mapping(c.mesh).resolve(accel.chips)
    except ValueError as e:
        raise ConfigValidationError(f"config field 'mesh' on {accel.name}: {e}") from None
    batch_ways = data * fsdp

    for stage in ("rft", "grpo", "metarm"):
        s = c[stage]
        need(s.learning_rate > 0, f"{stage}.learning_rate", "must be > 0")
        need(s.steps > 0, f"{stage}.steps", "must be > 0")
        need(s.num_microbatches >= 1, f"{stage}.num_microbatches", "must be >= 1")
        need(s.batch_size % (s.num_microbatches * batch_ways) == 0, f"{stage}.batch_size",
             f"{s.batch_size} rows must split into {s.num_microbatches} micro-batches over {batch_ways} "
             f"batch shards (mesh data x fsdp)")
    need(c.rft.n_rft >= 1 and c.metarm.n_rft >= 1, "rft.n_rft", "must be >= 1")
    need(c.rft.max_seq_len > 1 and c.metarm.max_seq_len > 1, "rft.max_seq_len", "must be > 1")
    need(c.rft.hinted in HINTED_MODES, "rft.hinted", f"{c.rft.hinted!r} is not one of {HINTED_MODES}")
    need(c.rft.temperature > 0, "rft.temperature", "rejective sampling must sample (> 0)")
    need(c.rft.max_new_tokens > 0, "rft.max_new_tokens", "must be > 0")
    need(c.grpo.filter_samples >= 1, "grpo.filter_samples", "must be >= 1")
    need(c.grpo.filter_rows >= 1, "grpo.filter_rows", "must be >= 1")
    need(0 <= c.metarm.holdout_fraction < 1, "metarm.holdout_fraction", "must be in [0, 1)")
    need(c.metarm.head in ("last_token", "likelihood"), "metarm.head", "must be 'last_token' or 'likelihood'")

    g = c.grpo
    need(g.group_size >= 2, "grpo.group_size", "GRPO needs >= 2 rollouts per prompt for a group baseline")
    need(g.batch_size % g.group_size == 0, "grpo.batch_size", f"must be a multiple of group_size {g.group_size}")
    need(g.beta >= 0, "grpo.beta", "must be >= 0")
    need(0 < g.epsilon < 1, "grpo.epsilon", "must be in (0, 1)")
    need(g.temperature > 0, "grpo.temperature", "rollouts must sample (> 0)")
    need(g.max_prompt_len > 0 and g.max_new_tokens > 0, "grpo.max_new_tokens", "lengths must be > 0")
    need(g.logprob_rows >= 1, "grpo.logprob_rows", "must be >= 1")
    if g.logprob_rows < g.batch_size:  # otherwise one call takes the whole batch
        need(g.batch_size % g.logprob_rows == 0 and g.logprob_rows % batch_ways == 0, "grpo.logprob_rows",
             f"{g.logprob_rows} rows must divide grpo.batch_size {g.batch_size} and split over {batch_ways} batch "
             "shards (mesh data x fsdp)")
    need(c.rft.sample_rows >= 1 and c.metarm.sample_rows >= 1, "rft.sample_rows", "must be >= 1")
    need(c.rft.chunk_items >= 1, "rft.chunk_items", "must be >= 1")
    need(c.metarm.chunk_items >= 1, "metarm.chunk_items", "must be >= 1")
    need(1 <= g.rollout_batch_prompts <= g.batch_size // g.group_size, "grpo.rollout_batch_prompts",
         f"must be in [1, batch_size / group_size = {g.batch_size // g.group_size}]")

    i = c.inference
    need(i.temperature >= 0, "inference.temperature", "must be >= 0")
    need(i.k >= 1, "inference.k", "must be >= 1")
    need(1 <= i.k_meta <= i.k, "inference.k_meta", f"must be in [1, k={i.k}]")
    need(i.batch_prompts >= 1, "inference.batch_prompts", "must be >= 1")
    need(i.max_prompt_len > 0 and i.max_new_tokens > 0, "inference.max_new_tokens", "lengths must be > 0")
    need(c.optimizer.schedule in ("constant", "cosine"), "optimizer.schedule", "must be 'constant' or 'cosine'")
    need(c.checkpoint.every >= 1, "checkpoint.every", "must be >= 1")
    need(c.checkpoint.keep >= 1, "checkpoint.keep", "must be >= 1")
    need(c.checkpoint.log_every >= 1, "checkpoint.log_every", "must be >= 1")
