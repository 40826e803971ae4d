"""Test-session setup shared by every test module, and the fixtures that several modules use."""

import os

import pytest

# Idle OpenMP threads spin while waiting by default; with the 2 cores shared by other jobs that made torch's
# small element-wise ops 10 to 60x slower. Passive waiting costs nothing on an idle machine. Set here, before
# any test module imports torch; a value set by the caller wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """`recipe --scale tiny` once per test session; its root holds models/demo (the model folder) and work/."""
    import torch  # here, not at the top: after the thread setting above

    from training.recipe import run_recipe

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the 2-core machine is shared: one thread is faster for these small tensors
    try:
        with torch.inference_mode(False), torch.enable_grad():  # the recipe trains, whatever the caller's mode
            torch.manual_seed(0)
            root = tmp_path_factory.mktemp("recipe")
            run_recipe(root / "models" / "demo", scale="tiny", work=root / "work")
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.fixture
def fresh_precision():
    """accelerate keeps one mixed precision per process: start and leave this test with a fresh state."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()
