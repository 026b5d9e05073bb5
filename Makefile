# Two commands matter: `make demo` and `make test`. Both create .venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-vllm bench clean

setup: $(STAMP)

# torch is installed first, pinned to the CPU wheel, so no dependency pulls a CUDA build.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev,cluster]"
	touch $(STAMP)

demo: setup
	$(BIN)/replaygrpo train

test: setup
	$(BIN)/python -m pytest -q -x --durations=15

# vLLM's CPU build in its own venv (~4 GB, ~5 minutes the first time).
test-vllm:
	bash scripts/make_vllm_venv.sh
	.venv-vllm/bin/python -m pytest -m vllm -q tests/test_vllm.py

bench: setup
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python scripts/bench.py

clean:
	rm -rf $(VENV) outputs multirun .cache
