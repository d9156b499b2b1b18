# The two commands of the README:  make run  (set up + open the lab)  and  make test.
# Both create .venv when it is missing and (re)install the project when pyproject.toml changes.
# A CPU-only machine can take PyTorch's CPU build (about 200 MB instead of 4 GB) where its index
# is reachable:  make run TORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
TORCH_INDEX ?=
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8501

.PHONY: setup browser run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install -q torch torchvision --index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: setup  ## open the lab (Streamlit) on the embedded digits data, bound to 127.0.0.1
	$(BIN)/streamlit run app/main.py --server.address $(HOST) --server.port $(PORT)

# The dashboard's browser test drives Debian's chromium; install it when it is missing and we
# may (root, or passwordless sudo). Elsewhere say how, and the test skips with that reason.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    || echo "make: could not install chromium; the browser test will be skipped"; \
	elif command -v apt-get >/dev/null && sudo -n true 2>/dev/null; then \
	  (sudo apt-get update -qq && sudo apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    || echo "make: could not install chromium; the browser test will be skipped"; \
	else echo "make: no chromium here (Debian/Ubuntu: apt-get install chromium chromium-driver);" \
	  "the browser test will be skipped"; fi

test: setup browser  ## lint + the whole test suite (notebooks and the browser test included)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check cacr_lab benchmarks tests app

bench: setup  ## the CPU benchmarks whose figures the README quotes
	$(BIN)/python benchmarks/bench_loss.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
