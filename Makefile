# The README's two commands. Both install the stack first (idempotent, seconds
# when already installed).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install slurm demo test lint format

install:
	bash scripts/install.sh

## Debian's Slurm + MUNGE for the Slurm tests (root); without them those tests skip.
slurm:
	bash scripts/install-slurm.sh

## The main job on the embedded default: synthetic nuScenes-format data,
## baseline vs. each window_size of new AQR, compared and reported.
demo: install
	$(BIN)/aqr-exp sweep window_size

test: install
	-@bash scripts/install-slurm.sh
	$(BIN)/python -m pytest -q -rs

lint: install
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .
