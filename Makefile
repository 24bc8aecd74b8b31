# x0tta6bl4 — the two commands of the README, and what they stand on.
#   make up     set everything up and run the main job
#   make test   lint, type checks and the whole test suite
#   make fuzz   every fuzz harness under fuzz/ for FUZZ_RUNS inputs each (docs/fuzzing.md)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NATIVE := $(VENV)/.native-built
NATIVE_SOURCES := $(shell find native/src native/python -type f 2>/dev/null) native/Cargo.toml native/pyproject.toml

.PHONY: up test lint typecheck pytest native-test setup system tools components clean fuzz

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

# The pinned components built from their Go modules into the machine-wide cache (a no-op when
# the cache has them): the real cluster the tests in tests/cluster/ run on, and SPIRE (the
# SPIFFE integration suite against real SPIRE, `x0tta6bl4 up --identity spire`, and the
# in-cluster SPIRE release of `scripts/cluster staging`: its controller manager, CSI driver and
# the project's CSI registrar).
CLUSTER_COMPONENTS := kubernetes etcd coredns kube-router pause metrics-server vpa-crds prometheus
SPIRE_COMPONENTS := spire spire-controller-manager spiffe-csi-driver csi-registrar
components:
	scripts/components/build $(CLUSTER_COMPONENTS) $(SPIRE_COMPONENTS) >/dev/null

up: setup
	scripts/demo.sh

lint: setup
	$(BIN)/ruff check src tests fuzz
	$(BIN)/ruff format --check src tests fuzz

typecheck: setup
	$(BIN)/mypy

pytest: setup system tools components
	X0_REQUIRE_SPIRE=1 scripts/run-pytest.sh

# The Rust cores' own unit tests and clippy (crate, PyO3 layer, fuzz targets); the
# Python-facing behaviour is tested by pytest tests/native.
native-test:
	scripts/native-test.sh

test: lint typecheck native-test pytest

# Coverage-guided fuzzing (atheris): FUZZ_RUNS inputs per harness, FUZZ_JOBS harnesses at once;
# add FUZZ_ARGS="--json" or harness names. Figures per harness; exit 1 on any finding.
FUZZ_RUNS ?= 1000000
FUZZ_JOBS ?= 1
fuzz: setup
	nice $(BIN)/python fuzz/run.py --runs $(FUZZ_RUNS) --jobs $(FUZZ_JOBS) $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache native/target fuzz/.work
