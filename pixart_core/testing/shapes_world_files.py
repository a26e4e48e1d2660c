"""Writing the trained shapes world as a diffusers pipeline folder the ordinary loaders read as it is.

    model_index.json            PixArtSigmaPipeline
    transformer/                diffusers PixArtTransformer2DModel folder (config.json + safetensors, fp16)
    text_encoder/               Hugging Face T5EncoderModel folder (the frozen tiny T5)
    tokenizer/                  the real T5 v1.1 tokenizer files
    vae/                        diffusers AutoencoderKL folder; config.json carries the measured scaling_factor
    scheduler/                  DPMSolverMultistepScheduler config (the linear β schedule it was trained with)
    controlnet/                 diffusers PixArtControlNetAdapterModel folder (edge-map ControlNet, fp16)
    training.json               the plan, the seed and the seconds per phase
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from .controlnet import write_controlnet
from .files import save_safetensors, write_json
from .suite import SCHEDULER_CONFIGS
from .t5 import TINY_T5_CONFIG, copy_tokenizer, write_hf_folder
from .transformers import write_diffusers_folder
from .shapes_training import TrainPlan, dit_config, vae_config


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to(torch.float16).contiguous() for key, value in state.items()}


def write_world(folder: str | Path, plan: TrainPlan, trained: dict, tokenizer_dir: str | Path) -> Path:
    """Write `trained` (from `shapes_training.run`) under `folder`; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dit_state = {k: v for k, v in trained["dit"].state_dict().items() if k != "pos_embed"}
    write_diffusers_folder(_half(dit_state), dit_config(plan), folder / "transformer", explicit_config=True)
    t5_state = {k: v.detach().float().contiguous() for k, v in trained["t5"].state_dict().items()}
    write_hf_folder(folder / "text_encoder", TINY_T5_CONFIG, _half(t5_state))
    copy_tokenizer(Path(tokenizer_dir), folder / "tokenizer")
    vae_cfg = vae_config(round(trained["scaling_factor"], 5))
    write_json({**vae_cfg.to_diffusers(), "_diffusers_version": "0.30.0"}, folder / "vae" / "config.json")
    save_safetensors(_half(trained["vae"].state_dict()), folder / "vae" / "diffusion_pytorch_model.safetensors")
    scheduler = "DPMSolverMultistepScheduler"
    write_json({"_class_name": scheduler, "_diffusers_version": "0.30.0", **SCHEDULER_CONFIGS[scheduler]},
               folder / "scheduler" / "scheduler_config.json")
    write_json({"_class_name": "PixArtSigmaPipeline", "_diffusers_version": "0.30.0",
                "scheduler": ["diffusers", scheduler], "text_encoder": ["transformers", "T5EncoderModel"],
                "tokenizer": ["transformers", "T5Tokenizer"], "transformer": ["diffusers", "PixArtTransformer2DModel"],
                "vae": ["diffusers", "AutoencoderKL"]}, folder / "model_index.json")
    write_controlnet(_half(trained["controlnet"].state_dict()), "diffusers", folder / "controlnet")
    write_json({"plan": asdict(plan), "seconds": {k: round(v, 1) for k, v in trained["seconds"].items()}},
               folder / "training.json")
    return folder
