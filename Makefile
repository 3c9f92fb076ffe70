# The README's commands. Everything (venv, pinned packages, the package, its Jupyter kernel) is set up on first use.
PYTHON ?= python3.11
VENV ?= .venv
PROFILE ?= default
OPTIONS ?=
# how the grids of 03_ablation and 07_position train (idd_lib.sweep; docs/speed-and-scale.md measures them)
EXECUTOR ?= local
WORKERS ?= 2
THREADS ?=
PY := $(VENV)/bin/python
# exact versions of every package the reference results were produced with (make lock rewrites it)
LOCK := requirements/lock.txt
STAMP := $(VENV)/.installed

.PHONY: study test lab kernel install lock clean-results

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m idd_lib.notebook install-kernel
	touch $(STAMP)

install: $(STAMP)

study: $(STAMP)
	$(PY) -m idd_lib.study --profile $(PROFILE) --options "$(OPTIONS)" --executor "$(EXECUTOR)" \
		--workers "$(or $(WORKERS),0)" --threads "$(or $(THREADS),0)"

test: $(STAMP)
	$(PY) -m pytest -q

# CurveZMQ keys for the kernels Lab starts (their kernelspec supports them): no plain-TCP warning
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --KernelManager.transport_encryption=auto notebooks

# the kernel for every Jupyter of this user (VS Code, a system JupyterLab), not only this venv's
kernel: $(STAMP)
	$(PY) -m idd_lib.notebook install-kernel --user

# the CUDA libraries torch's Linux wheel pulls in are marked Linux-only, as torch's own metadata does
lock:
	{ echo "# Exact versions of every package (make lock; Python 3.11, Linux x86_64). Loose ranges: pyproject.toml."; \
	  $(PY) -m pip freeze --all --exclude-editable | grep -v '^pip==' \
	  | sed -E '/^(cuda-|nvidia-|triton==)/ s/$$/ ; platform_system == "Linux"/'; } > $(LOCK)

clean-results:
	rm -rf results/$(PROFILE)
