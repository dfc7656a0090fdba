"""Tokenizer implementations behind `spct_jax.tokenizer`; import from there."""
