# x0tta6bl4 — the two commands of the README, and what they stand on.
#   make up     set everything up and run the main job
#   make test   lint, type checks and the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NATIVE := $(VENV)/.native-built
NATIVE_SOURCES := $(shell find native/src native/python -type f 2>/dev/null) native/Cargo.toml native/pyproject.toml

.PHONY: up test lint typecheck pytest native-test setup system tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The native data plane (Rust): incremental; skipped with a message where cargo is missing.
$(NATIVE): $(STAMP) $(NATIVE_SOURCES) scripts/build-native.sh
	scripts/build-native.sh
	touch $(NATIVE)

setup: $(STAMP) $(NATIVE)

system:
	scripts/setup-system.sh

tools:
	scripts/install-tools.sh

up: setup
	scripts/demo.sh

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: setup
	$(BIN)/mypy

pytest: setup system tools
	scripts/run-pytest.sh

# The Rust cores' own unit tests (the Python-facing behaviour is tested by pytest tests/native).
native-test:
	@if command -v cargo >/dev/null 2>&1 || [ -x "$$HOME/.cargo/bin/cargo" ]; then \
	  PATH="$$PATH:$$HOME/.cargo/bin" cargo test --quiet --manifest-path native/Cargo.toml --no-default-features; \
	else echo "native-test: no cargo, skipped"; fi

test: lint typecheck native-test pytest

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache native/target
