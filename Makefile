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
RUN     ?=
FAIL    ?=
PORT    ?= 6006
NPROC   ?= 1
export OMP_NUM_THREADS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: setup test train learn curves profile report claims view tensorboard lint bench gpu-check clean

TORCH_VERSION := 2.13.0
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu

# torch==$(TORCH_VERSION) on every machine: with a working nvidia-smi, the CUDA build (PyPI's
# default Linux wheel), and setup fails in one line if CUDA is then unusable; without a GPU,
# the CPU build from PyTorch's CPU index when it answers within 5 s, else what pip finds.
.venv/.installed: pyproject.toml
	python3 -m venv .venv
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "setup: GPU found; installing torch==$(TORCH_VERSION) (CUDA build)"; \
		$(PY) -m pip install --quiet torch==$(TORCH_VERSION) || exit 1; \
		$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { \
			echo "setup: nvidia-smi sees a GPU but torch $(TORCH_VERSION) cannot use it (torch.cuda.is_available() is False: driver $$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1) too old for CUDA $$($(PY) -c 'import torch; print(torch.version.cuda)')?)" >&2; exit 1; }; \
	elif $(PY) -c "import urllib.request; urllib.request.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=5)" >/dev/null 2>&1; then \
		echo "setup: no GPU; torch==$(TORCH_VERSION) CPU build from $(TORCH_CPU_INDEX)"; \
		$(PY) -m pip install --quiet --timeout 30 --index-url $(TORCH_CPU_INDEX) torch==$(TORCH_VERSION) || exit 1; \
	else \
		echo "setup: no GPU; $(TORCH_CPU_INDEX) unreachable, torch==$(TORCH_VERSION) from pip's configured index"; \
		$(PY) -m pip install --quiet torch==$(TORCH_VERSION) || exit 1; \
	fi
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps holistictraceanalysis==0.5.0
	@$(PY) -c "import torch; print('setup: torch', torch.__version__, '(CUDA', (torch.version.cuda or 'none') + ')')"
	touch $@

setup: .venv/.installed

test: lint
	$(PY) -m pytest -q -W error::FutureWarning

lint: .venv/.installed
	$(PY) -m ruff check energy_flow profiler tests examples
	$(PY) -m mypy

train: .venv/.installed
	$(PY) -m energy_flow train --preset $(PRESET) --steps $(or $(STEPS),20)

# The learning benchmark: STEPS (default 300) steps on the preset's defaults, ending with the
# figures (mean loss of the first 20 / last 50 steps, completion, flows per step, step time).
learn: .venv/.installed
	@mkdir -p runs
	$(PY) -m energy_flow train --preset $(PRESET) --steps $(or $(STEPS),300) --summary \
		--out runs/learn-$(PRESET).jsonl

# The learning-curves plot of README: debug (300 steps) and experiment (50 steps).
curves: .venv/.installed
	@test -f runs/learn-debug.jsonl || $(MAKE) learn PRESET=debug STEPS=300
	@test -f runs/learn-experiment.jsonl || $(MAKE) learn PRESET=experiment STEPS=50
	@mkdir -p docs
	$(PY) -m energy_flow curves debug=runs/learn-debug.jsonl \
		experiment=runs/learn-experiment.jsonl --out docs/learning_curves.png

# Launched through torchrun: NPROC ranks on this machine (DistributedDataParallel, gloo on
# CPU, NCCL on CUDA), one run directory for all of them; the cores shared between ranks.
profile: export OMP_NUM_THREADS := $(shell n=$$(( $$(nproc) / $(NPROC) )); [ $$n -ge 1 ] || n=1; echo $$n)
profile: .venv/.installed
	$(PY) -m torch.distributed.run --standalone --nproc-per-node $(NPROC) \
		-m profiler profile --preset $(PRESET) $(if $(STEPS),--steps $(STEPS)) \
		$(if $(NAME),--name $(NAME)) --variant $(VARIANT) --pool $(POOL) \
		--device $(DEVICE) --mode $(MODE)

report: .venv/.installed
	@test -n "$(BASE)" -a -n "$(NEW)" || { echo "usage: make report BASE=runs/<a> NEW=runs/<b> [FAIL=5%]"; exit 2; }
	$(PY) -m profiler report $(BASE) $(NEW) $(if $(FAIL),--fail-on-regression $(FAIL))

view: .venv/.installed
	@test -n "$(RUN)" || { echo "usage: make view RUN=runs/<name>"; exit 2; }
	$(PY) -m profiler view $(RUN)

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
