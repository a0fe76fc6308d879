# Two entry points: `make demo` (set up, then run the main job offline) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test clean
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

demo: setup
	$(BIN)/python prepare.py
	$(BIN)/python train.py config/cpu_demo.py
	$(BIN)/python eval.py --ckpt out/best.pt

test: setup
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf data/demo out
