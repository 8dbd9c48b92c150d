# Two commands do everything on a fresh machine: `make demo` and `make test`.
# torch==2.13.0 is installed first (the CPU build on this machine); the rest never asks for another torch.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The tests also need the optional extras (peft for LoRA, diffusers for interop); the demos do not.
TEST_STAMP := $(VENV)/.installed-extras

FMNIST := /usr/share/datasets/fashion-mnist

# Where the targets write and what they spend; tests/test_makefile.py runs every target's commands with tiny
# budgets through these (make -n ... FM_ARGS="--budget teacher=2,cd=2 --n 20" ...).
DEMO_OUT   ?= demo_out
FM_OUT     ?= demo_fmnist
EDIT_OUT   ?= edit_out
BENCH_OUT  ?= bench_out
DEMO_ARGS  ?=
FM_ARGS    ?=
BENCH_ARGS ?=
RGB_STEPS  ?= 2000
RGB_CD_STEPS ?= 600
# What a target needs first: the venv (the tests run the targets' commands with SETUP=, having their own).
SETUP      ?= $(STAMP)

.PHONY: demo demo-fmnist demo-edit bench test venv data clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[dev,interop]"
	touch $(TEST_STAMP)

venv: $(STAMP)

# Fashion-MNIST from Debian's package (the image tests skip without it; demo-fmnist and bench need it).
data:
	@test -d $(FMNIST) || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; } \
	  || echo "Fashion-MNIST is missing: run sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"

demo: $(SETUP)
	$(PY) -m fewstep demo --out $(DEMO_OUT) $(DEMO_ARGS)

demo-fmnist: $(SETUP) data
	$(PY) -m fewstep bench --methods teacher,cd --out $(FM_OUT) $(FM_ARGS)

# Zero-shot editing pictures (README): trains what is missing (--resume reuses finished runs), then edits.
RGB := --data fashion-mnist-rgb --net unet --batch 64 --lr 5e-4 --resume --quiet
EDIT := --from-data 6 --out $(EDIT_OUT) --overwrite
demo-edit: $(SETUP) data
	test -f $(FM_OUT)/cd/checkpoint.safetensors || $(PY) -m fewstep bench --methods teacher,cd --out $(FM_OUT) $(FM_ARGS)
	$(PY) -m fewstep train edm $(RGB) --steps $(RGB_STEPS) --out $(FM_OUT)/rgb_teacher
	$(PY) -m fewstep train cd $(RGB) --steps $(RGB_CD_STEPS) --teacher $(FM_OUT)/rgb_teacher --set N=18 \
	  --set solver=heun --set distance=pseudo-huber --out $(FM_OUT)/rgb_cd
	$(PY) -m fewstep edit inpaint $(FM_OUT)/cd --box 7,7,21,21 $(EDIT)
	$(PY) -m fewstep edit colorize $(FM_OUT)/rgb_cd $(EDIT)
	$(PY) -m fewstep edit superres $(FM_OUT)/cd --factor 4 $(EDIT)
	$(PY) -m fewstep edit stroke $(FM_OUT)/cd --sigma 0.8 $(EDIT)
	$(PY) -m fewstep edit denoise $(FM_OUT)/cd --sigma 0.5 $(EDIT)
	$(PY) -m fewstep edit interpolate $(FM_OUT)/cd --seeds 0,1 --frames 10 --out $(EDIT_OUT) --overwrite

bench: $(SETUP) data
	$(PY) -m fewstep bench --out $(BENCH_OUT) $(BENCH_ARGS)

test: $(TEST_STAMP) data
	$(PY) -m pytest -q

clean:
	rm -rf $(DEMO_OUT) $(FM_OUT) $(BENCH_OUT) $(EDIT_OUT) compare_out .pytest_cache
