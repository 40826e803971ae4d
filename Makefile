# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
OUT ?= out/demo
export HF_HUB_OFFLINE := 1
# torch on 2 busy cores: idle OpenMP threads that spin slow small ops 10x or more
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup test demo bench clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: requirements.txt requirements-train.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install $(TORCH_PIN)
	$(PY) -m pip install -r requirements.txt -r requirements-train.txt -r requirements-dev.txt
	touch $@

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) -m directanimator demo --out $(OUT)

bench: setup
	$(PY) benchmarks/cues.py
	$(PY) benchmarks/world.py

clean:
	rm -rf $(VENV) out .pytest_cache
