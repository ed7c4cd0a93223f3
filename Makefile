# The README's two commands. Both install the stack first (idempotent, seconds
# when already installed).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint format

install:
	bash scripts/install.sh

## The main job on the embedded default: synthetic nuScenes-format data,
## baseline vs. each window_size of new AQR, compared and reported.
demo: install
	$(BIN)/aqr-exp sweep window_size

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .
