# The two commands of the README:  make run  (set up + open the lab)  and  make test.
# Both create .venv when it is missing and (re)install the project when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8501

.PHONY: setup run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: setup  ## open the lab (Streamlit) on the embedded digits data, bound to 127.0.0.1
	$(BIN)/streamlit run app/main.py --server.address $(HOST) --server.port $(PORT)

test: setup  ## lint + the whole test suite (notebooks and the browser test included)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check cacr_lab benchmarks tests app

bench: setup  ## the CPU benchmarks whose figures the README quotes
	$(BIN)/python benchmarks/bench_loss.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
