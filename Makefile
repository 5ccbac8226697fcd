# Two set-up commands (see README):
#   make demo   own virtualenv, runtime only (no torch), captions the shipped sample images
#   make test   own virtualenv with the dev extras, runs the whole test suite
PYTHON ?= python3
DEMO_VENV := .venv-demo
DEV_VENV := .venv

.PHONY: demo test clean

demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/edgevlm caption edgevlm/assets/samples/*.png

$(DEMO_VENV)/.installed: setup.py
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/pip install -q --upgrade pip
	$(DEMO_VENV)/bin/pip install -q .
	touch $@

$(DEV_VENV)/.installed: setup.py
	$(PYTHON) -m venv $(DEV_VENV)
	$(DEV_VENV)/bin/pip install -q --upgrade pip
	# torch first, pinned: the CPU build on this machine class's disk (a bare `torch` pulls CUDA)
	$(DEV_VENV)/bin/pip install -q torch==2.13.0
	$(DEV_VENV)/bin/pip install -q -e '.[dev]'
	# test oracle for BLEU/CIDEr-D; --no-deps: its scorers are pure Python, pycocotools is not needed
	$(DEV_VENV)/bin/pip install -q --no-deps pycocoevalcap==1.2
	touch $@

test: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m pytest -q

clean:
	rm -rf $(DEMO_VENV) $(DEV_VENV) build *.egg-info
