# The README's commands. Everything (venv, torch, the package) is set up on first use.
PYTHON ?= python3.11
VENV ?= .venv
PROFILE ?= default
OPTIONS ?=
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: study test lab install clean-results

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[notebooks,test]" $(TORCH_PINS)
	touch $(STAMP)

install: $(STAMP)

study: $(STAMP)
	$(PY) -m idd_lib.study --profile $(PROFILE) --options "$(OPTIONS)"

test: $(STAMP)
	$(PY) -m pytest -q

lab: $(STAMP)
	$(PY) -m ipykernel install --sys-prefix --name idd-study --display-name "IDD study (.venv)"
	$(VENV)/bin/jupyter lab notebooks

clean-results:
	rm -rf results/$(PROFILE)
