"""Packaging rules: requirements.txt == [project].dependencies, no torch, the pack imports without ComfyUI."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from comfy_server import pack_modules

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dependencies_match_and_torch_is_not_listed():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == _requirements()
    names = [re.split(r"[<>=!~ ;\[]", req, maxsplit=1)[0].lower() for req in _requirements()]
    assert not {"torch", "torchvision", "torchaudio"} & set(names)


def test_registry_metadata():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert re.fullmatch(r"\d+\.\d+\.\d+", data["project"]["version"])
    assert "comfyui" not in data["project"]["name"].lower()
    assert data["project"]["license"] == {"file": "LICENSE"}
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert {"PublisherId", "DisplayName", "requires-comfyui"} <= set(data["tool"]["comfy"])


def test_pack_imports_without_comfyui_and_never_as_top_level_nodes():
    code = ("import sys, importlib.util; root = sys.argv[1]; "
            "spec = importlib.util.spec_from_file_location('somepack', root + '/__init__.py', "
            "submodule_search_locations=[root]); m = importlib.util.module_from_spec(spec); "
            "sys.modules['somepack'] = m; spec.loader.exec_module(m); "
            "assert 'nodes' not in sys.modules and 'comfy' not in sys.modules and 'folder_paths' not in sys.modules; "
            "assert m.WEB_DIRECTORY == './web' and len(m.NODE_CLASS_MAPPINGS) >= 8; print('ok')")
    result = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_core_library_never_imports_comfyui():
    for path in (ROOT / "pixart_core").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(comfy|folder_paths|nodes|diffusers|transformers)\b", text, re.M), path


def _runtime_imports() -> set[str]:
    """Top-level module names imported anywhere (module level or inside functions) by the shipped code."""
    import ast

    found: set[str] = set()
    files = [ROOT / "__init__.py", *(ROOT / "pixart_core").rglob("*.py"), *(ROOT / "nodes").rglob("*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_every_runtime_dependency_is_imported_and_every_import_is_a_dependency():
    imported = _runtime_imports()
    modules = set(pack_modules())  # what the real-host tests require of ComfyUI's Python
    unused = sorted(modules - imported)
    assert not unused, f"requirements.txt lists packages no runtime code imports: {unused}"
    host_provided = {"torch", "comfy", "folder_paths", "latent_preview"}  # ComfyUI owns these
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in host_provided}
    assert third_party <= modules, f"imported but not in requirements.txt: {sorted(third_party - modules)}"
