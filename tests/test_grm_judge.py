"""The judge loader (grm/judge.py) and the meta-RM interface (scorer.MetaRM): flags and configs, which meta RM and
tokenizer a folder gives, the GRM shared with a likelihood meta RM, and any object with scores(items, trajectories)
serving as a meta RM."""
from __future__ import annotations

import argparse
import json

import jax.numpy as jnp
import numpy as np
import pytest

from spct_jax.grm.judge import JudgeError, add_runtime_args, load_judge, parse_args, parse_mesh
from spct_jax.grm.scorer import GenerativeRewardModel, MetaRM, ScalarMetaRM
from spct_jax.parallel.mesh import MeshConfig

ITEMS = [{"context": "What is 2+2?", "responses": ["4", "5"], "uid": "a"},
         {"context": "Say hi", "responses": ["hello", "bye", "hi"], "uid": "b"}]
TINY_CONFIG = "configs/tiny_cpu.py"


def test_parse_mesh():
    assert parse_mesh("fsdp=8") == MeshConfig(data=1, fsdp=8, tensor=1)
    assert parse_mesh("data=2, fsdp=-1,tensor=4") == MeshConfig(data=2, fsdp=-1, tensor=4)
    assert parse_mesh("tensor=4") == MeshConfig(data=1, fsdp=-1, tensor=4)  # fsdp fills the rest
    for bad, message in [("model=2", "AXIS one of data, fsdp, tensor"), ("fsdp=x", "'fsdp': size 'x'"),
                         ("fsdp=2,fsdp=4", "given twice"), ("fsdp=-1,tensor=-1", "at most one axis"),
                         ("fsdp=0", "positive int or -1"), ("", "name at least one axis")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse_mesh(bad)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    p.add_argument("--meta-rm", default=None)
    for flag in ("--k", "--k-meta", "--max-new-tokens", "--batch-items", "--seed"):
        p.add_argument(flag, type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    add_runtime_args(p)
    return p


def test_config_fills_the_flags_not_given_and_flags_win(monkeypatch):
    from spct_jax.config_files import load_config

    monkeypatch.chdir(__import__("pathlib").Path(__file__).resolve().parents[1])
    c = load_config(TINY_CONFIG)
    defaults = {"k": 1, "max_new_tokens": 512, "batch_items": 8, "seed": 0}
    args = parse_args(_parser(), ["--config", TINY_CONFIG], defaults)
    assert (args.k, args.max_new_tokens, args.batch_items, args.temperature, args.dtype, args.seed) == (
        c.inference.k, c.inference.max_new_tokens, c.inference.batch_prompts, c.inference.temperature,
        c.inference.dtype, c.seed)
    assert args.mesh == MeshConfig(1, 1, 1) and args.k_meta is None  # no meta RM: the config's k_meta is moot
    args = parse_args(_parser(), ["--config", TINY_CONFIG, "--meta-rm", "m", "--config.inference.k=4",
                                  "--config.inference.k_meta", "3", "--max-new-tokens", "5", "--mesh", "fsdp=1"],
                      defaults)
    assert (args.k, args.k_meta, args.max_new_tokens, args.mesh) == (4, 3, 5, MeshConfig(1, 1, 1))
    args = parse_args(_parser(), ["--config", TINY_CONFIG, "--meta-rm", "m", "--k", "6"], defaults)
    assert (args.k, args.k_meta) == (6, None)  # the config's k_meta belongs to its own k
    args = parse_args(_parser(), ["--k", "3"], defaults)  # no config: the command's defaults
    assert (args.k, args.max_new_tokens, args.mesh, args.dtype) == (3, 512, None, None)


@pytest.mark.parametrize("argv, message", [
    (["--config.inference.k=4"], "needs --config FILE"),
    (["--config", "nope.py"], "config file not found"),
    (["--config", TINY_CONFIG, "--config.inference.k=0"], "inference.k"),
    (["--config", TINY_CONFIG, "--config.inference.nope=1"], "names no field 'nope'"),
])
def test_bad_config_lines_exit_2_naming_the_field(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(__import__("pathlib").Path(__file__).resolve().parents[1])
    with pytest.raises(SystemExit) as e:
        parse_args(_parser(), argv, {})
    assert e.value.code == 2 and message in capsys.readouterr().err


# -- the meta-RM interface -----------------------------------------------------------------------------------------
class CountingMetaRM:
    """Any object with scores(items, trajectories) is a meta RM: here, longer texts score higher."""

    def __init__(self):
        self.calls = []

    def scores(self, items, trajectories):
        self.calls.append([len(ts) for ts in trajectories])
        return np.asarray([len(t.text) + 0.5 * j for ts in trajectories for j, t in enumerate(ts)], np.float32)


@pytest.fixture(scope="module")
def tiny():
    from spct_jax.models.registry import load_model

    return load_model("tiny-random")


def test_any_meta_rm_with_scores_is_used_without_asking_its_type(tiny):
    model, tok = tiny
    meta = CountingMetaRM()
    assert isinstance(meta, MetaRM)
    grm = GenerativeRewardModel(model, tok, meta_rm=meta, template="toy")
    judgements = grm.score(ITEMS, k=3, k_meta=1, max_new_tokens=4, seed=1)
    assert meta.calls == [[3, 3]]  # one call for every trajectory of the batch
    for j in judgements:
        want = [len(s.text) + 0.5 * i for i, s in enumerate(j.samples)]
        assert [s.meta_score for s in j.samples] == pytest.approx(want)


def test_a_bare_scalar_rm_is_wrapped_with_its_tokenizer(tiny):
    from spct_jax.models.registry import tiny_random_config
    from spct_jax.models.scalar_head import init_scalar_rm

    model, tok = tiny
    rm = init_scalar_rm(tiny_random_config(tok.vocab_size), seed=3)
    old = GenerativeRewardModel(model, tok, meta_rm=rm, meta_tokenizer=tok, template="toy")  # the older convention
    assert isinstance(old.meta_rm, ScalarMetaRM) and old.meta_rm.rm is rm and old.meta_rm.tokenizer is tok
    new = GenerativeRewardModel(model, tok, meta_rm=ScalarMetaRM(rm, tok), template="toy")
    assert old.score(ITEMS, k=2, max_new_tokens=4, seed=2) == new.score(ITEMS, k=2, max_new_tokens=4, seed=2)
    with pytest.raises(TypeError, match="neither a MetaRM"):
        GenerativeRewardModel(model, tok, meta_rm=object())


# -- loading -------------------------------------------------------------------------------------------------------
def test_scalar_meta_rm_reads_with_its_own_tokenizer_when_its_folder_has_one(tmp_path):
    from spct_jax.models.registry import tiny_random_config
    from spct_jax.models.scalar_head import init_scalar_rm, save_scalar_rm
    from spct_jax.tokenizer import ByteTokenizer, HFTokenizer
    from spct_jax.tokenizers.save import save_tokenizer

    bare, own = tmp_path / "bare", tmp_path / "own"
    for folder in (bare, own):
        save_scalar_rm(init_scalar_rm(tiny_random_config(ByteTokenizer().vocab_size), seed=3), folder)
    save_tokenizer(ByteTokenizer(), "tiny-random", own)
    shared = load_judge("tiny-random", bare)
    assert isinstance(shared.meta_rm, ScalarMetaRM) and shared.meta_rm.tokenizer is shared.tokenizer
    separate = load_judge("tiny-random", own, dtype="bfloat16")
    assert isinstance(separate.meta_rm.tokenizer, HFTokenizer) and isinstance(separate.tokenizer, ByteTokenizer)
    assert separate.model.embed[...].dtype == jnp.bfloat16
    assert separate.meta_rm.rm.score.kernel[...].dtype == jnp.bfloat16


def test_likelihood_meta_rm_on_the_grms_checkpoint_shares_its_weights(tmp_path):
    from spct_jax.grm.likelihood_meta_rm import CONFIG_NAME, FORMAT, LikelihoodMetaRM

    folder = tmp_path / "lmeta"
    folder.mkdir()
    (folder / CONFIG_NAME).write_text(json.dumps({"format": FORMAT, "lm": "tiny-random", "template": "toy",
                                                  "scale": 2.0, "bias": -1.0}))
    grm = load_judge("tiny-random", folder)
    assert isinstance(grm.meta_rm, LikelihoodMetaRM) and grm.meta_rm.lm is grm.model  # loaded once
    assert (grm.meta_rm.scale, grm.meta_rm.bias, grm.meta_rm.template) == (2.0, -1.0, "toy")
    (folder / CONFIG_NAME).write_text('{"format": "spct-likelihood-meta-rm/1",\n "lm": }')
    with pytest.raises(JudgeError, match="cannot be read") as e:
        load_judge("tiny-random", folder)
    assert e.value.exit_code == 1


def test_bfloat16_on_one_cpu_device_computes_in_fp32_and_a_mesh_keeps_bfloat16():
    """--dtype bfloat16 on one CPU device: bf16 weights, fp32 compute (the fast mix there, models.transformer.
    weight_dot); on a mesh, even of CPU devices, bf16 throughout, the program a TPU pod runs."""
    from spct_jax.parallel.mesh import make_mesh

    one = load_judge("tiny-random", dtype="bfloat16")
    assert one.model.embed[...].dtype == jnp.bfloat16 and one.model.dtype == jnp.float32
    assert one.model.init_cache(1, 4).k.dtype == jnp.float32
    on_mesh = load_judge("tiny-random", dtype="bfloat16", mesh=make_mesh(MeshConfig(1, 1, 1)))
    assert on_mesh.model.embed[...].dtype == jnp.bfloat16 and on_mesh.model.dtype == jnp.bfloat16
    assert load_judge("tiny-random").model.dtype == jnp.float32  # the one-device default is unchanged
