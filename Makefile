# The README's commands. Everything (venv, pinned packages, the package, its Jupyter kernel) is set up on first use.
PYTHON ?= python3.11
VENV ?= .venv
PROFILE ?= default
OPTIONS ?=
# make tune: methods (empty = every distillation method), settings per method, seeds of each trial and of the confirmation
METHODS ?=
# base options of some methods, carried by all their settings (a cheaper variant): "cirkd:loss.cirkd.contrast_sample=total;..."
METHOD_OPTIONS ?=
TRIALS ?= 6
TUNE_SEEDS ?= 0,1
SEEDS ?= 0,1,2,3,4,5,6
# how the grids of 03_ablation and 07_position train (idd_lib.sweep; docs/speed-and-scale.md measures them)
EXECUTOR ?= local
WORKERS ?= 2
THREADS ?=
PY := $(VENV)/bin/python
# exact versions of every package the reference results were produced with (make lock rewrites it)
LOCK := requirements/lock.txt
STAMP := $(VENV)/.installed

.PHONY: study tune test lab kernel install lock clean-results teacher ship-teacher verify reference

# a new venv takes about 6.3 GB (torch's CUDA build): say so before pip runs out of disk half-way
VENV_GB := 7
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -c 'import shutil, sys; free = shutil.disk_usage(".").free / 2**30; \
	  sys.exit(free < $(VENV_GB) and f"make install: the virtual environment needs about $(VENV_GB) GB free, $(CURDIR) has {free:.1f} GB")'
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

# equal tuning budget per method on the tune split, then best vs default setting on val (idd_lib/tuning.py)
tune: $(STAMP)
	$(PY) -m idd_lib.tuning --profile $(PROFILE) --options "$(OPTIONS)" $(if $(METHODS),--methods "$(METHODS)") \
	  $(if $(METHOD_OPTIONS),--method-options "$(METHOD_OPTIONS)") \
	  --trials $(TRIALS) --tune-seeds $(TUNE_SEEDS) --seeds $(SEEDS) --executor "$(EXECUTOR)" \
	  --workers "$(or $(WORKERS),1)" $(if $(THREADS),--threads $(THREADS))

# the profile's teacher trained here from scratch (never the shipped one), into results/cache/teachers/;
# RETRAIN=1 also replaces one trained here before; PRIOR=0 (or 2): the teacher of the prior sweep at that prior
teacher: $(STAMP)
	$(PY) -m idd_lib.teachers train --profile $(PROFILE) --options "$(OPTIONS)" $(if $(RETRAIN),--retrain) \
	  $(if $(PRIOR),--prior $(PRIOR))

# that trained teacher written into the package (idd_lib/teachers/<profile>/) with its manifest
ship-teacher: $(STAMP)
	$(PY) -m idd_lib.teachers ship --profile $(PROFILE) --options "$(OPTIONS)" $(if $(PRIOR),--prior $(PRIOR))

# results/<profile>/ compared with the reference results reference/<profile>/ (exit 1: not reproduced)
verify: $(STAMP)
	$(PY) -m idd_lib.verify --profile $(PROFILE)

# reference/<profile>/ written from results/<profile>/
reference: $(STAMP)
	$(PY) -m idd_lib.verify --write-reference --profile $(PROFILE)

test: $(STAMP)
	$(PY) -m pytest -q

# CurveZMQ keys for the kernels Lab starts (their kernelspec supports them): no plain-TCP warning.
# Rooted at the repository, so notebooks/ and results/ (REPORT.html, figures, tables) are both in the
# file browser; as root (a container) Jupyter refuses to start without --allow-root
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --KernelManager.transport_encryption=auto --ServerApp.root_dir=. \
	  $(if $(filter 0,$(shell id -u)),--allow-root) --LabApp.default_url=/lab/tree/notebooks

# the kernel for every Jupyter of this user (VS Code, a system JupyterLab), not only this venv's
kernel: $(STAMP)
	$(PY) -m idd_lib.notebook install-kernel --user

# the CUDA libraries torch's Linux wheel pulls in are marked Linux-only, as torch's own metadata does
lock:
	{ echo "# Exact versions of every package (make lock; Python 3.11, Linux x86_64). Loose ranges: pyproject.toml."; \
	  $(PY) -m pip freeze --all --exclude-editable | grep -v '^pip==' \
	  | sed -E '/^(cuda-|nvidia-|triton==)/ s/$$/ ; platform_system == "Linux"/'; } > $(LOCK)

# the results folder the code writes to: IDD_RESULTS when set (idd_lib.paths), else results/
clean-results:
	rm -rf "$${IDD_RESULTS:-results}/$(PROFILE)"
