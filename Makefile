# Two commands do all the set-up:  `make demo` (install + whole method on the sample data)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; GPU users: `make TORCH="torch" ...` or install their CUDA build first.
TORCH ?= torch==2.13.0
XVFB := xvfb-run -a -s "-screen 0 1600x1000x24"
DEMO := runs/sample.oeem.zarr

.PHONY: demo test install install-gui system-deps napari screenshot bench bench-quick bench-list clean-demo

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.gui: $(VENV)/.core
	$(PY) -m pip install -q -e ".[testing]"
	touch $@

install: $(VENV)/.core
install-gui: $(VENV)/.gui

system-deps:
	./scripts/install-system-deps.sh

# The whole method (stage 1, stage 2, evaluation) on the embedded sample data, shortened to fit about 5 min on 2
# CPU cores in fp32: 4 classifier epochs of one pass each over the 12 small images (the preset's epochs of at least
# 430 steps are for a few tagged images among larger ones), CAMs at 2 scales, 120 segmentation iterations, no
# self-training round.
DEMO_SCHEDULE := --epochs 4 --set classifier.min_epoch_steps=0 --set 'cam.scales=[1,1.5]' --iterations 120 \
	--rounds 0 --fast
demo: install
	$(VENV)/bin/oeem run $(DEMO) --data sample --preset cpu $(DEMO_SCHEDULE)

test: system-deps install-gui
	$(XVFB) $(PY) -m pytest -q

napari: install-gui
	$(VENV)/bin/napari -w oeem-napari

screenshot: system-deps install-gui
	$(XVFB) $(PY) docs/make_screenshot.py

# Every measured figure of the README and docs, one command after the other (2 cores: one torch job at a time);
# the list, with minutes and which result files are tracked: make bench-list. Needs OEEM_GLAS_ROOT.
bench: install-gui
	$(XVFB) $(PY) benchmarks/figures.py run

bench-quick: install-gui
	$(XVFB) $(PY) benchmarks/figures.py run --quick

bench-list: install
	$(PY) benchmarks/figures.py list

clean-demo:
	rm -rf $(DEMO)
