# Two commands do everything on a fresh machine: `make demo` and `make test`.
# torch==2.13.0 is installed first (the CPU build on this machine); the rest never asks for another torch.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo demo-fmnist bench test venv data clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# Fashion-MNIST from Debian's package (the image tests skip without it; demo-fmnist and bench need it).
data:
	@test -d $(FMNIST) || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; } \
	  || echo "Fashion-MNIST is missing: run sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"

demo: $(STAMP)
	$(PY) -m fewstep demo --out demo_out

demo-fmnist: $(STAMP) data
	$(PY) -m fewstep bench --methods teacher,cd --out demo_fmnist

bench: $(STAMP) data
	$(PY) -m fewstep bench --out bench_out

test: $(STAMP) data
	$(PY) -m pytest -q

clean:
	rm -rf demo_out demo_fmnist bench_out .pytest_cache
