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

.PHONY: install demo test style quality clean

install: $(STAMP)

# The stamp depends on setup.cfg: a second `make install` with nothing changed does nothing.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if $(BIN)/python -c "import torch, torchvision, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then \
		echo "CUDA torch already present: keeping it"; \
	else \
		$(BIN)/python -m pip install -q $(TORCH_SPEC); \
	fi
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

# The paper's two stages on the tiny offline world, on CPU: SFT cold start, then GRPO from it. Fresh each time.
demo: install
	rm -rf runs/tiny-sft runs/tiny-grpo
	$(BIN)/rewatch-trl tiny --out $(TINY_DIR)
	$(BIN)/accelerate launch --config_file accelerate_configs/cpu.yaml -m rewatch_trl.sft --config recipes/tiny/sft.yaml
	$(BIN)/accelerate launch --config_file accelerate_configs/cpu.yaml -m rewatch_trl.grpo --config recipes/tiny/grpo.yaml
	$(BIN)/rewatch-trl summary runs/tiny-grpo
	@echo "trained checkpoint: runs/tiny-grpo"

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

style: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

quality: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs
