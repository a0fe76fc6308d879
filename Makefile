# Two entry points: `make demo` (set up, then run the main job offline) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup browser demo test clean
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

# Headless Chromium for tests/test_playground.py, from Debian's packages where apt-get works (as root);
# elsewhere that test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1)) || \
	  echo "note: could not install chromium and chromium-driver; the browser test will be skipped"

test: setup browser
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf data/demo out
