# Every target works as the first command on a fresh clone: it builds .venv when missing.
PY      := .venv/bin/python
PRESET  ?= debug
STEPS   ?=
NAME    ?=
VARIANT ?= after
POOL    ?= off
DEVICE  ?= auto
MODE    ?= full
BASE    ?=
NEW     ?=
FAIL    ?=
PORT    ?= 6006
export OMP_NUM_THREADS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: setup test train profile report claims tensorboard lint bench gpu-check clean

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	# A CUDA machine gets the user's normal torch; a CPU machine gets the CPU build
	# pip finds locally (no multi-GB CUDA download).
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PY) -m pip install --quiet torch; \
	else \
		$(PY) -m pip install --quiet torch==2.13.0; \
	fi
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

setup: .venv/.installed

test: .venv/.installed
	$(PY) -m pytest -q -W error::FutureWarning

lint: .venv/.installed
	$(PY) -m ruff check energy_flow profiler tests

train: .venv/.installed
	$(PY) -m energy_flow train --preset $(PRESET) --steps $(or $(STEPS),20)

profile: .venv/.installed
	$(PY) -m profiler profile --preset $(PRESET) $(if $(STEPS),--steps $(STEPS)) \
		$(if $(NAME),--name $(NAME)) --variant $(VARIANT) --pool $(POOL) \
		--device $(DEVICE) --mode $(MODE)

report: .venv/.installed
	@test -n "$(BASE)" -a -n "$(NEW)" || { echo "usage: make report BASE=runs/<a> NEW=runs/<b> [FAIL=5%]"; exit 2; }
	$(PY) -m profiler report $(BASE) $(NEW) $(if $(FAIL),--fail-on-regression $(FAIL))

claims: .venv/.installed
	$(PY) -m profiler claims --device $(DEVICE)

tensorboard: .venv/.installed
	@test -d runs || { echo "no runs/ yet: make profile first"; exit 2; }
	.venv/bin/tensorboard --logdir runs --host 127.0.0.1 --port $(PORT)

bench: .venv/.installed
	$(PY) -m energy_flow bench --preset $(PRESET)

# On a CUDA machine: the GPU-marked tests (none may skip) and live checks -> reports/gpu-check/.
# Without CUDA: one line and exit status 2.
gpu-check: .venv/.installed
	$(PY) -m profiler.gpucheck

clean:
	rm -rf runs .pytest_cache
