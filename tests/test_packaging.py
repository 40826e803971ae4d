"""The pack installs and loads the way ComfyUI and ComfyUI-Manager load it."""

import importlib.util
import re
import sys
import tomllib
import types
from pathlib import Path

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
