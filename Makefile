# The README's two commands: `make demo` (the main job) and `make test`. Both as root, both idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KERNELS := $(VENV)/.kernels-compiled
PYNTM := $(VENV)/.pyntm-installed

.PHONY: install system-deps test demo clean

install: $(STAMP) $(KERNELS)

$(STAMP): setup.cfg pyproject.toml controller/api/ndt_api.proto
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. controller/api/ndt_api.proto
	touch $(STAMP)

# the twin's Numba kernels, compiled once into their on-disk cache so a first prediction is fast
$(KERNELS): $(STAMP) twin/models/kernels.py twin/models/inference.py
	$(PY) -c 'from twin.models.inference import compile_kernels; compile_kernels()'
	touch $(KERNELS)

# pyNTM for the agreement test (tests/unit/test_pyntm_agreement.py); it pins an older networkx than ndt
# needs (and runs on ndt's), so it goes in without its dependencies
$(PYNTM): $(STAMP)
	$(PY) -m pip install --quiet --no-deps pyntm==5.0.0
	touch $(PYNTM)

system-deps:
	@if [ -x scripts/install-system-deps.sh ]; then scripts/install-system-deps.sh; fi

test: install system-deps $(PYNTM)
	$(VENV)/bin/pytest -q

demo: install system-deps
	$(VENV)/bin/ndt demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
