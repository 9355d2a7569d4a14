# trustnlp — the README's two commands (`make demo`, `make test`) do all set-up themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.trustnlp-installed
OUT    ?= runs/demo
EXTRAS ?= dev

.PHONY: setup demo test bench lint clean-venv

# The venv is (re)built when missing, when its interpreter is broken, or when the dependency
# files changed since it was installed (stale). torch is pinned in the same pip command as the
# project: unpinned, pip would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	@if ! $(BIN)/python -c "import sys" >/dev/null 2>&1; then \
	  echo "Creating $(VENV) with $(PYTHON)"; rm -rf $(VENV); $(PYTHON) -m venv $(VENV); fi
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt "torch==2.13.0" -e ".[$(EXTRAS)]"
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/trustnlp demo --out $(OUT)
	@echo "Open $(OUT)/report.html in a browser."

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt "torch==2.13.0" -e ".[dev,bench]"
	@for b in benchmarks/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean-venv:
	rm -rf $(VENV)
