"""PixArt transformer loading: layout/variant detection, cross-layout parity, dtypes, overrides, bad files."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import save_file

from pixart_core.checkpoint_io import StateDictReader
from pixart_core.errors import CheckpointError
from pixart_core.pixart.config import PRESETS
from pixart_core.pixart.convert import diffusers_to_official, official_to_diffusers
from pixart_core.pixart.detect import detect
from pixart_core.pixart.load import inspect_transformer, load_transformer
from pixart_core.testing.transformers import (TINY_HEAD_DIM, TINY_TRANSFORMER_NAMES, diffusers_config_json,
                                              official_shapes, tiny_transformer_config, tiny_variant,
                                              write_tiny_transformers)

#: tiny checkpoint name -> (expected PixArtConfig.variant, expected Detection.layout, expected key prefix)
TINY_CHECKPOINTS: dict[str, tuple[str, str, str]] = {
    "alpha-256.pth": ("alpha-256-d2", "official", ""),
    "alpha-512.pth": ("alpha-512-d2", "official", ""),
    "alpha-1024-ms.pth": ("alpha-1024-ms-d2", "official", ""),
    "alpha-1024-ms.safetensors": ("alpha-1024-ms-d2", "official", ""),
    "alpha-1024-ms-module.pth": ("alpha-1024-ms-d2", "official", "module."),
    "alpha-1024-ms-diffusers": ("alpha-1024-ms-d2", "diffusers", ""),
    "alpha-1024-ms-controlnet.pth": ("alpha-1024-ms-d2", "controlnet-official", "base_model."),
    "sigma-256.pth": ("sigma-256-d2", "official", ""),
    "sigma-512.pth": ("sigma-512-d2", "official", ""),
    "sigma-1024.pth": ("sigma-1024-d2", "official", ""),
    "sigma-2k.pth": ("sigma-2k-d2", "official", ""),
    "sigma-1024.safetensors": ("sigma-1024-d2", "official", ""),
    "sigma-512-net.safetensors": ("sigma-512-d2", "official", "net."),
    "sigma-1024-model.safetensors": ("sigma-1024-d2", "official", "model."),
    "sigma-256-diffusers": ("sigma-256-d2", "diffusers", ""),
    "sigma-1024-diffusers": ("sigma-1024-d2", "diffusers", ""),
    "sigma-1024-diffusers-sharded": ("sigma-1024-d2", "diffusers", ""),
    "sigma-2k-diffusers": ("sigma-2k-d2", "diffusers", ""),
    "sigma-1024-diffusers-single.safetensors": ("sigma-1024-d2", "diffusers", ""),
    "sigma-1024-transformer-prefix.safetensors": ("sigma-1024-d2", "diffusers", "transformer."),
    "sigma-1024-comfy-diffusers.safetensors": ("sigma-1024-d2", "diffusers", "model.diffusion_model."),
    "sigma-1024-comfy-checkpoint.safetensors": ("sigma-1024-d2", "official", "model.diffusion_model."),
    "sigma-1024-900m.safetensors": ("sigma-1024-900m", "official", ""),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_transformers(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 12, generator=gen)  # [B, 4, H, W] non-square latent
    context = torch.randn(2, 7, 32, generator=gen)  # [B, L, caption_channels]
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])  # [B, L]
    return x, torch.tensor([999.0, 321.0]), context, mask


def _run(model, inputs) -> torch.Tensor:
    x, t, context, mask = inputs
    with torch.no_grad():
        return model(x, t, context, mask)  # [B, 8, H, W]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ---------------------------------------------------------------- detection of every tiny layout

@pytest.mark.parametrize("name", list(TINY_CHECKPOINTS))
def test_tiny_layout_loads_and_is_detected(tiny, name):
    variant, layout, prefix = TINY_CHECKPOINTS[name]
    model = load_transformer(tiny[name])
    det, cfg = model.detection, model.detection.config
    assert (cfg.variant, det.layout, det.prefix) == (variant, layout, prefix)
    want = tiny_transformer_config(tiny_variant(name))
    for field in ("hidden_size", "num_heads", "depth", "caption_channels", "sample_size", "pe_interpolation",
                  "micro_condition", "family", "model_max_length", "in_channels", "out_channels"):
        assert getattr(cfg, field) == getattr(want, field), field
    # diffusers Σ files carry no null caption (as on the HF hub); α-1024-MS diffusers keeps it, as the HF file
    assert cfg.has_null_caption == (layout != "diffusers" or cfg.micro_condition)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert cfg.head_dim == TINY_HEAD_DIM
    if layout != "diffusers":  # no config.json: the released head size gives the heads, as for real files
        assert any("head size 72" in line for line in det.evidence)


def test_the_tiny_writer_writes_exactly_the_expected_checkpoints(tiny):
    assert set(TINY_TRANSFORMER_NAMES) == set(TINY_CHECKPOINTS) == set(tiny)


@pytest.mark.parametrize("name, summary", [
    ("sigma-1024-diffusers", "PixArt-Σ 1024 (depth 2, width 144x2 heads, 300 tokens, PE x2, no micro-conditions; "
                             "diffusers layout)"),
    ("alpha-1024-ms.pth", "PixArt-α 1024-MS (depth 2, width 144x2 heads, 120 tokens, PE x2, micro-conditions; "
                          "official layout)"),
    ("sigma-2k.pth", "PixArt-Σ 2K (depth 2, width 144x2 heads, 300 tokens, PE x4, no micro-conditions; "
                     "official layout)"),
    ("sigma-256-diffusers", "PixArt-Σ 256 (depth 2, width 144x2 heads, 300 tokens, PE x0.5, no micro-conditions; "
                            "diffusers layout)"),
    ("alpha-1024-ms-controlnet.pth", "PixArt-α 1024-MS (depth 2, width 144x2 heads, 120 tokens, PE x2, "
                                     "micro-conditions; ControlNet official layout, base model only)"),
    ("sigma-1024-comfy-checkpoint.safetensors",
     "PixArt-Σ 1024 (depth 2, width 144x2 heads, 300 tokens, PE x2, no micro-conditions; "
     "official layout, prefix 'model.diffusion_model.')"),
    ("sigma-1024-900m.safetensors", "PixArt-Σ 1024 (depth 42, width 144x2 heads, 300 tokens, PE x2, "
                                    "no micro-conditions; official layout)"),
])
def test_summary_text(tiny, name, summary, caplog):
    with caplog.at_level(logging.INFO, logger="pixart_core.pixart.load"):
        model = load_transformer(tiny[name])
    assert model.detection.summary() == summary
    assert summary in caplog.text


def _full_shapes(variant: str, pos_embed: bool = True) -> dict[str, tuple[int, ...]]:
    cfg = PRESETS[variant].with_(has_null_caption=True)
    shapes = official_shapes(cfg)
    if pos_embed:
        shapes["pos_embed"] = (1, (cfg.sample_size // 2) ** 2, cfg.hidden_size)
    return shapes


def _diffusers_shapes(variant: str, null_caption: bool) -> dict[str, tuple[int, ...]]:
    meta = {k: torch.empty(s, device="meta") for k, s in _full_shapes(variant, pos_embed=False).items()
            if null_caption or k != "y_embedder.y_embedding"}
    return {k: tuple(v.shape) for k, v in official_to_diffusers(meta).items()}


@pytest.mark.parametrize("variant", list(PRESETS))
def test_full_size_official_detection_matches_preset(variant):
    det = detect(_full_shapes(variant), name=f"{variant}.pth")
    assert det.config == PRESETS[variant].with_(has_null_caption=True)
    assert det.config.num_heads == 16 and det.layout == "official"


@pytest.mark.parametrize("variant", ["alpha-1024-ms", "sigma-256", "sigma-512", "sigma-1024", "sigma-2k"])
def test_full_size_diffusers_detection_matches_preset(variant):
    preset = PRESETS[variant]
    config_json = diffusers_config_json(preset, explicit=not preset.micro_condition)  # HF α-1024 has no PE key
    det = detect(_diffusers_shapes(variant, preset.micro_condition), name="transformer",
                 diffusers_config=config_json)
    assert det.config == preset.with_(has_null_caption=preset.micro_condition)
    assert det.layout == "diffusers"
    assert det.summary().endswith("; diffusers layout)")


def test_family_from_model_index_else_a_recorded_guess():
    shapes = _diffusers_shapes("alpha-512", null_caption=False)
    config_json = diffusers_config_json(PRESETS["alpha-512"], explicit=False)
    alpha = detect(shapes, name="transformer", diffusers_config=config_json,
                   model_index={"_class_name": "PixArtAlphaPipeline"})
    assert alpha.config == PRESETS["alpha-512"].with_(has_null_caption=False)
    by_vae = detect(shapes, name="transformer", diffusers_config=config_json, vae_config={"scaling_factor": 0.18215})
    assert by_vae.config.family == "alpha"
    guess = detect(shapes, name="transformer", diffusers_config=config_json)
    assert guess.config.family == "sigma" and any("GUESS" in e for e in guess.evidence)
    named = detect(shapes, name="PixArt-XL-2-512x512-alpha.safetensors")  # no config: the file name decides
    assert (named.config.family, named.config.sample_size) == ("alpha", 64)


def test_pipeline_root_and_single_files_inside_folders(tiny, tmp_path):
    root = tmp_path / "PixArt-pipeline"
    shutil.copytree(tiny["sigma-1024-diffusers"], root / "transformer")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    assert load_transformer(root).detection.config.family == "alpha"  # model_index beats the guess
    assert load_transformer(root / "transformer").detection.config.family == "alpha"
    # a file inside a diffusers folder uses its config.json (PE x4 from config, not a guess)
    single = load_transformer(tiny["sigma-2k-diffusers"] / "diffusion_pytorch_model.safetensors")
    assert (single.detection.config.sample_size, single.detection.config.pe_interpolation) == (256, 4.0)
    shard = sorted(tiny["sigma-1024-diffusers-sharded"].glob("*-00002-of-00002.safetensors"))[0]
    assert load_transformer(shard).detection.config.depth == 2  # one shard loads the whole model
    # an fp16 variant next to the plain file is not merged into it
    folder = root / "transformer"
    shutil.copy(tiny["sigma-2k-diffusers"] / "diffusion_pytorch_model.safetensors",
                folder / "diffusion_pytorch_model.fp16.safetensors")
    key = "t_block.1.weight"
    assert torch.equal(load_transformer(folder).state_dict()[key],
                       load_transformer(tiny["sigma-1024-diffusers"]).state_dict()[key])
    assert inspect_transformer(folder).config == load_transformer(root).detection.config


# ---------------------------------------------------------------- parity between layouts and dtypes

PARITY_GROUPS = {
    "sigma-1024.pth": ["sigma-1024.safetensors", "sigma-1024-model.safetensors", "sigma-1024-diffusers",
                       "sigma-1024-diffusers-sharded", "sigma-1024-diffusers-single.safetensors",
                       "sigma-1024-transformer-prefix.safetensors", "sigma-1024-comfy-diffusers.safetensors",
                       "sigma-1024-comfy-checkpoint.safetensors"],
    "alpha-1024-ms.pth": ["alpha-1024-ms.safetensors", "alpha-1024-ms-module.pth", "alpha-1024-ms-diffusers",
                          "alpha-1024-ms-controlnet.pth"],
    "sigma-2k.pth": ["sigma-2k-diffusers"],
    "sigma-256.pth": ["sigma-256-diffusers"],
}


@pytest.mark.parametrize("reference", list(PARITY_GROUPS))
def test_same_weights_give_same_outputs_in_every_layout(tiny, inputs, reference):
    base = load_transformer(tiny[reference])
    expected = _run(base, inputs)
    assert expected.abs().mean() > 0.1  # a real, non-trivial output
    for name in PARITY_GROUPS[reference]:
        other = load_transformer(tiny[name])
        assert _max_diff(_run(other, inputs), expected) <= 1e-6, name
        for key, value in base.state_dict().items():
            if key != "y_embedder.y_embedding":
                assert torch.equal(other.state_dict()[key], value), (name, key)


def test_variants_differ(tiny, inputs):
    """Guard against the parity test passing trivially: other weights give other outputs."""
    assert _max_diff(_run(load_transformer(tiny["sigma-512.pth"]), inputs),
                     _run(load_transformer(tiny["sigma-1024.pth"]), inputs)) > 1e-2


@pytest.mark.parametrize("name", ["sigma-1024.pth", "sigma-1024.safetensors", "sigma-1024-diffusers"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_load(tiny, name, dtype):
    reference = load_transformer(tiny["sigma-1024.pth"]).state_dict()
    model = load_transformer(tiny[name], dtype=dtype)
    assert all(t.dtype == dtype for t in model.state_dict().values())
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key].to(dtype)), key


def test_diffusers_reads_the_tiny_folders_like_we_do(tiny):
    """The hand-written config.json and weights load in diffusers with the same numbers and settings."""
    diffusers = pytest.importorskip("diffusers")
    for name in ("sigma-1024-diffusers", "alpha-1024-ms-diffusers", "sigma-256-diffusers"):
        theirs, info = diffusers.PixArtTransformer2DModel.from_pretrained(tiny[name], output_loading_info=True)
        assert not info["missing_keys"] and not info["mismatched_keys"]
        ours = load_transformer(tiny[name])
        converted = diffusers_to_official(theirs.state_dict())
        for key, value in converted.items():
            assert torch.equal(ours.state_dict()[key], value), (name, key)
        assert theirs.pos_embed.interpolation_scale == ours.config.pe_interpolation
        assert theirs.use_additional_conditions == ours.config.micro_condition


# ---------------------------------------------------------------- overrides

def test_variant_override(tiny):
    model = load_transformer(tiny["sigma-1024-diffusers-single.safetensors"], variant="sigma-2k")
    cfg = model.detection.config
    assert (cfg.variant, cfg.sample_size, cfg.pe_interpolation, cfg.hidden_size) == ("sigma-2k-d2", 256, 4.0, 144)
    assert "variant 'sigma-2k' chosen by the caller" in model.detection.evidence[-1]
    alpha = load_transformer(tiny["sigma-1024-diffusers-single.safetensors"], variant="alpha-512")
    assert (alpha.detection.config.family, alpha.detection.config.model_max_length) == ("alpha", 120)
    tall = load_transformer(tiny["sigma-1024-900m.safetensors"], variant="sigma-1024-900m")
    assert tall.detection.config.depth == 42


@pytest.mark.parametrize("name, variant, message", [
    ("sigma-1024.pth", "alpha-1024-ms", "size/aspect-ratio embedders"),
    ("alpha-1024-ms.pth", "sigma-1024", "size/aspect-ratio embedders"),
    ("sigma-1024.pth", "alpha-512", "null caption has 300 tokens"),
    ("sigma-1024-900m.safetensors", "sigma-1024", "42 blocks"),
    ("sigma-1024.pth", "sigma-1024-900m", "2 blocks"),
    ("sigma-1024.pth", "sigma-4k", "unknown PixArt variant"),
])
def test_wrong_variant_override_errors(tiny, name, variant, message):
    with pytest.raises(CheckpointError, match=message) as err:
        load_transformer(tiny[name], variant=variant)
    assert name in str(err.value)


def test_explicit_config(tiny, inputs):
    cfg = tiny_transformer_config("sigma-1024").with_(has_null_caption=False)
    model = load_transformer(tiny["sigma-1024.pth"], config=cfg)
    assert model.config == cfg and "y_embedder.y_embedding" not in model.state_dict()
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_transformer(tiny["sigma-1024.pth"], config=cfg.with_(caption_channels=64))


# ---------------------------------------------------------------- files that must be refused

class NotATensor:
    """A custom class: unpickling it would run arbitrary code paths, so the loader must refuse it."""


def _official_state(tiny) -> dict[str, torch.Tensor]:
    with StateDictReader(tiny["sigma-1024.safetensors"]) as reader:
        return {k: reader.get(k) for k in reader.keys()}


def _bad_files(tiny, folder):
    """(path, substring the error must contain) for every kind of bad input."""
    cases = []

    def safetensors(name, tensors, message):
        save_file({k: v.clone() for k, v in tensors.items()}, str(folder / name))
        cases.append((folder / name, message))

    small = torch.zeros(4, 4)
    safetensors("t5-encoder.safetensors", {"shared.weight": small, "encoder.block.0.layer.0.SelfAttention.q.weight":
                                           small}, "T5 text encoder; load it with the T5 loader")
    safetensors("vae.safetensors", {"encoder.down_blocks.0.resnets.0.conv1.weight": small,
                                    "decoder.up_blocks.0.resnets.0.conv1.weight": small}, "VAE")
    safetensors("sd15.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": small}, "UNet")
    safetensors("sana.safetensors", {"t_block.1.weight": small, "blocks.0.mlp.inverted_conv.conv.weight": small},
                "Sana")
    safetensors("random.safetensors", {"a": small, "b": torch.randn(3)}, "not a PixArt transformer")
    state = _official_state(tiny)
    safetensors("missing-key.safetensors", {k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.weight"},
                "missing 'blocks.1.mlp.fc2.weight'")
    safetensors("extra-key.safetensors", {**state, "blocks.0.attn.extra.weight": small},
                "unexpected 'blocks.0.attn.extra.weight'")
    safetensors("wrong-shape.safetensors", {**state, "t_embedder.mlp.2.weight": torch.zeros(144, 40)},
                "wrong shapes 't_embedder.mlp.2.weight'")
    safetensors("missing-block.safetensors", {k: v for k, v in state.items() if not k.startswith("blocks.0.")},
                "blocks [0] are missing")
    diffusers = {k: v.clone() for k, v in official_to_diffusers(state).items()}
    safetensors("diffusers-no-to-k.safetensors", {k: v for k, v in diffusers.items()
                                                  if k != "transformer_blocks.0.attn1.to_k.weight"}, "to_k")
    for name, source in (("truncated.pth", tiny["sigma-1024.pth"]), ("truncated.safetensors",
                                                                      tiny["sigma-1024.safetensors"])):
        data = source.read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
        cases.append((folder / name, "truncated"))
    for name in ("empty.pth", "empty.safetensors"):
        (folder / name).write_bytes(b"")
        cases.append((folder / name, "empty"))
    torch.save({"state_dict": state, "extra": NotATensor()}, folder / "custom-class.pth")
    cases.append((folder / "custom-class.pth", "never unpickled"))
    (folder / "notes.txt").write_text("not weights")
    cases.append((folder / "notes.txt", "not a safetensors or PyTorch weights file"))
    vae_dir = folder / "vae"
    vae_dir.mkdir()
    (vae_dir / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "scaling_factor": 0.13025}))
    save_file({"encoder.conv_in.weight": small}, str(vae_dir / "diffusion_pytorch_model.safetensors"))
    cases.append((vae_dir, "VAE"))
    root = folder / "pipeline-without-transformer"
    root.mkdir()
    (root / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline"}))
    cases.append((root, "without a transformer/ subfolder"))
    cases.append((folder / "does-not-exist.safetensors", "not found"))
    several = folder / "diffusion_models"
    several.mkdir()
    for name in ("sigma-1024.safetensors", "sigma-512-net.safetensors"):
        shutil.copy(tiny[name], several / name)
    cases.append((several, "several weight files"))
    return cases


def test_bad_files_are_refused_with_the_file_name(tiny, tmp_path):
    cases = _bad_files(tiny, tmp_path)
    assert len(cases) == 20
    for path, message in cases:
        with pytest.raises(CheckpointError) as err:
            load_transformer(path)
        text = str(err.value)
        assert path.name in text, (path.name, text)
        assert message in text, (path.name, text)


def test_tiny_writer_is_deterministic(tiny, tmp_path):
    again = write_tiny_transformers(tmp_path / "again", seed=0)
    other = write_tiny_transformers(tmp_path / "other", seed=1)
    name = "alpha-1024-ms.safetensors"
    assert again[name].read_bytes() == tiny[name].read_bytes()
    assert other[name].read_bytes() != tiny[name].read_bytes()


def test_reader_converts_in_chunks_exactly(tmp_path, monkeypatch):
    """Converting and sliced reads (used for fused q/k/v) return exactly what a plain read + cast returns."""
    import pixart_core.checkpoint_io as checkpoint_io

    monkeypatch.setattr(checkpoint_io, "_CHUNK_BYTES", 1000)  # many chunks, ragged last chunk
    tensors = {"a": torch.randn(37, 53), "b": torch.randn(5).to(torch.bfloat16), "empty": torch.zeros(0, 3)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    torch.save(tensors, tmp_path / "w.pth")
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pth"):
        with StateDictReader(path) as reader:
            for key, value in tensors.items():
                for dtype in (torch.float32, torch.bfloat16, torch.float16):
                    assert torch.equal(reader.get(key, dtype), value.to(dtype)), (path.name, key, dtype)
            fused = torch.empty(74, 53, dtype=torch.bfloat16)  # [2 * 37, 53]
            reader.read_into("a", fused[:37])
            reader.read_into("a", fused[37:])
            assert torch.equal(fused, torch.cat([tensors["a"]] * 2).to(torch.bfloat16))
            transposed = torch.empty(53, 37, dtype=torch.float16).t()  # non-contiguous: the copy_ path
            assert torch.equal(reader.read_into("a", transposed), tensors["a"].to(torch.float16))
            with pytest.raises(CheckpointError, match="has shape"):
                reader.read_into("a", torch.empty(3))
