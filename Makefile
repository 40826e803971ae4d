# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
OUT ?= out/demo
REAL ?= ../shared/data/real/dance_1080x1920_24fps.mp4
export HF_HUB_OFFLINE := 1
# torch on 2 busy cores: idle OpenMP threads that spin slow small ops 10x or more
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup test demo demo-real claims bench clean

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

# the bundled model driven by the real dance video: mediapipe cues of a real person, the full real path
demo-real: setup
	$(PY) -m directanimator demo --driving $(REAL) --stride 2 --out out/real

# docs/evidence.md: the paper's claims measured on ground truth (about 20 minutes on 2 CPU cores)
claims: setup
	$(PY) benchmarks/claims.py

bench: setup
	$(PY) benchmarks/cues.py
	$(PY) benchmarks/world.py
	$(PY) benchmarks/prepare.py
	$(PY) benchmarks/precision.py

clean:
	rm -rf $(VENV) out .pytest_cache
