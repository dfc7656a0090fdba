"""Decoders (Gemma-2, Llama, Qwen2), the meta RM's scalar head, and HF / GGUF weight conversion."""
from spct_jax.models.config import PRESETS, ConfigError, ModelConfig, preset
from spct_jax.models.transformer import Decoder, KVCache, count_params, init_model
from spct_jax.models.weights import WeightsError, from_pretrained, save_pretrained

__all__ = ["PRESETS", "ConfigError", "ModelConfig", "preset", "Decoder", "KVCache", "count_params", "init_model",
           "WeightsError", "from_pretrained", "save_pretrained"]
from spct_jax.models.scalar_head import ScalarRM, load_scalar_rm, save_scalar_rm  # noqa: E402

__all__ += ["ScalarRM", "load_scalar_rm", "save_scalar_rm"]
