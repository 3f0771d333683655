# dipod_trl developer commands. `make test` sets up what it needs (CPU torch first, then the package).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH_PIN := torch==2.13.0
STAMP := .stamp-install

.PHONY: install test test-fast lint demo bench bench-estimators clean

$(STAMP): setup.cfg pyproject.toml
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PYTHON) -m pytest -q -n 2 --durations=15

test-fast: $(STAMP)
	$(PYTHON) -m pytest -q -n 2 -m "not slow and not distributed"

lint: $(STAMP)
	$(PYTHON) -m ruff check dipod_trl examples tests benchmarks

demo: $(STAMP)
	$(PYTHON) examples/demo.py $(if $(QUICK),--quick,)

bench: $(STAMP)
	$(PYTHON) benchmarks/bench_performance.py $(if $(QUICK),--quick,)
	$(PYTHON) benchmarks/bench_blocks.py $(if $(QUICK),--quick,)

bench-estimators: $(STAMP)
	$(PYTHON) benchmarks/bench_estimators.py $(if $(QUICK),--quick,)

clean:
	rm -rf $(STAMP) build dist *.egg-info .pytest_cache .ruff_cache demo_out
