"""GGUF import: synthetic Llama/Qwen2 files written the llama.cpp way (offline), and the real SmolLM2-135M-Instruct
GGUF against transformers' own GGUF loader on real LLMBar prompts (fp32 logits, 64-token greedy generation)."""
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hf_fixtures import hf_logits, left_padded_batch, tiny_hf_lm, torch, transformers
from spct_jax.models import ConfigError, WeightsError, from_pretrained

gguf = pytest.importorskip("gguf")
from spct_jax.models.gguf_import import config_from_gguf, config_from_gguf_metadata, from_gguf, load_gguf  # noqa: E402

Q = gguf.GGMLQuantizationType
LENGTHS = [14, 9, 3, 12]


# -- synthetic files ------------------------------------------------------------------------------------------------
def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to Llama q/k rows (rotate-half halves -> interleaved pairs)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_HF_TO_GGUF = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
               "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
               "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
               "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
               "self_attn.v_proj.bias": "attn_v.bias", "mlp.gate_proj.weight": "ffn_gate.weight",
               "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}


def write_gguf(hf, family: str, path: Path, drop: str | None = None, extra_kv: dict | None = None) -> None:
    """Write `hf` as llama.cpp would: Q8_0 matrices, an F16 embedding, F32 norms and biases.

    The HF model's params are overwritten with the de-quantized values, so it stays an exact oracle.
    """
    c = hf.config
    w = gguf.GGUFWriter(os.fspath(path), family)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.head_dim)
    w.add_key_length(c.head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(c.vocab_size)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    for key, value in (extra_kv or {}).items():
        w.add_string(key, value)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            x = p.detach().numpy().astype(np.float32)
            if name == "model.embed_tokens.weight":
                gname, qtype = "token_embd.weight", Q.F16
            elif name == "model.norm.weight":
                gname, qtype = "output_norm.weight", Q.F32
            elif name == "lm_head.weight":
                gname, qtype = "output.weight", Q.Q8_0
            else:
                _, _, i, rest = name.split(".", 3)
                gname, qtype = f"blk.{i}.{_HF_TO_GGUF[rest]}", Q.Q8_0 if x.ndim == 2 else Q.F32
            if gname == drop:
                continue
            # Stored form, rows on axis 0 (Q8_0 blocks run along a row, so whole rows can be permuted as bytes).
            data = {Q.F32: x, Q.F16: x.astype(np.float16)}.get(qtype)
            data = gguf.quants.quantize(x, qtype) if data is None else data
            p.copy_(torch.from_numpy(np.array(gguf.quants.dequantize(data, qtype), np.float32).reshape(x.shape)))
            if family == "llama" and gname.endswith(("attn_q.weight", "attn_k.weight")):
                data = llama_cpp_permute(data, c.num_attention_heads if "attn_q" in gname else c.num_key_value_heads)
            w.add_tensor(gname, data, raw_dtype=qtype if qtype == Q.Q8_0 else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def synthetic(request, tmp_path_factory):
    family = request.param
    hf = tiny_hf_lm(family, seed=7)  # llama: untied (output.weight); qwen2: tied, with q/k/v biases
    path = tmp_path_factory.mktemp(f"gguf-{family}") / "tiny.gguf"
    write_gguf(hf, family, path)
    return family, hf, path


def test_synthetic_gguf_logits_match_source_model(synthetic):
    family, hf, path = synthetic
    cfg = config_from_gguf(path)
    assert (cfg.family, cfg.num_layers, cfg.num_kv_heads, cfg.pad_token_id) == (family, 3, 2, 0)
    assert cfg.tie_embeddings == (family == "qwen2") and cfg.qkv_bias == (family == "qwen2")
    ours = from_pretrained(path)  # the `.gguf` suffix dispatches to from_gguf
    ids, mask, pos = left_padded_batch(LENGTHS, seed=1)
    ref = hf_logits(hf, ids, mask, pos)
    got = np.asarray(ours(jnp.asarray(ids, jnp.int32), jnp.asarray(mask)))
    assert np.max(np.abs(got - ref)[mask.astype(bool)]) <= 1e-4


def test_synthetic_gguf_bf16_params(synthetic):
    _, _, path = synthetic
    model = from_gguf(path, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}


def test_synthetic_gguf_with_a_mesh_is_read_whole_into_the_rules_layout(synthetic):
    """GGUF stays single-host: with a mesh every tensor is read whole and placed by the partition rules."""
    from spct_jax.parallel.mesh import MeshConfig, make_mesh
    from spct_jax.parallel.rules import named_leaves, param_shardings

    _, _, path = synthetic
    mesh = make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1))
    got = nnx.state(from_pretrained(path, mesh=mesh), nnx.Param)
    want = dict(named_leaves(param_shardings(mesh, got)))
    ref = dict(named_leaves(nnx.state(from_pretrained(path), nnx.Param)))
    for name, leaf in named_leaves(got):
        assert leaf.sharding == want[name] and np.array_equal(np.asarray(leaf), np.asarray(ref[name])), name


def test_missing_tensor_and_unsupported_rope_are_named(tmp_path):
    hf = tiny_hf_lm("llama", seed=8)
    write_gguf(hf, "llama", tmp_path / "a.gguf", drop="blk.1.ffn_up.weight")
    with pytest.raises(WeightsError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        from_gguf(tmp_path / "a.gguf")
    write_gguf(hf, "llama", tmp_path / "b.gguf", extra_kv={"llama.rope.scaling.type": "yarn"})
    with pytest.raises(ConfigError, match="rope.scaling.type"):
        from_gguf(tmp_path / "b.gguf")
    with pytest.raises(ConfigError, match="general.architecture"):
        config_from_gguf_metadata({"general.architecture": "gemma2"}, set())


# -- the real SmolLM2-135M-Instruct GGUF vs transformers' GGUF loader -------------------------------------------------
SHARED_DATA = Path(os.environ.get("SPCT_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
N_NEW = 64


@pytest.fixture(scope="module")
def smollm2():
    """(our model, our tokenizer, transformers model, transformers tokenizer, real prompts), loaded once."""
    from spct_jax.models.smollm2 import DownloadError, smollm2_gguf_path

    llmbar = SHARED_DATA / "rewardbench" / "llmbar.jsonl"
    if not llmbar.exists():
        pytest.skip(f"no shared data at {llmbar} (set SPCT_SHARED_DATA)")
    try:
        path = smollm2_gguf_path()
    except DownloadError as e:
        pytest.skip(f"SmolLM2 GGUF unavailable: {e}")
    pytest.importorskip("accelerate")
    # On a few shared cores torch's intra-op threads contend with XLA's pool; one thread measured ~3x faster here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                           attn_implementation="sdpa").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model, tok = load_gguf(path)
    rows = [json.loads(line) for line in llmbar.read_text().splitlines()[:40]]
    # Several subsets and lengths; cut to keep a CPU forward pass short.
    prompts = [rows[i]["prompt"][:400] for i in (0, 7, 13, 29)]
    yield model, tok, hf, hf_tok, prompts
    torch.set_num_threads(threads)


def _chat_ids(hf_tok, prompt: str) -> list[int]:
    text = hf_tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return hf_tok(text, add_special_tokens=False)["input_ids"]


def _left_pad(seqs: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    t = max(map(len, seqs))
    ids = np.full((len(seqs), t), pad, np.int64)
    mask = np.zeros((len(seqs), t), np.int64)
    for i, s in enumerate(seqs):
        ids[i, t - len(s):] = s
        mask[i, t - len(s):] = 1
    return ids, mask


def test_smollm2_config_and_tokenizer_are_reachable(smollm2):
    model, tok, hf, _, _ = smollm2
    cfg = model.config
    assert (cfg.family, cfg.num_layers, cfg.hidden_size, cfg.num_kv_heads, cfg.vocab_size) == ("llama", 30, 576, 3, 49152)
    assert cfg.tie_embeddings and hf.config.tie_word_embeddings
    assert (tok.vocab_size, tok.eos_id, tok.pad_id) == (cfg.vocab_size, cfg.eos_token_id, cfg.pad_token_id)


def test_smollm2_fp32_logits_match_transformers(smollm2):
    model, _, hf, hf_tok, prompts = smollm2
    ids, mask = _left_pad([_chat_ids(hf_tok, p) for p in prompts], pad=model.config.pad_token_id)
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    ref = hf_logits(hf, ids, mask, pos)
    got = np.asarray(model(jnp.asarray(ids, jnp.int32), jnp.asarray(mask)))
    diff = float(np.max(np.abs(got - ref)[mask.astype(bool)]))
    print(f"SmolLM2 fp32 max |logit diff| over {int(mask.sum())} positions: {diff:.2e}")
    assert diff <= 1e-3


def _our_greedy(model, ids: np.ndarray, mask: np.ndarray, n_new: int) -> np.ndarray:
    """Greedy decoding through the KV cache; rows that emitted EOS keep emitting pad, as transformers does."""
    graphdef, state = nnx.split(model)
    # jax.jit over the split state: nnx.jit re-walks the module graph on every call, which dominates a CPU decode step.
    step = jax.jit(lambda st, i, a, c: nnx.merge(graphdef, st).extend(i, a, c))
    eos, pad = model.config.eos_token_id, model.config.pad_token_id
    b, t = ids.shape
    cache = model.init_cache(b, t + n_new)
    logits, cache = step(state, jnp.asarray(ids, jnp.int32), jnp.asarray(mask), cache)
    done = np.zeros(b, bool)
    out = []
    for k in range(n_new):
        nxt = np.where(done, pad, np.asarray(jnp.argmax(logits[:, -1], axis=-1)))
        out.append(nxt)
        done |= nxt == eos
        if done.all() or k == n_new - 1:
            break
        logits, cache = step(state, jnp.asarray(nxt[:, None], jnp.int32), jnp.ones((b, 1), jnp.int32), cache)
    return np.stack(out, axis=1)


def test_smollm2_greedy_generation_matches_transformers(smollm2):
    model, _, hf, hf_tok, prompts = smollm2
    ids, mask = _left_pad([_chat_ids(hf_tok, p) for p in prompts[:2]], pad=model.config.pad_token_id)
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                          max_new_tokens=N_NEW, pad_token_id=model.config.pad_token_id)[:, ids.shape[1]:].numpy()
    got = _our_greedy(model, ids, mask, N_NEW)
    # transformers stops early only when every row has finished; then ours has too.
    assert got.shape == ref.shape, (got.shape, ref.shape)
    np.testing.assert_array_equal(got, ref)
    assert ref.shape[1] == N_NEW or (ref[:, -1] == model.config.eos_token_id).any()
