"""Shared test fixtures: the real T5 tokenizer files and the pack imported under a fixed package name."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
T5_TOKENIZER_DIR = ROOT.parent / "shared" / "testdata" / "t5_tokenizer"

torch.manual_seed(0)


@pytest.fixture(scope="session")
def t5_tokenizer_dir() -> Path:
    """The real T5 v1.1 tokenizer files (../shared/testdata/t5_tokenizer); skip when absent."""
    if not (T5_TOKENIZER_DIR / "tokenizer.json").exists():
        pytest.skip(f"real T5 tokenizer files not found at {T5_TOKENIZER_DIR}")
    return T5_TOKENIZER_DIR


@pytest.fixture(scope="session")
def tiny_suite(tmp_path_factory, t5_tokenizer_dir) -> Path:
    """`python -m pixart_core make-tiny` output (transformers/, t5/, vae/, pipelines/, comfyui/models/)."""
    from pixart_core.testing.suite import write_tiny_suite

    out = tmp_path_factory.mktemp("tiny")
    write_tiny_suite(out, tokenizer_dir=t5_tokenizer_dir)
    return out


@pytest.fixture(scope="session")
def user_models_dir(tiny_suite, t5_tokenizer_dir, tmp_path_factory) -> Path:
    """A models folder like a ComfyUI user's, of make-tiny's files; outside ComfyUI the T5 tokenizer must sit
    next to the weights."""
    models = tmp_path_factory.mktemp("models")
    for folder in (tiny_suite / "comfyui" / "models").iterdir():
        (models / folder.name).mkdir()
        for item in folder.iterdir():
            (models / folder.name / item.name).symlink_to(item)
    for item in t5_tokenizer_dir.iterdir():
        (models / "text_encoders" / item.name).symlink_to(item)
    return models


@pytest.fixture(scope="module")
def nodes(pack, user_models_dir):
    """The pack's node classes, finding their models in `user_models_dir` (PIXART_ATELIER_MODELS)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIXART_ATELIER_MODELS", str(user_models_dir))
        yield pack.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def sigma(nodes):
    """(model, t5, positive, negative) from the nodes: the tiny Σ-1024 and T5, "A Red Fox in snow" vs ""."""
    # fp32, not auto: auto is bf16 on CPUs with native bf16, and the node tests compare with fp32 references
    model, _ = nodes["AtelierModelLoader"]().load("PixArt-Sigma-XL-2-1024-MS.pth", "fp32")["result"]
    t5 = nodes["AtelierT5Loader"]().load("t5xxl_fp16.safetensors", "fp32", "cpu")[0]
    positive, negative = nodes["AtelierT5TextEncode"]().encode(t5, model, "A Red Fox in snow", "")
    return model, t5, positive, negative


def import_pack(name: str = "pixart_atelier"):
    """Import the repository root as the ComfyUI pack package `name` (as ComfyUI's loader does)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def pack():
    return import_pack()


@pytest.fixture(scope="module")
def one_torch_thread():
    """The tiny model on 2 shared cores: OpenMP threads spinning against other processes cost 50x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sigma_pipe(tiny_suite):
    """make-tiny's Σ-256 pipeline, the layered-generation tests' model."""
    from pixart_core.pipeline import PixArtPipeline

    return PixArtPipeline.from_pretrained(tiny_suite / "pipelines" / "sigma-256")


SHAPES_WORLD_MISSING = ("the trained shapes world (tests/fixtures/shapes_world) is missing from this checkout; "
                        "train it with tools/train_shapes_world.py --out tests/fixtures/shapes_world")


@pytest.fixture(scope="module")
def world_dir():
    """The committed shapes-world pipeline folder; skips (saying why) while it is not committed."""
    from pixart_core.testing import shapes_world

    if not (shapes_world.FIXTURE_DIR / "model_index.json").is_file():
        pytest.skip(SHAPES_WORLD_MISSING)
    return shapes_world.FIXTURE_DIR


@pytest.fixture(scope="module")
def world_pipe(world_dir):
    from pixart_core.testing import shapes_world

    return shapes_world.load_pipeline()
