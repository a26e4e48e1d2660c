"""The model files the example workflows name, written into a ComfyUI base folder for the real-host tests."""

from __future__ import annotations

from pathlib import Path


def write_workflow_models(base: Path, tokenizer_dir: Path) -> None:
    """The example workflows' model files: tiny PixArt/T5, full-size random VAEs (core VAELoader needs the
    real SD/SDXL VAE shapes), and an input image; T5 comes without a tokenizer (ComfyUI's bundled one is used)."""
    import numpy as np
    from PIL import Image

    from pixart_atelier.pixart_core.testing.files import save_safetensors
    from pixart_atelier.pixart_core.testing.suite import write_tiny_suite
    from pixart_atelier.pixart_core.vae.config import VAEConfig
    from pixart_atelier.pixart_core.vae.convert import to_ldm_state_dict
    from pixart_atelier.pixart_core.testing.vae import random_vae_state_dict

    suite = base / "tiny"
    write_tiny_suite(suite, tokenizer_dir=None)
    for folder in (suite / "comfyui" / "models").iterdir():
        for item in folder.iterdir():
            target = base / "models" / folder.name / item.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(item)
    full = VAEConfig()
    vae = {k: v.half() for k, v in to_ldm_state_dict(random_vae_state_dict(full, 0), full.num_levels).items()}
    for name in ("sdxl_vae.safetensors", "sd-vae-ft-ema.safetensors"):
        (base / "models" / "vae" / name).unlink(missing_ok=True)
    save_safetensors(vae, base / "models" / "vae" / "sdxl_vae.safetensors")
    (base / "models" / "vae" / "sd-vae-ft-ema.safetensors").symlink_to(base / "models" / "vae" / "sdxl_vae.safetensors")
    gradient = np.linspace(0, 255, 256 * 256 * 3).reshape(256, 256, 3).astype("uint8")
    (base / "input").mkdir(exist_ok=True)
    Image.fromarray(gradient).save(base / "input" / "example.png")
