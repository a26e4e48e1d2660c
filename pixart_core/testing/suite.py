"""`python -m pixart_core make-tiny OUT`: every tiny checkpoint, pipeline roots and a ComfyUI models folder.

Layout of OUT:
    transformers/   PixArt DiTs: official .pth/.safetensors, diffusers folders and single files, ComfyUI files
    t5/             T5 encoders: Hugging Face folders (sharded too), ComfyUI single files fp32/fp16/bf16/fp8
    vae/            VAEs: diffusers folders, LDM single files, full-checkpoint style
    controlnets/    PixArt-δ ControlNets (1 block) for the tiny alpha-1024-ms base in every layout:
                    official-combined.pth (base model + branch), official.pth, official.safetensors,
                    diffusers/ (folder), diffusers.safetensors
    hed/            ControlNetHED.pth: the full-size HED edge network with random fp16 weights
    transparent_vae/ LayerDiffuse transparent decoders (narrow UNet1024) and offset encoders under the six
                    released names (`transparent_vae.py`)
    pipelines/      diffusers pipeline roots (model_index.json, transformer/, text_encoder/, tokenizer/, vae/,
                    scheduler/): alpha-1024-ms, sigma-1024, sigma-256 (binning at 256) and lcm (PixArt-δ)
    comfyui/models/ a ComfyUI models folder with the file names the example workflows in `workflows/` use
    comfyui/input/  the example workflows' input files: pixart_layers_poster.psd (`layer_inputs.py`)
The T5 tokenizer files are copied from `tokenizer_dir` (the real T5 v1.1 tokenizer, e.g. ComfyUI's
`comfy/text_encoders/t5_tokenizer`; never committed). Without it the pipeline roots and the T5 folder with a
tokenizer are left out.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..rgba.transparent_load import RELEASED_FILES
from .controlnet import write_random_hed, write_tiny_controlnets
from .files import write_json
from .layer_inputs import write_layer_inputs
from .t5 import TOKENIZER_FOLDER_FILES, write_tiny_t5
from .transformers import tiny_transformer_config, write_tiny_transformers
from .transparent_vae import write_tiny_transparent_vaes
from .vae import write_tiny_vaes

SCHEDULER_CONFIGS = {
    "DPMSolverMultistepScheduler": {
        "algorithm_type": "dpmsolver++", "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
        "lower_order_final": True, "num_train_timesteps": 1000, "prediction_type": "epsilon",
        "solver_order": 2, "solver_type": "midpoint", "steps_offset": 0, "timestep_spacing": "linspace",
        "thresholding": False, "use_karras_sigmas": False},
    "LCMScheduler": {
        "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001, "num_train_timesteps": 1000,
        "original_inference_steps": 50, "prediction_type": "epsilon", "timestep_scaling": 10.0,
        "set_alpha_to_one": True, "steps_offset": 0, "clip_sample": False, "timestep_spacing": "leading"},
}

# (transformer folder, VAE folder, pipeline class, scheduler class)
_PIPELINES = {
    "alpha-1024-ms": ("alpha-1024-ms-diffusers", "sd_diffusers", "PixArtAlphaPipeline", "DPMSolverMultistepScheduler"),
    "sigma-1024": ("sigma-1024-diffusers", "sdxl_diffusers", "PixArtSigmaPipeline", "DPMSolverMultistepScheduler"),
    "sigma-256": ("sigma-256-diffusers", "sdxl_diffusers", "PixArtSigmaPipeline", "DPMSolverMultistepScheduler"),
    "lcm": ("alpha-1024-ms-diffusers", "sd_diffusers", "PixArtAlphaPipeline", "LCMScheduler"),
}

# LayerDiffuse's released transparent VAE file names (models/layer_model, as ComfyUI-layerdiffuse keeps them)
TRANSPARENT_VAE_FILES = tuple(sorted(RELEASED_FILES.values()))
# ComfyUI models folder: file names of the example workflows -> (group, tiny name)
_COMFY_FILES = {
    "diffusion_models/PixArt-Sigma-XL-2-1024-MS.pth": ("transformers", "sigma-1024.pth"),
    "diffusion_models/PixArt-XL-2-1024-MS.pth": ("transformers", "alpha-1024-ms.pth"),
    "diffusion_models/PixArt-LCM-XL-2-1024-MS.safetensors": ("transformers", "alpha-1024-ms.safetensors"),
    "checkpoints/PixArt-Sigma-XL-2-256x256.pth": ("transformers", "sigma-256.pth"),
    "text_encoders/t5xxl_fp16.safetensors": ("t5", "comfy_fp16"),
    "text_encoders/t5-v1_1-xxl": ("t5", "hf"),
    "vae/sd-vae-ft-ema.safetensors": ("vae", "sd_ldm_safetensors"),
    "vae/sdxl_vae.safetensors": ("vae", "sdxl_ldm_safetensors"),
    "controlnet/PixArt-XL-2-1024-ControlNet.pth": ("controlnets", "official-combined.pth"),
    "annotators/ControlNetHED.pth": ("hed", "ControlNetHED.pth"),
    **{f"layer_model/{name}": ("transparent_vae", name) for name in TRANSPARENT_VAE_FILES},
}
CONTROLNET_BASE = "alpha-1024-ms"  # the PixArt-δ ControlNet release is built on α-1024-MS


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


def _write_pipeline(root: Path, transformer: Path, t5_folder: Path, vae: Path, pipeline: str, scheduler: str) -> Path:
    _copy(transformer, root / "transformer")
    _copy(vae, root / "vae")
    (root / "text_encoder").mkdir(parents=True, exist_ok=True)
    (root / "tokenizer").mkdir(parents=True, exist_ok=True)
    for item in t5_folder.iterdir():
        target = root / ("tokenizer" if item.name in TOKENIZER_FOLDER_FILES else "text_encoder") / item.name
        _copy(item, target)
    write_json({"_class_name": scheduler, "_diffusers_version": "0.30.0", **SCHEDULER_CONFIGS[scheduler]},
               root / "scheduler" / "scheduler_config.json")
    write_json({"_class_name": pipeline, "_diffusers_version": "0.30.0",
                "scheduler": ["diffusers", scheduler], "text_encoder": ["transformers", "T5EncoderModel"],
                "tokenizer": ["transformers", "T5Tokenizer"], "transformer": ["diffusers", "PixArtTransformer2DModel"],
                "vae": ["diffusers", "AutoencoderKL"]}, root / "model_index.json")
    return root


def _write_controlnets(out: Path, transformers: dict[str, Path], seed: int) -> dict[str, Path]:
    """Tiny ControlNets for the tiny α-1024-MS base (read back from its .pth, so the combined file holds the same
    base weights); its depth-2 base leaves room for one control block. Projections at 0.1x keep the residual a
    fraction of the base stream, as in a trained branch."""
    base = torch.load(transformers[f"{CONTROLNET_BASE}.pth"], map_location="cpu", weights_only=True)["state_dict"]
    cfg = tiny_transformer_config(CONTROLNET_BASE)
    return write_tiny_controlnets(out, base, cfg, num_blocks=cfg.depth - 1, seed=seed + 3, projection_scale=0.1)


def write_tiny_suite(out_dir: Path | str, tokenizer_dir: Path | None = None, seed: int = 0) -> dict[str, Path]:
    """Write everything listed in the module docstring; returns {"group/name": path}."""
    out = Path(out_dir)
    groups = {
        "transformers": write_tiny_transformers(out / "transformers", seed=seed),
        "t5": write_tiny_t5(out / "t5", tokenizer_dir=tokenizer_dir, seed=seed),
        "vae": write_tiny_vaes(out / "vae", seed=seed),
    }
    groups["controlnets"] = _write_controlnets(out / "controlnets", groups["transformers"], seed)
    groups["hed"] = {"ControlNetHED.pth": write_random_hed(out / "hed" / "ControlNetHED.pth", seed=seed)}
    groups["transparent_vae"] = write_tiny_transparent_vaes(out / "transparent_vae", seed=seed)
    written = {f"{group}/{name}": path for group, items in groups.items() for name, path in items.items()}
    if tokenizer_dir is not None:
        for name, (transformer, vae, pipeline, scheduler) in _PIPELINES.items():
            written[f"pipelines/{name}"] = _write_pipeline(
                out / "pipelines" / name, groups["transformers"][transformer], groups["t5"]["hf"],
                groups["vae"][vae], pipeline, scheduler)
    models = out / "comfyui" / "models"
    for rel, (group, name) in _COMFY_FILES.items():
        if group == "t5" and name == "hf" and tokenizer_dir is None:
            continue
        _copy(groups[group][name], models / rel)
        written[f"comfyui/{rel}"] = models / rel
    written.update({f"comfyui/input/{name}": path
                    for name, path in write_layer_inputs(out / "comfyui" / "input").items()})
    return written
