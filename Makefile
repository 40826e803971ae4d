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

.PHONY: setup test test-fast test-deepspeed demo demo-real claims bench clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: requirements.txt requirements-train.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install $(TORCH_PIN)
	$(PY) -m pip install -r requirements.txt -r requirements-train.txt -r requirements-dev.txt
	touch $@

test: setup
	$(PY) -m pytest -q

# the tests not marked slow (pyproject.toml's `slow` marker): a few minutes on 2 CPU cores
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# DeepSpeed ZeRO-2/3 on 2 CPU processes (optional dependency, not in `setup`: its tests skip without it; ~3 min)
test-deepspeed: setup
	$(PY) -m pip install -q "deepspeed>=0.19"
	$(PY) -m pytest -q tests/test_training_deepspeed.py

demo: setup
	$(PY) -m directanimator demo --out $(OUT)

# the bundled model driven by the real dance video: mediapipe cues of a real person, the full real path
demo-real: setup
	$(PY) -m directanimator demo --driving $(REAL) --stride 2 --out out/real

# docs/evidence.md: the paper's claims measured on ground truth (about 20 minutes on 2 CPU cores)
claims: setup
	$(PY) -m benchmarks.claims

bench: setup
	$(PY) -m benchmarks.cues
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.world
	$(PY) -m benchmarks.prepare
	$(PY) -m benchmarks.prepare --scale
	$(PY) -m benchmarks.prepare --ingest
	$(PY) -m benchmarks.precision

clean:
	rm -rf $(VENV) out .pytest_cache
