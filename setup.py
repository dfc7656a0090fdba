"""spct-jax: generalist generative reward models trained by SPCT, in JAX/Flax NNX.

Dependency ranges were checked to install on CPython 3.11 (jax 0.10.x is the newest line for 3.11).
"""
from setuptools import find_packages, setup

RUNTIME = [
    "jax>=0.10.0,<0.11",
    "jaxlib>=0.10.0,<0.11",
    "flax>=0.12.0,<0.13",
    "optax>=0.2.4,<0.3",
    "orbax-checkpoint>=0.12.0,<0.13",
    "tensorflow-datasets>=4.9.7,<5",
    "grain>=0.2.12,<0.3",
    "sentencepiece>=0.2.0,<0.3",
    "tokenizers>=0.21,<1",
    "safetensors>=0.5,<1",
    "ml-collections>=1.0,<2",
    "numpy>=1.26,<3",
    "tqdm>=4.66,<5",
    "gguf>=0.16,<0.20",
    "matplotlib>=3.8,<4",
    "tensorboardX>=2.6,<3",
]

TEST = [
    "pytest>=8,<10",
    "pytest-timeout>=2.3,<3",
    "hypothesis>=6.100,<7",
    # Exactly this version: a CPU wheel is on local disk here; a looser pin pulls a multi-GB CUDA build.
    "torch==2.13.0",
    "transformers>=4.57,<6",
    "accelerate>=1.0,<2",
    "scikit-learn>=1.4,<2",
    "nbclient>=0.10,<1",
    "nbformat>=5.10,<6",
    "ipykernel>=6.29,<8",
    "httpx>=0.27,<1",
    # GRPOTrainer for the TRL adapter's end-to-end test; 1.16 installs beside torch 2.13.0 / transformers 5.x
    # without replacing either (it depends on accelerate, datasets, transformers, not on torch directly).
    "trl>=1.16,<1.17",
]

# httpx: spct_jax.serve.client, the caller's side (RL trainers); the server itself needs only starlette + uvicorn.
SERVE = ["starlette>=0.40,<2", "uvicorn>=0.30,<1", "httpx>=0.27,<1"]

setup(
    name="spct-jax",
    version="0.1.0",
    description="Self-Principled Critique Tuning (DeepSeek-GRM) for generative reward models in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["spct_jax", "spct_jax.*"]),
    package_data={"spct_jax.grm": ["templates/*.txt"]},
    install_requires=RUNTIME,
    extras_require={"test": TEST + SERVE, "serve": SERVE},
    entry_points={"console_scripts": ["spct=spct_jax.cli:main"]},
)
