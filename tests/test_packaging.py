"""The pack installs and loads the way ComfyUI and ComfyUI-Manager load it."""

import importlib.util
import re
import sys
import tomllib
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _requirement_lines(name: str = "requirements.txt") -> list[str]:
    lines = (ROOT / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_requirements_install_line_by_line_without_options_or_torch_pin():
    for line in _requirement_lines():
        assert not line.startswith("-"), f"pip option in requirements.txt: {line}"
        name = re.split(r"[<>=!~; \[]", line, maxsplit=1)[0].lower()
        if name in ("torch", "torchvision", "torchaudio"):
            assert line.lower() == name, f"{name} must not be pinned (ComfyUI users bring their own): {line}"


def test_pyproject_dependencies_equal_requirements_and_comfy_table_present():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["dependencies"] == _requirement_lines()
    extras = project["project"]["optional-dependencies"]
    assert extras["train"] == _requirement_lines("requirements-train.txt")
    assert extras["dev"] == _requirement_lines("requirements-dev.txt")
    comfy = project["tool"]["comfy"]
    for key in ("PublisherId", "DisplayName", "requires-comfyui"):
        assert comfy[key], key



def _diffusers_floor(lines: list[str], where: str):
    """The version in the one ``diffusers>=X`` requirement of `lines`."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    reqs = [Requirement(line) for line in lines if Requirement(line).name.lower() == "diffusers"]
    assert len(reqs) == 1, f"{where}: expected one diffusers requirement, found {len(reqs)}"
    floors = [Version(s.version) for s in reqs[0].specifier if s.operator == ">="]
    assert len(floors) == 1, f"{where}: the diffusers requirement {reqs[0]} states no single >= floor"
    return floors[0]


def test_the_diffusers_floor_is_stated_alike_and_the_tests_run_at_or_above_it():
    """The floor is the lowest diffusers this suite was run with (docs/testing.md, "The diffusers floor"); a
    diffusers older than it cannot silently pass here."""
    from importlib import metadata

    from packaging.version import Version

    floor = _diffusers_floor(_requirement_lines(), "requirements.txt")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert _diffusers_floor(project["project"]["dependencies"], "pyproject.toml") == floor
    installed = Version(metadata.version("diffusers"))
    assert installed >= floor, (f"diffusers {installed} is installed, below the stated floor {floor}: "
                                "install a diffusers at or above it (pip install -r requirements.txt)")

# What the releases of the packages that decide numpy require of it, from the Requires-Dist of their PyPI wheels
# for Linux x86_64 and Python 3.10 to 3.13 (read with `pip download --no-deps`). Releases after the newest listed
# are taken to require what it does. For OpenCV 4.8 to 4.11 the lower bound depends on the Python version (1.21.2
# to 1.26.0); what matters is that they take numpy 1 and 2 alike.
OPENCV_NUMPY = {"4.8.0.76": ">=1.21.2", "4.10.0.84": ">=1.21.2", "4.11.0.86": ">=1.21.2",
                "4.12.0.88": ">=2,<2.3.0", "4.13.0.92": ">=2", "4.14.0.94": ">=2", "5.1.0.95": ">=2"}
KNOWN_NUMPY = {
    "mediapipe": {"0.10.21": "<2"},  # the last release with mediapipe.solutions and its models
    "opencv-python-headless": OPENCV_NUMPY,
    "opencv-python": OPENCV_NUMPY,  # VideoHelperSuite's
    "opencv-contrib-python": OPENCV_NUMPY,  # pulled by mediapipe
}
NUMPY_RELEASES = ["1.21.2", "1.23.5", "1.26.4", "2.0.2", "2.2.6", "2.3.5", "2.4.6"]
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]  # ComfyUI's range (requires-python >= 3.10)
LATER = "999"  # stands for every release after the newest in the table


def _numpy_majors(spec) -> set[int]:
    """Which numpy major versions (1, 2) a numpy specifier admits."""
    from packaging.version import Version

    return {Version(v).major for v in NUMPY_RELEASES if spec.contains(v)}


def _numpy_spec(package: str, release: str):
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    table = KNOWN_NUMPY[package]
    newest = max(table, key=Version)
    return SpecifierSet(table.get(release, table[newest] if Version(release) > Version(newest) else ""))


def _numpy_demands(python: str) -> dict[str, set[int]]:
    """For each requirement line that applies on `python`: the numpy majors on which every release it admits (and
    so the one pip picks when the line is installed alone, as ComfyUI-Manager does) can be installed."""
    from packaging.requirements import Requirement

    demands = {}
    for line in _requirement_lines():
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"python_version": python, "sys_platform": "linux",
                                                               "platform_system": "Linux"}):
            continue
        name = req.name.lower()
        if name == "numpy":
            demands[line] = _numpy_majors(req.specifier)
        elif name in KNOWN_NUMPY:
            admitted = [v for v in [*KNOWN_NUMPY[name], LATER] if req.specifier.contains(v, prereleases=True)]
            assert admitted, f"{line}: admits no release in KNOWN_NUMPY; add its numpy requirement there"
            demands[line] = set.intersection(*(_numpy_majors(_numpy_spec(name, v)) for v in admitted))
    return demands


def test_no_requirement_line_pulls_numpy_against_another_when_installed_line_by_line():
    """ComfyUI-Manager runs `pip install <line>` per line: if one line's newest release needs numpy 2 and another
    pins numpy 1 (mediapipe 0.10.21), pip moves numpy back and forth and reports a conflict."""
    for python in PYTHONS:
        demands = _numpy_demands(python)
        common = set.intersection({1, 2}, *demands.values())
        assert common, f"Python {python}: no numpy satisfies every line: " + "; ".join(
            f"{line} -> numpy {sorted(majors)}.x" for line, majors in demands.items())


def test_the_numpy_table_agrees_with_the_installed_packages_metadata():
    """Where mediapipe or OpenCV is installed here, its own metadata must say what KNOWN_NUMPY says."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    checked = []
    for package in KNOWN_NUMPY:
        try:
            version, requires = metadata.version(package), metadata.requires(package) or []
        except metadata.PackageNotFoundError:
            continue
        spec = SpecifierSet()
        for line in requires:
            req = Requirement(line)
            if req.name.lower() == "numpy" and (req.marker is None or req.marker.evaluate({"extra": ""})):
                spec &= req.specifier
        assert _numpy_majors(spec) == _numpy_majors(_numpy_spec(package, version)), \
            f"{package} {version} requires numpy {spec}; KNOWN_NUMPY says {_numpy_spec(package, version)}"
        checked.append(package)
    if not checked:
        pytest.skip("neither mediapipe nor OpenCV is installed here")


def _load_pack_like_comfyui():
    """Import the pack from its folder under a package name, with ComfyUI's own `nodes` module present."""
    comfy_nodes = types.ModuleType("nodes")  # ComfyUI's top-level nodes.py
    saved = sys.modules.get("nodes")
    sys.modules["nodes"] = comfy_nodes
    try:
        spec = importlib.util.spec_from_file_location(
            "comfyui_directanimator_under_test", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        assert sys.modules["nodes"] is comfy_nodes, "the pack must not replace ComfyUI's nodes module"
        return module
    finally:
        if saved is None:
            sys.modules.pop("nodes", None)
        else:
            sys.modules["nodes"] = saved


def test_pack_exports_mappings_with_display_names_categories_and_tooltips():
    pack = _load_pack_like_comfyui()
    classes, names = pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS
    assert classes, "the pack registers no nodes"
    assert set(names) == set(classes)
    for key, cls in classes.items():
        assert key.startswith("DirectAnimator"), key
        assert cls.CATEGORY.startswith("DirectAnimator"), key
        assert callable(getattr(cls, cls.FUNCTION)), key
        assert len(cls.RETURN_TYPES) == len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES))
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, entry in spec.get(section, {}).items():
                options = entry[1] if len(entry) > 1 else {}
                assert options.get("tooltip"), f"{key}.{name} has no tooltip"
                if entry[0] in ("INT", "FLOAT"):
                    assert {"default", "min", "max"} <= set(options), f"{key}.{name} lacks default/min/max"
                    assert options["min"] <= options["default"] <= options["max"], f"{key}.{name}"
