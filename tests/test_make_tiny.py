"""`make-tiny` from a fresh clone: the example workflows' model files, and the fixtures stay out of runtime code."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from pixart_core.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
# (workflow node input, ComfyUI models folder it names a file of)
_MODEL_INPUTS = {"model_name": "diffusion_models", "t5_name": "text_encoders", "vae_name": "vae",
                 "controlnet_name": "controlnet", "hed_name": "annotators", "encoder_name": "layer_model",
                 "engine": "layer_model"}
_NOT_FILES = {"attention matte"}  # engine choices that name no model file


def _workflow_model_files() -> set[str]:
    """models/<folder>/<file> for every model file an API-format example workflow names."""
    files = set()
    for path in (ROOT / "workflows" / "api").glob("*.json"):
        for node in json.loads(path.read_text()).values():
            for name, folder in _MODEL_INPUTS.items():
                if isinstance(node["inputs"].get(name), str) and node["inputs"][name] not in _NOT_FILES:
                    files.add(f"{folder}/{node['inputs'][name]}")
    return files


def test_make_tiny_without_a_tokenizer_writes_every_workflow_model(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert main(["make-tiny", str(tmp_path)]) == 0
    assert "no T5 tokenizer given" in caplog.text
    models = tmp_path / "comfyui" / "models"
    assert len(_workflow_model_files()) >= 5
    for rel in _workflow_model_files():
        assert (models / rel).exists(), rel
    assert not (tmp_path / "pipelines").exists()  # pipeline roots need the tokenizer
    _check_controlnet_fixtures(tmp_path)


def _check_controlnet_fixtures(out: Path) -> None:
    """Tiny ControlNets in every layout hold the same branch for the tiny α-1024-MS base; HED is full size, fp16."""
    import torch

    from pixart_core import load_controlnet, load_transformer
    from pixart_core.controlnet import load_hed
    from pixart_core.testing.controlnet import CONTROLNET_NAMES

    base = load_transformer(out / "transformers" / "alpha-1024-ms.pth")
    nets = [load_controlnet(out / "controlnets" / name) for name in CONTROLNET_NAMES]
    reference = nets[0].state_dict()
    for net in nets:
        assert (net.num_blocks, net.hidden_size, net.num_heads) == (1, base.config.hidden_size, base.config.num_heads)
        assert all(torch.equal(value, reference[key]) for key, value in net.state_dict().items())
    combined = out / "comfyui" / "models" / "controlnet" / "PixArt-XL-2-1024-ControlNet.pth"
    assert "official combined" in load_controlnet(combined).summary
    combined_base = load_transformer(combined).state_dict()
    assert all(torch.equal(value, combined_base[key]) for key, value in base.state_dict().items())
    hed = load_hed(out / "comfyui" / "models" / "annotators" / "ControlNetHED.pth", dtype=torch.float16)
    assert sum(p.numel() for p in hed.parameters()) > 14_000_000
    raw = torch.load(out / "hed" / "ControlNetHED.pth", weights_only=True)
    assert {t.dtype for t in raw.values()} == {torch.float16}


def test_make_tiny_refuses_a_tokenizer_folder_without_a_tokenizer(tmp_path, caplog):
    assert main(["make-tiny", str(tmp_path / "out"), "--tokenizer", str(tmp_path)]) == 2
    assert "--tokenizer" in caplog.text and not (tmp_path / "out").exists()


def test_runtime_code_never_imports_the_test_fixtures():
    """pixart_core.testing is for tests and benchmarks; only the make-tiny command imports it, inside itself."""
    pattern = re.compile(r"^(\s*)(?:from\s+(?:\.+|[\w.]*pixart_core\.)testing\b|import\s+[\w.]*pixart_core\.testing\b)",
                         re.M)
    runtime = [*(ROOT / "pixart_core").rglob("*.py"), *(ROOT / "nodes").rglob("*.py"), ROOT / "__init__.py"]
    for path in runtime:
        if "testing" in path.relative_to(ROOT).parts:
            continue
        for match in pattern.finditer(path.read_text()):
            assert path.name == "__main__.py" and match.group(1), f"{path} imports pixart_core.testing"
