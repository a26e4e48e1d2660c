"""nodes/host.py outside ComfyUI: the plain fallbacks (folders from $PIXART_ATELIER_MODELS, cuda-else-cpu, ...)."""

from __future__ import annotations

import json
import sys

import pytest
import torch


@pytest.fixture()
def host(pack, monkeypatch):
    """The adapter module, with ComfyUI surely absent and no models folder configured."""
    for name in ("folder_paths", "comfy.model_management"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.delenv("PIXART_ATELIER_MODELS", raising=False)
    from pixart_atelier.nodes import host as host_module

    return host_module


def write_hf_t5_folder(folder, model_type="t5"):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": ["T5EncoderModel"]}))
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"")
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"")


@pytest.fixture()
def models_dir(tmp_path, monkeypatch):
    (tmp_path / "diffusion_models" / "sub").mkdir(parents=True)
    (tmp_path / "diffusion_models" / "PixArt-XL-2-1024-MS.pth").write_bytes(b"")
    (tmp_path / "diffusion_models" / "sub" / "sigma.safetensors").write_bytes(b"")
    (tmp_path / "diffusion_models" / "notes.txt").write_text("not a model")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "legacy.safetensors").write_bytes(b"")
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "sdxl_vae.safetensors").write_bytes(b"")
    (tmp_path / "text_encoders").mkdir()
    (tmp_path / "text_encoders" / "t5xxl_fp16.safetensors").write_bytes(b"")
    write_hf_t5_folder(tmp_path / "text_encoders" / "t5-v1_1-xxl")
    write_hf_t5_folder(tmp_path / "clip" / "nested" / "t5-small")
    (tmp_path / "text_encoders" / "not_t5").mkdir()
    (tmp_path / "text_encoders" / "not_t5" / "config.json").write_text(json.dumps({"model_type": "clip_text_model"}))
    (tmp_path / "text_encoders" / "not_t5" / "model.safetensors").write_bytes(b"")
    vae_folder = tmp_path / "vae" / "pixart-sigma" / "vae"  # a diffusers pipeline's vae/ inside models/vae
    vae_folder.mkdir(parents=True)
    (vae_folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    (vae_folder / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    monkeypatch.setenv("PIXART_ATELIER_MODELS", str(tmp_path))
    return tmp_path


def test_imports_without_comfyui(host):
    assert not host.in_comfyui()
    assert host.comfy_tokenizer_dir() is None


def test_devices(host):
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert host.compute_device() == expected
    assert host.text_encoder_device() == expected
    assert host.devices_for("vae") == (expected, torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown module kind"):
        host.devices_for("unet")


def test_default_dtype_follows_the_hardware_outside_comfyui(host, monkeypatch):
    from pixart_atelier.pixart_core import dtypes

    assert host.forced_dtype() is None
    monkeypatch.setattr(dtypes, "cpu_has_native_bf16", lambda: False)
    assert host.default_dtype(torch.device("cpu")) == torch.float32
    monkeypatch.setattr(dtypes, "cpu_has_native_bf16", lambda: True)
    assert host.default_dtype(torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert host.default_dtype(torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert host.default_dtype(torch.device("cuda")) == torch.bfloat16


def test_nothing_listed_without_models_folder(host):
    assert host.model_folders("vae") == []
    assert host.list_models("diffusion_models") == []
    with pytest.raises(FileNotFoundError, match="PIXART_ATELIER_MODELS"):
        host.model_path("vae", "x.safetensors")


def test_listing_from_models_folder(host, models_dir):
    sep = "/" if sys.platform != "win32" else "\\"
    assert host.list_models("diffusion_models") == sorted(
        ["PixArt-XL-2-1024-MS.pth", f"sub{sep}sigma.safetensors", "legacy.safetensors"]
    )
    assert host.list_models("vae") == sorted(["sdxl_vae.safetensors", f"pixart-sigma{sep}vae"])
    assert host.list_models("checkpoints") == []  # folder absent: nothing, no error
    # HF T5 folders are listed by name, their shards hidden; a non-T5 folder's files stay plain files.
    assert host.list_models("text_encoders") == sorted(
        ["t5xxl_fp16.safetensors", "t5-v1_1-xxl", f"nested{sep}t5-small", f"not_t5{sep}model.safetensors"]
    )


def test_model_path(host, models_dir):
    assert host.model_path("diffusion_models", "legacy.safetensors") == models_dir / "unet" / "legacy.safetensors"
    assert host.model_path("text_encoders", "t5-v1_1-xxl") == models_dir / "text_encoders" / "t5-v1_1-xxl"
    assert host.model_path("diffusion_models", "sub/sigma.safetensors").is_file()
    with pytest.raises(FileNotFoundError, match="not found"):
        host.model_path("vae", "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="inside"):
        host.model_path("vae", "../vae/sdxl_vae.safetensors")


def test_managed_module_moves_to_compute_device(host):
    module = torch.nn.Linear(3, 2)
    handle = host.managed(module, kind="diffusion")
    assert handle.patcher is None and handle.module is module
    assert handle.offload_device == torch.device("cpu")
    assert host.load_on_device(handle) is module
    assert module.weight.device.type == host.compute_device().type
    other = host.managed(torch.nn.Linear(2, 2), kind="text_encoder", device=torch.device("cpu"))
    assert other.load_device == torch.device("cpu")
    assert host.load_on_device(handle, other) == (module, other.module)


def test_progress_and_interruption_are_plain(host):
    bar = host.progress(3)
    for step in range(1, 4):
        bar.update(step, preview_image=object())  # previews are ignored outside the host
    assert host.preview_callback("sdxl") is None  # no previews outside the host
    with pytest.raises(ValueError, match="latent space"):
        host.preview_callback("flux")
    host.check_interrupted()
    assert host.should_stop() is False


def test_plain_vae_matches_pixart_core(host, pack, tmp_path):
    """Outside ComfyUI load_core_vae gives pixart_core's VAE behind comfy.sd.VAE's encode/decode contract."""
    from pixart_atelier.nodes.core_vae import load_core_vae
    from pixart_atelier.pixart_core.testing.files import save_safetensors, write_json
    from pixart_atelier.pixart_core.vae import load_vae as read_vae
    from pixart_atelier.pixart_core.testing.vae import random_vae_state_dict, tiny_vae_config

    cfg = tiny_vae_config()
    folder = tmp_path / "tiny_vae"
    write_json(cfg.to_diffusers(), folder / "config.json")
    save_safetensors(random_vae_state_dict(cfg, seed=0), folder / "diffusion_pytorch_model.safetensors")
    vae, core = load_core_vae(folder), read_vae(folder)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 19, 29, 3, generator=generator)  # [B, H, W, C], centre-cropped to 16x24 by encode
    latent = vae.encode(pixels)  # [B, 4, 2, 3]
    assert latent.shape == (2, 4, 2, 3) and latent.dtype == torch.float32
    cropped = pixels[:, 1:17, 2:26]  # (19 % 8) // 2 = 1, (29 % 8) // 2 = 2
    expected = core.encode(cropped.movedim(-1, 1) * 2 - 1)  # [B, 4, 2, 3]
    assert (latent - expected).abs().max() < 1e-5
    images = vae.decode(latent)  # [B, 16, 24, 3]
    assert images.shape == (2, 16, 24, 3) and 0 <= images.min() and images.max() <= 1
    reference = ((core.decode(latent) + 1) / 2).clamp(0, 1).movedim(1, -1)  # [B, 16, 24, 3]
    assert (images - reference).abs().max() < 1e-5


def test_memory_budget_is_the_free_memory_outside_comfyui(host):
    assert host.memory_budget(torch.device("cpu")) is None  # pixart_core.memory then asks for the free memory
