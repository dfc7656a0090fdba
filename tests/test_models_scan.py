"""Scanned layers: the same math as the unrolled blocks for every layer pattern, a program that does not grow
with depth, and the remat policies (the HF parity tests in test_transformer_parity.py run the scanned default)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.extend.core import ClosedJaxpr, Jaxpr

from spct_jax.models import ModelConfig, init_model
from spct_jax.models.transformer import REMAT_POLICIES, remat_name


def gemma(layers: int, layer_types=None) -> ModelConfig:
    types = layer_types or tuple("sliding" if i % 2 == 0 else "full" for i in range(layers))
    return ModelConfig(family="gemma2", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=layers,
                       num_heads=4, num_kv_heads=2, head_dim=8, query_pre_attn_scalar=8, attn_logit_softcap=50.0,
                       final_logit_softcap=30.0, sliding_window=3, layer_types=types)


LLAMA = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4,
                    num_kv_heads=2, head_dim=8)


def test_scan_unit_is_the_shortest_repeating_window_pattern():
    assert LLAMA.scan_unit() == 1
    assert gemma(6).scan_unit() == 2 and gemma(5).scan_unit() == 2  # (sliding, full) pairs, 5 = 2 pairs + 1
    assert gemma(3, ("full", "sliding", "sliding")).scan_unit() == 3  # never repeats: one step of all 3
    assert gemma(4, ("sliding", "sliding", "full", "sliding")).scan_unit() == 3  # [s s f] then s unrolled


def _batch(cfg, b=3, t=9, seed=0):
    rng = np.random.default_rng(seed)
    ids = jnp.asarray(rng.integers(1, cfg.vocab_size, (b, t)), jnp.int32)
    mask = jnp.asarray(np.arange(t)[None, :] >= rng.integers(0, 4, (b, 1)))  # left padding, windows crossed
    return ids, mask


@pytest.mark.parametrize("cfg,remat", [(gemma(5), "full"), (gemma(4, ("sliding", "sliding", "full", "sliding")), "none"),
                                       (LLAMA, "save_dots")], ids=["gemma-pairs+1", "gemma-irregular", "llama"])
def test_scanned_equals_unrolled_forward_and_gradients(cfg, remat):
    ids, mask = _batch(cfg)
    models = {scan: init_model(cfg, seed=1, remat=remat, scan_layers=scan) for scan in (True, False)}

    def loss(graphdef, params):
        return jnp.sum(nnx.merge(graphdef, params)(ids, mask) ** 2 * mask[..., None])

    out = {}
    for scan, model in models.items():
        graphdef, params = nnx.split(model, nnx.Param)
        out[scan] = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)(graphdef, params)
    (l1, g1), (l2, g2) = out[True], out[False]
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):  # float32 rounding of a differently fused program
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2e-6 * float(np.abs(b).max()))


def test_scanned_cache_path_equals_unrolled():
    """Prefill then two decode steps through a stacked cache, scanned (2 pairs + 1 layer) and unrolled."""
    cfg = gemma(5)
    ids, mask = _batch(cfg, t=8)
    outs = []
    for scan in (True, False):
        model = init_model(cfg, seed=2, scan_layers=scan)
        graphdef, params = nnx.split(model)
        extend = jax.jit(lambda p, i, m, c: nnx.merge(graphdef, p).extend(i, m, c))  # noqa: B023
        logits, cache = extend(params, ids[:, :6], mask[:, :6], model.init_cache(3, 8))
        steps = [logits]
        for t in (6, 7):
            logits, cache = extend(params, ids[:, t:t + 1], mask[:, t:t + 1], cache)
            steps.append(logits)
        outs.append((np.concatenate([np.asarray(s) for s in steps], axis=1), np.asarray(cache.k)))
    np.testing.assert_allclose(outs[0][0], outs[1][0], atol=1e-5)
    np.testing.assert_allclose(outs[0][1], outs[1][1], atol=1e-6)
    assert outs[0][1].shape == (5, 3, 2, 8, 8)  # [L, B, K, S, Dh]


def test_grown_cache_keeps_its_slots_and_adds_empty_ones():
    """KVCache.grow (the sampler's decode phases), stacked and split per layer: written slots and their numbers
    unchanged, the new ones zero and not valid; a shrink is refused."""
    model = init_model(LLAMA, seed=0)
    ids, mask = _batch(LLAMA, t=5)
    _, cache = model.extend(ids, mask, model.init_cache(3, 5))
    for c in (cache, cache.split_layers()):
        grown = c.grow(9)
        assert grown.max_len == 9 and grown.split == c.split and grown.length == c.length
        k, old = (np.stack(x.k) if x.split else np.asarray(x.k) for x in (grown, c))
        np.testing.assert_array_equal(k[:, :, :, :5], old)  # [L, B, K, S, Dh]
        assert not k[:, :, :, 5:].any()
        np.testing.assert_array_equal(np.asarray(grown.valid[:, :5]), np.asarray(c.valid))
        assert not np.asarray(grown.valid[:, 5:]).any()
        assert c.grow(5) is c
        with pytest.raises(ValueError, match="shrink"):
            c.grow(4)


def _dots(cfg: ModelConfig, scan: bool) -> int:
    """dot_general equations in the program of forward + backward, every nested jaxpr counted where it occurs
    (a scan body once, however many steps it runs)."""
    model = init_model(cfg, seed=0, remat="full", scan_layers=scan)
    graphdef, params = nnx.split(model, nnx.Param)
    ids = jnp.ones((2, 8), jnp.int32)
    loss = lambda p: jnp.sum(nnx.merge(graphdef, p)(ids))  # noqa: E731

    def count(jaxpr) -> int:
        n = 0
        for eqn in jaxpr.eqns:
            n += eqn.primitive.name == "dot_general"
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(sub, (Jaxpr, ClosedJaxpr)):
                        n += count(sub.jaxpr if isinstance(sub, ClosedJaxpr) else sub)
        return n

    return count(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)


def test_the_scanned_program_does_not_grow_with_depth():
    """The jaxpr of forward + backward holds one (sliding, full) pair whatever the depth; unrolled, every layer
    is its own copy (what made compiling 32 layers ~4-6x slower than 2: benchmarks/compile_depth.py)."""
    assert _dots(gemma(2), True) == _dots(gemma(12), True)
    assert _dots(gemma(12), False) > 5 * _dots(gemma(2), False)


def test_remat_names():
    assert set(REMAT_POLICIES) == {"none", "full", "save_dots"}
    assert (remat_name(True), remat_name(False), remat_name("save_dots")) == ("full", "none", "save_dots")
    with pytest.raises(ValueError, match="remat policy"):
        remat_name("dots")
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("base", Path(__file__).resolve().parents[1] / "configs" / "base.py")
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    assert set(base.REMAT) == set(REMAT_POLICIES)  # the config's names are the model's
