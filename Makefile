# `make demo` (set up, then run the main job offline), `make test`, and `make lock` (refresh the pins).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# What make installs: the main requirements and the extras, at the versions in the lock file.
REQUIREMENTS ?= requirements.txt requirements-extra.txt
LOCK         ?= requirements.lock
PIP_OPTIONS  ?=

.PHONY: setup browser bibles demo translate test lock clean
setup: $(VENV)/.installed

$(VENV)/.installed: $(REQUIREMENTS) $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(PIP_OPTIONS) --upgrade pip -c $(LOCK)
	$(BIN)/pip install --quiet $(PIP_OPTIONS) $(addprefix -r ,$(REQUIREMENTS)) -c $(LOCK)
	touch $@

demo: setup
	$(BIN)/python prepare.py
	$(BIN)/python train.py config/cpu_demo.py
	$(BIN)/python eval.py --ckpt out/best.pt

# The English <-> Spanish translator from raw text to BLEU on Acts (benchmarks/translate.py); a
# rerun resumes where a killed one stopped.
translate: setup bibles
	$(BIN)/python bench.py translate

# Headless Chromium for tests/test_playground.py, from Debian's packages where apt-get works (as root);
# elsewhere that test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1)) || \
	  echo "note: could not install chromium and chromium-driver; the browser test will be skipped"

# The two Bibles of prepare.py's translation task (config/prepare_translation.py), from Debian's
# packages where apt-get works (as root); elsewhere the task says so and its tests are skipped.
bibles:
	@test -f /usr/share/sword/mods.d/engKJV2006eb.conf && test -f /usr/share/sword/mods.d/spaRV1909eb.conf || \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q sword-text-kjv sword-text-sparv >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q sword-text-kjv sword-text-sparv >/dev/null 2>&1)) || \
	  echo "note: could not install sword-text-kjv and sword-text-sparv; the translation task's tests will be skipped"

# The test files run in parallel, a file per worker process (pytest-xdist: one per core, at most 4;
# a file's module fixtures, such as a started server, stay in one process).
test: setup browser bibles
	$(BIN)/python -m pytest -q -rs -n auto --maxprocesses=4 --dist loadfile tests

# Refresh the pins on purpose: resolve the requirements afresh in a new virtual environment, with
# the newest pip and whatever the registry serves today, and write every installed version, pip's
# own included, to the lock file (local version labels such as torch's +cpu dropped, so the pins
# hold on every platform). Then run `make test` on the new lock before committing it.
lock:
	rm -rf $(VENV).lock
	$(PYTHON) -m venv $(VENV).lock
	$(VENV).lock/bin/pip install --quiet $(PIP_OPTIONS) --upgrade pip
	$(VENV).lock/bin/pip install --quiet $(PIP_OPTIONS) $(addprefix -r ,$(REQUIREMENTS))
	{ echo "# Every package make installs, at the version the tests passed with: pip's constraints"; \
	  echo "# for requirements.txt and requirements-extra.txt. Written by make lock; do not edit."; \
	  $(VENV).lock/bin/pip freeze --all --exclude-editable | sed -E 's/^([^=]+==[^+]+)\+.*/\1/'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf $(VENV).lock

clean:
	rm -rf data/demo out
