# Two commands do everything on a fresh machine: `make demo` and `make test`.
# torch==2.13.0 is installed first (the CPU build on this machine); the rest never asks for another torch.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo demo-fmnist demo-edit bench test venv data clean

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

# Zero-shot editing pictures (README): trains what is missing (--resume reuses finished runs), then edits.
RGB := --data fashion-mnist-rgb --net unet --set net.config=cpu-tiny --batch 64 --lr 5e-4 --resume --quiet
demo-edit: $(STAMP) data
	test -f demo_fmnist/cd/checkpoint.safetensors || $(PY) -m fewstep bench --methods teacher,cd --out demo_fmnist
	$(PY) -m fewstep train edm $(RGB) --steps 2000 --out demo_fmnist/rgb_teacher
	$(PY) -m fewstep train cd $(RGB) --steps 600 --teacher demo_fmnist/rgb_teacher --set N=18 --set solver=heun \
	  --set distance=pseudo-huber --out demo_fmnist/rgb_cd
	$(PY) -m fewstep edit inpaint demo_fmnist/cd --from-data 6 --box 7,7,21,21 --out edit_out
	$(PY) -m fewstep edit colorize demo_fmnist/rgb_cd --from-data 6 --out edit_out
	$(PY) -m fewstep edit superres demo_fmnist/cd --from-data 6 --factor 4 --out edit_out
	$(PY) -m fewstep edit stroke demo_fmnist/cd --from-data 6 --sigma 0.8 --out edit_out
	$(PY) -m fewstep edit denoise demo_fmnist/cd --from-data 6 --sigma 0.5 --out edit_out
	$(PY) -m fewstep edit interpolate demo_fmnist/cd --seeds 0,1 --frames 10 --out edit_out

bench: $(STAMP) data
	$(PY) -m fewstep bench --out bench_out

test: $(STAMP) data
	$(PY) -m pytest -q

clean:
	rm -rf demo_out demo_fmnist bench_out edit_out .pytest_cache
