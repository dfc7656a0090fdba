"""One judge loader and one runtime for the inference commands: `spct score`, `spct eval run`, `spct serve`.

    grm = load_judge("runs/x/grpo/model", meta_rm="runs/x/metarm/model", mesh=mesh, dtype="bfloat16")

`load_judge` returns a `GenerativeRewardModel` whose GRM and meta RM are loaded with the partition rules' layout on
`mesh` (each process reads only its own devices' rows: `models.registry.load_model(mesh=)`), in `dtype`. The meta
RM is either kind (`scorer.MetaRM`): the paper's scalar head with its own tokenizer when its folder ships one
(`ScalarMetaRM`), or a likelihood meta RM, whose LM is the GRM itself when both name the same checkpoint (loaded
once, not twice).

The commands share their flags and set-up (`add_runtime_args`, `parse_args`, `setup_runtime`):

    --mesh data=D,fsdp=F,tensor=T   axes left out are data=1, tensor=1, fsdp=-1 (-1: the remaining devices)
    --dtype float32|bfloat16        the weights and compute (bfloat16 on one CPU device: see below). Default:
                                    bfloat16 with a mesh (27B in float32 is 109 GB, more than a 95 GB v5p chip;
                                    bf16 is the checkpoints' own dtype), float32 on one device (bit-for-bit the
                                    results of earlier versions)
    --config FILE [--config.k=v]    a run config (configs/*.py): the mesh from `mesh`, the dtype, k, k_meta,
                                    temperature, max_new_tokens and items per call from `inference.*`, the seed
                                    from `seed`. A flag given on the command line wins over the config.

bfloat16 on one CPU device (no --mesh): the weights are bfloat16 and everything else float32; each matmul rounds
its activations to bfloat16 and accumulates in float32 (models.transformer.weight_dot), which XLA:CPU runs fast and
a TPU's float32 matmul computes anyway. A program in bfloat16 throughout prefills slower there than this mix,
and decodes slower from k = 8 samples up (docs/performance.md).

`setup_runtime` joins the multi-process run first (`parallel.mesh.initialize_distributed`: SPCT_* variables, or a
Cloud TPU VM found by itself; a no-op on one process), then builds the mesh. Several processes without `--mesh`
get one over every device (fsdp=-1): one device per process cannot hold rows split over hosts.

Errors are `JudgeError`s whose message is one line naming the flag and value; exit_code 2 for a command line that
names nothing usable (a `--model` typo, a mesh that does not fit the devices or the model's heads), 1 for a
checkpoint that exists but cannot be read.

They also share one rule for what an item may hold and how long its prompt may get, so `spct score` refuses what
`spct serve` answers 400 to: `check_context` / `check_strings` (a field that does not fit raises `FieldError`
naming it, e.g. "responses[2]"), and `prompt_budget` (a judgement's prompt may use the model's positions less
--max-new-tokens; `check_template_fits` refuses, before any weights load, settings where even the template's own
text does not fit, which would otherwise refuse every item).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from spct_jax.parallel.mesh import AXES, MeshConfig, MeshError

log = logging.getLogger("spct.judge")

DTYPES = ("float32", "bfloat16")
NAMED_MODELS = ("tiny-random", "smollm2-135m")  # models.registry.NAMED (not imported: that pulls in JAX)
ACCEPTED_MODEL = "a checkpoint folder (config.json + safetensors, local or gs://), a .gguf file, or " + \
    " / ".join(NAMED_MODELS)
ACCEPTED_META_RM = ("a meta RM folder: an HF sequence-classification checkpoint (config.json) or a likelihood meta "
                    "RM (likelihood_meta_rm.json)")
# flag dest -> the config field that fills it when the flag is not given (configs/base.py)
CONFIG_FIELDS: dict[str, str] = {
    "k": "inference.k", "k_meta": "inference.k_meta", "temperature": "inference.temperature",
    "max_new_tokens": "inference.max_new_tokens", "batch_items": "inference.batch_prompts",
    "dtype": "inference.dtype", "seed": "seed",
}


class JudgeError(ValueError):
    """A judge or runtime that cannot be set up; one line naming the flag. exit_code: 2 usage, 1 unreadable input."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


# -- flags ---------------------------------------------------------------------------------------------------------
def parse_mesh(text: str) -> MeshConfig:
    """"data=2,fsdp=-1,tensor=4" -> MeshConfig; axes left out keep MeshConfig's defaults (data=1, fsdp=-1,
    tensor=1). An argparse `type`: errors become `argparse.ArgumentTypeError`s naming the axis."""
    sizes: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, eq, value = part.partition("=")
        if not eq or name not in AXES:
            raise argparse.ArgumentTypeError(f"{part!r}: expected AXIS=SIZE with AXIS one of {', '.join(AXES)} "
                                             "(e.g. data=1,fsdp=-1,tensor=4)")
        if name in sizes:
            raise argparse.ArgumentTypeError(f"axis {name!r} given twice")
        try:
            sizes[name] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"axis {name!r}: size {value!r} is not an integer") from None
    if not sizes:
        raise argparse.ArgumentTypeError(f"{text!r}: name at least one axis, e.g. fsdp=-1")
    try:
        return MeshConfig.from_mapping(sizes)
    except MeshError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """--mesh, --dtype and --config (with --config.KEY=VALUE overrides, split off by `parse_args`)."""
    p.add_argument("--mesh", type=parse_mesh, default=None, metavar="data=D,fsdp=F,tensor=T",
                   help="shard the model over this device mesh (every device of every host; one axis may be -1). "
                        "Default: one device; on several processes fsdp over every device")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="weights and compute dtype; on one CPU device bfloat16 weights compute in float32 (default: "
                        "bfloat16 with a mesh, float32 on one device)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="run config (configs/*.py): mesh, inference.* (k, k_meta, temperature, max_new_tokens, "
                        "batch_prompts, dtype) and seed, for the flags not given; --config.KEY=VALUE overrides")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str], defaults: Mapping[str, Any]) -> argparse.Namespace:
    """Parse `argv`; fill every flag the user left out (those whose argparse default is None) from the `--config`
    file's field (CONFIG_FIELDS, and the mesh), else from `defaults`. Exits 2 (argparse's way) on a bad command line
    or config."""
    from spct_jax.config_files import load_config, split_overrides

    overrides, rest = split_overrides(argv)
    args = parser.parse_args(rest)
    if overrides and args.config is None:
        parser.error(f"{overrides[0]} needs --config FILE")
    if args.config is not None:
        try:
            config = load_config(args.config, overrides)
        except ValueError as e:  # ConfigFileError, the file's own validation error: both name the field
            parser.error(str(e))
        given = {dest for dest in CONFIG_FIELDS if getattr(args, dest, None) is not None}
        for dest, field in CONFIG_FIELDS.items():
            if not hasattr(args, dest) or dest in given:
                continue
            if dest == "k_meta" and (getattr(args, "meta_rm", None) is None or "k" in given):
                continue  # k_meta pairs with the config's k, and only means something with a meta RM
            section, _, key = field.rpartition(".")
            value = config[section][key] if section else config[key]
            setattr(args, dest, value)
        if args.mesh is None:
            try:
                args.mesh = MeshConfig.from_mapping(config.mesh)
            except MeshError as e:
                parser.error(f"config field 'mesh': {e}")
    for dest, value in defaults.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, value)
    return args


# -- items and prompts: one rule for `spct score` and `spct serve` -----------------------------------------------
class FieldError(ValueError):
    """An item field that does not fit; `field` names where (e.g. "responses[2]"), `message` what is wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_strings(value: Any, field: str, *, allow_empty_list: bool = False) -> list[str]:
    """A list of strings (a bare string is refused: it would be judged one character at a time)."""
    if not isinstance(value, list):
        raise FieldError(field, f"must be a list of strings, got {type(value).__name__}")
    if not value and not allow_empty_list:
        raise FieldError(field, "must not be empty")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise FieldError(f"{field}[{i}]", f"must be a string, got {type(v).__name__}")
    return value


def check_context(value: Any, field: str = "context") -> str | list[dict[str, str]]:
    """A string, or a non-empty list of {"role", "content"} turns (returned with only those two keys)."""
    from spct_jax.data.schema import VALID_ROLES

    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        for i, t in enumerate(value):
            if not isinstance(t, dict) or t.get("role") not in VALID_ROLES or not isinstance(t.get("content"), str):
                raise FieldError(f"{field}[{i}]", f"must be {{\"role\": one of {list(VALID_ROLES)}, \"content\": str}}")
        return [{"role": t["role"], "content": t["content"]} for t in value]
    raise FieldError(field, "must be a string or a non-empty list of {role, content} turns")


def prompt_budget(config, max_new_tokens: int, spec: Any) -> int:
    """The longest prompt a judgement may have: the model's positions less the --max-new-tokens it may write."""
    room = config.max_position_embeddings - max_new_tokens
    if room < 1:
        raise JudgeError(f"--max-new-tokens {max_new_tokens}: --model {str(spec)!r} has only "
                         f"{config.max_position_embeddings} positions, none left for a prompt")
    return room


def template_tokens(tokenizer, template: str) -> int:
    """Tokens of the template's own text around an empty item (the least any prompt of it takes)."""
    from spct_jax.grm.prompts import build_prompt

    text = build_prompt([{"role": "user", "content": ""}], [""] * (2 if template == "judge" else 1),
                        template=template)
    return len(tokenizer.encode_chat([{"role": "user", "content": text}]))


def check_template_fits(config, tokenizer, *, template: str, max_new_tokens: int, spec: Any) -> int:
    """prompt_budget, checked against the template: JudgeError (exit 2) when the template alone does not fit."""
    budget = prompt_budget(config, max_new_tokens, spec)
    try:
        bare = template_tokens(tokenizer, template)
    except ValueError as e:  # an unknown template name
        raise JudgeError(f"--template {template!r}: {e}") from None
    if bare > budget:
        raise JudgeError(f"--max-new-tokens {max_new_tokens} leaves prompts {budget} of the "
                         f"{config.max_position_embeddings} positions of --model {str(spec)!r}, but template "
                         f"{template!r} alone takes {bare} tokens, so every item would be refused; give "
                         f"--max-new-tokens below {config.max_position_embeddings - bare} (less the item's own "
                         "tokens) or a shorter --template")
    return budget


def prompt_too_long(tokens: int, budget: int, positions: int, max_new_tokens: int) -> str:
    return (f"the GRM prompt has {tokens} tokens, over the {budget} a prompt may have (the model's {positions} "
            f"positions less --max-new-tokens {max_new_tokens})")


def prompt_check(tokenizer, *, template: str, budget: int, positions: int,
                 max_new_tokens: int) -> Callable[[Any], None]:
    """check(item): ValueError (prompt_too_long) when the item's GRM prompt, responses in the order given, has more
    than `budget` tokens. Other orders can differ by a token or two with a BPE tokenizer; the scorer's own
    max_prompt_tokens check stays as the backstop."""
    from spct_jax.grm.trajectories import as_item, prompt_ids

    def check(item: Any) -> None:
        it = as_item(item)
        n = len(prompt_ids(tokenizer, it, range(it.num_responses), template=template))
        if n > budget:
            raise ValueError(prompt_too_long(n, budget, positions, max_new_tokens))

    return check


# -- runtime -------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where the judge runs: the mesh (None = one device), the dtype, and this process's place."""

    mesh: Any
    dtype: str
    process_index: int = 0
    process_count: int = 1

    @property
    def is_main(self) -> bool:
        return self.process_index == 0  # every process computes; process 0 writes

    def describe(self) -> str:
        where = "one device" if self.mesh is None else f"mesh {dict(self.mesh.shape)}"
        return f"process {self.process_index} of {self.process_count}, {where}, {self.dtype}"


def setup_runtime(mesh_config: MeshConfig | None, dtype: str | None, *, prog: str) -> Runtime:
    """Join the multi-process run (before any other JAX call), then build the mesh and settle the dtype."""
    from spct_jax.parallel.mesh import initialize_distributed

    try:
        setup = initialize_distributed()
    except ValueError as e:  # an incomplete SPCT_* set-up
        raise JudgeError(str(e)) from None
    import jax

    n = jax.device_count()
    if mesh_config is None and jax.process_count() > 1:
        mesh_config = MeshConfig()  # fsdp over every device: each process must hold its share, not the whole
        log.info("%s: %d processes and no --mesh: using %s", prog, jax.process_count(), mesh_config.as_dict())
    mesh = None if mesh_config is None else make_inference_mesh(mesh_config, n)
    if mesh is None and n > 1:
        print(f"{prog}: note: using 1 of {n} devices; --mesh fsdp=-1 (or data=,fsdp=,tensor=) uses them all",
              file=sys.stderr)
    runtime = Runtime(mesh=mesh, dtype=dtype or ("bfloat16" if mesh is not None else "float32"),
                      process_index=jax.process_index(), process_count=jax.process_count())
    log.info("%s: runtime %s (%s): %s", prog, setup.mode, setup.reason, runtime.describe())
    return runtime


def make_inference_mesh(cfg: MeshConfig, num_devices: int):
    """The (data, fsdp, tensor) mesh over every device; JudgeError naming the axis that does not fit."""
    from spct_jax.parallel.mesh import make_mesh

    for name, size in cfg.as_dict().items():
        if size != -1 and num_devices % size:
            raise JudgeError(f"--mesh {_mesh_text(cfg)}: axis {name!r} = {size} does not divide the {num_devices} "
                             "devices")
    try:
        return make_mesh(cfg)
    except MeshError as e:
        raise JudgeError(f"--mesh {_mesh_text(cfg)}: {e}") from None


def _mesh_text(cfg: MeshConfig) -> str:
    return ",".join(f"{k}={v}" for k, v in cfg.as_dict().items())


def check_heads(config, mesh, flag: str, value: Any) -> None:
    """The query heads must split over "tensor" (each shard computes whole heads); MLP width and vocabulary are
    checked by the partition rules as the weights load. KV heads that do not split (GQA) stay whole."""
    if mesh is None or "tensor" not in mesh.axis_names:
        return
    t = mesh.shape["tensor"]
    if config.num_heads % t:
        raise JudgeError(f"--mesh tensor={t}: {flag} {value!s}'s {config.num_heads} attention heads do not divide "
                         f"over axis 'tensor' ({t} ways); pick a tensor size that divides {config.num_heads}")


# -- loading -------------------------------------------------------------------------------------------------------
def describe(spec: Any, flag: str = "--model"):
    """(ModelConfig, tokenizer) of a `--model` value without reading its weights; JudgeError (exit 2) when it names
    nothing loadable."""
    from spct_jax import paths
    from spct_jax.models.registry import describe_model

    text = str(spec)
    if text not in NAMED_MODELS:
        path = paths.as_path(text)
        if not path.exists():
            raise JudgeError(f"{flag} {text!r}: no such file or folder; expected {ACCEPTED_MODEL}")
        if path.is_dir() and not (path / "config.json").exists():
            raise JudgeError(f"{flag} {text!r}: a folder without config.json; expected {ACCEPTED_MODEL}")
    try:
        return describe_model(spec)
    except (OSError, ValueError) as e:  # unknown architecture, bad config.json, no tokenizer, not a .gguf
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise JudgeError(f"{flag} {text!r}: {reason}; expected {ACCEPTED_MODEL}") from None


def _sharding_error(e: Exception, mesh, flag: str, value: Any) -> JudgeError:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    detail = lines[1] if len(lines) > 1 else lines[0]
    more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
    return JudgeError(f"--mesh {dict(mesh.shape)} does not fit {flag} {str(value)!r}: {detail}{more}")


def load_decoder(spec: Any, *, mesh=None, dtype: str = "float32", flag: str = "--model"):
    """(model, tokenizer) for a `--model` value, checked first (describe, heads), then loaded in `dtype`, each
    process reading its own devices' rows on `mesh`."""
    from spct_jax.models.registry import load_model
    from spct_jax.parallel.rules import ShardingRuleError

    config, _ = describe(spec, flag)
    check_heads(config, mesh, flag, spec)
    try:
        return load_model(spec, **_dtypes(dtype, mesh), mesh=mesh)
    except ShardingRuleError as e:
        raise _sharding_error(e, mesh, flag, spec) from None
    except (OSError, ValueError) as e:  # a checkpoint that exists but cannot be read (missing tensor, bad file)
        raise JudgeError(f"{flag} {str(spec)!r}: cannot be read: {str(e).splitlines()[0]}", exit_code=1) from None


def _dtypes(name: str, mesh=None) -> dict:
    """--dtype -> load_model's dtype (the weights) and compute_dtype: bfloat16 weights compute in float32 on one CPU
    device (module docstring), in bfloat16 elsewhere."""
    import jax
    import jax.numpy as jnp

    if name not in DTYPES:
        raise JudgeError(f"--dtype {name!r}: expected one of {', '.join(DTYPES)}")
    weights = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]
    # A mesh keeps its dtype whole, so that a pod rehearsed on fake CPU devices runs the TPU's program.
    one_cpu = mesh is None and jax.default_backend() == "cpu"
    return {"dtype": weights, "compute_dtype": jnp.float32 if one_cpu else weights}


def _same_checkpoint(a: Any, b: Any) -> bool:
    from spct_jax import paths

    return str(a) == str(b) or str(paths.as_path(str(a))) == str(paths.as_path(str(b)))


def load_meta_rm(folder: Any, *, mesh=None, dtype: str = "float32", grm: tuple[Any, Any] | None = None,
                 grm_spec: Any = None):
    """A `scorer.MetaRM` from `folder` (local or gs://):
    - a likelihood meta RM (`likelihood_meta_rm.json`): its LM loaded like the GRM, or the GRM itself (`grm`, the
      loaded (model, tokenizer) of `grm_spec`) when it names the same checkpoint;
    - an HF sequence-classification folder: a `ScalarMetaRM` reading with the folder's own tokenizer when it has
      tokenizer files, else the GRM's (a meta RM trained from the GRM's base shares its vocabulary)."""
    from spct_jax import paths
    from spct_jax.grm.likelihood_meta_rm import is_likelihood_meta_rm, load_likelihood_meta_rm
    from spct_jax.grm.scorer import ScalarMetaRM

    path = paths.as_path(str(folder))
    if not path.is_dir():
        raise JudgeError(f"--meta-rm {str(folder)!r}: not found; expected {ACCEPTED_META_RM}")
    if is_likelihood_meta_rm(path):
        def load(spec):
            if grm is not None and _same_checkpoint(spec, grm_spec):
                return grm
            return load_decoder(spec, mesh=mesh, dtype=dtype, flag=f"--meta-rm {folder}: its LM")

        try:
            return load_likelihood_meta_rm(path, load=load)
        except (OSError, ValueError, KeyError) as e:
            if isinstance(e, JudgeError):
                raise
            raise JudgeError(f"--meta-rm {str(folder)!r}: cannot be read: {str(e).splitlines()[0]}",
                             exit_code=1) from None
    if not (path / "config.json").is_file():
        raise JudgeError(f"--meta-rm {str(folder)!r}: holds neither config.json nor likelihood_meta_rm.json; "
                         f"expected {ACCEPTED_META_RM}")
    from spct_jax.models.config import ModelConfig
    from spct_jax.models.scalar_head import load_scalar_rm
    from spct_jax.models.weights import read_hf_config
    from spct_jax.parallel.rules import ShardingRuleError

    try:
        check_heads(ModelConfig.from_hf_config(read_hf_config(path)), mesh, "--meta-rm", folder)
        rm = load_scalar_rm(path, **_dtypes(dtype, mesh), mesh=mesh)
    except ShardingRuleError as e:
        raise _sharding_error(e, mesh, "--meta-rm", folder) from None
    except (OSError, ValueError) as e:
        if isinstance(e, JudgeError):
            raise
        raise JudgeError(f"--meta-rm {str(folder)!r}: cannot be read: {str(e).splitlines()[0]}", exit_code=1) from None
    if any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        _, tokenizer = describe(str(folder), "--meta-rm")
    elif grm is not None:
        tokenizer = grm[1]
    else:
        raise JudgeError(f"--meta-rm {str(folder)!r}: has no tokenizer files and no GRM tokenizer was given")
    return ScalarMetaRM(rm, tokenizer)


def load_judge(model: Any, meta_rm: Any = None, *, mesh=None, dtype: str = "float32", template: str = "default",
               max_prompt_tokens: int | None = None):
    """The `GenerativeRewardModel` of `spct score`, `spct eval run` and `spct serve` (module docstring). Every
    process of a multi-host run calls it with the same arguments."""
    from spct_jax.grm.scorer import GenerativeRewardModel

    grm_model, tokenizer = load_decoder(model, mesh=mesh, dtype=dtype)
    meta = None if meta_rm is None else load_meta_rm(meta_rm, mesh=mesh, dtype=dtype, grm=(grm_model, tokenizer),
                                                     grm_spec=model)
    return GenerativeRewardModel(grm_model, tokenizer, meta_rm=meta, template=template,
                                 max_prompt_tokens=max_prompt_tokens, mesh=mesh)


__all__ = ["ACCEPTED_MODEL", "CONFIG_FIELDS", "DTYPES", "FieldError", "JudgeError", "Runtime", "add_runtime_args",
           "check_context", "check_heads", "check_strings", "check_template_fits", "describe", "load_decoder",
           "load_judge", "load_meta_rm", "make_inference_mesh", "parse_args", "parse_mesh", "prompt_budget",
           "prompt_check", "prompt_too_long", "setup_runtime", "template_tokens"]
