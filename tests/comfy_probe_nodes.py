"""A test-only ComfyUI custom node that exercises `nodes/host.py` inside a real ComfyUI process.

tests/comfy_server.py links this file into the temporary `custom_nodes/` next to the pack; it is never shipped
with the pack. The node finds the adapter module the pack itself uses (ComfyUI imports the pack under a name
derived from its folder path) and reports what the adapter sees, as JSON in the node's UI output.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time


def _pack_module(submodule: str):
    """`<pack>.<submodule>` imported through the loaded pack (ComfyUI names the package after its path)."""
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        if path and os.path.basename(os.path.dirname(path)) == "pixart_atelier" and name.endswith("pixart_atelier"):
            return importlib.import_module(f"{name}.{submodule}")
    raise RuntimeError("the pixart_atelier pack is not loaded")


def _compare_vaes(host, vae_name: str) -> dict:
    """load_core_vae (a comfy.sd.VAE here) against pixart_core's own VAE on the same seeded inputs."""
    import torch

    read_vae = _pack_module("pixart_core.vae").load_vae
    path = host.model_path("vae", vae_name)
    vae, core = _pack_module("nodes.core_vae").load_core_vae(path), read_vae(path)
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 4, 3, 5, generator=generator)  # [B, 4, h, w] unscaled
    pixels = torch.rand(1, 24, 40, 3, generator=generator)  # [B, H, W, C] in 0..1
    with torch.no_grad():
        decoded = ((core.decode(latent) + 1) / 2).clamp(0, 1).movedim(1, -1)  # [B, 24, 40, 3]
        encoded = core.encode(pixels.movedim(-1, 1) * 2 - 1)  # [B, 4, 3, 5]
    host_decoded, host_encoded = vae.decode(latent), vae.encode(pixels)
    return {
        "class": f"{type(vae).__module__}.{type(vae).__name__}",
        "decode_shape": list(host_decoded.shape),
        "decode_max_abs_diff": float((host_decoded.float() - decoded).abs().max()),
        "encode_max_abs_diff": float((host_encoded.float() - encoded).abs().max()),
    }


class AtelierHostProbe:
    """Reports the host adapter's view of ComfyUI and drives its progress/preview/interrupt hooks."""

    CATEGORY = "testing"
    FUNCTION = "probe"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "steps": ("INT", {"default": 3, "min": 1, "max": 10000}),
                "seconds_per_step": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.01}),
                "latent_space": (["sd15", "sdxl"],),
                "vae_names": ("STRING", {"default": ""}),  # comma-separated models/vae names to compare
            }
        }

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # always run

    def probe(self, steps, seconds_per_step, latent_space, vae_names):
        import torch
        import comfy.model_management as mm

        host = _pack_module("nodes.host")
        module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
        handle = host.managed(module, kind="diffusion")
        loaded = host.load_on_device(handle)
        cpu_handle = host.managed(torch.nn.Linear(2, 2), kind="text_encoder", device=torch.device("cpu"))
        report = {
            "host_module": host.__name__,
            "in_comfyui": host.in_comfyui(),
            "compute_device": str(host.compute_device()),
            "offload_device": str(host.devices_for("diffusion")[1]),
            "text_encoder_device": str(host.text_encoder_device()),
            "default_dtype": str(host.default_dtype(host.compute_device())),
            "tokenizer_dir": str(host.comfy_tokenizer_dir()),
            "models": {kind: host.list_models(kind) for kind in ("diffusion_models", "text_encoders", "vae")},
            "model_folders": [str(p) for p in host.model_folders("vae")],
            "patcher_class": type(handle.patcher).__name__,
            "loaded_is_module": loaded is module,
            "weight_device": str(module[0].weight.device),
            "patcher_in_loaded_models": any(p is handle.patcher for p in mm.loaded_models()),
            "override_load_device": str(cpu_handle.patcher.load_device),
            "vaes": {name: _compare_vaes(host, name) for name in filter(None, vae_names.split(","))},
        }
        if report["models"]["text_encoders"]:
            report["text_encoder_path"] = str(host.model_path("text_encoders", report["models"]["text_encoders"][0]))
        bar = host.progress(steps)
        preview = host.preview_callback(latent_space)
        report["previews_enabled"] = preview is not None
        denoised = torch.zeros(1, 4, 16, 32)  # [B, 4, h, w]: latent channel 0 only, so previews show its RGB factor
        denoised[:, 0] = 1.0
        for i in range(steps):
            host.check_interrupted()
            time.sleep(seconds_per_step)
            bar.update(i + 1, preview(i, steps, denoised, denoised) if preview else None)
        report["should_stop"] = host.should_stop()
        return {"ui": {"probe": [json.dumps(report)]}}


NODE_CLASS_MAPPINGS = {"AtelierHostProbe": AtelierHostProbe}
