"""Text-to-image (and image-to-image) with PixArt-α/Σ/δ, called like diffusers' PixArt pipelines.

Phases of `__call__`: 1. resolution binning  2. prompt encoding (T5, padded to the model's caption length, with masks)
3. latents (and control latents for PixArt-δ ControlNets)  4. sampling with classifier-free guidance (cond and
uncond in one batch)  5. VAE decode and resize-and-crop back to the requested size.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from .bins import bins_for, closest_bin, resize_and_crop
from .checkpoint_io import read_json
from .controlnet.condition import prepare_controls
from .limits import check_sampled_size
from .memory import check_fits
from .sampling import DEFAULT_SAMPLER, cfg_eps_fn, sample, sampler_spec

log = logging.getLogger(__name__)

#: Defaults of the official apps and diffusers: DPM-Solver++ cfg 4.5; PixArt-δ LCM no CFG (steps: the sampler table).
STANDARD_DEFAULTS = {"sampler": DEFAULT_SAMPLER, "guidance_scale": 4.5}
LCM_DEFAULTS = {"sampler": "lcm", "guidance_scale": 0.0}


@dataclass(frozen=True)
class PipelinePaths:
    """Where each part of a pipeline lives (any layout the loaders accept)."""

    transformer: Path
    text_encoder: Path
    tokenizer: Path
    vae: Path
    lcm: bool = False

    @classmethod
    def resolve(cls, root: str | Path | None, transformer=None, text_encoder=None, tokenizer=None, vae=None) -> "PipelinePaths":
        """A diffusers-style root (transformer/, text_encoder/, tokenizer/, vae/) with per-part overrides."""
        root = Path(root) if root is not None else None
        if root is not None and not root.exists():
            raise FileNotFoundError(f"{root}: model path not found.")
        is_root = root is not None and root.is_dir() and (root / "model_index.json").exists()

        def part(given, name):
            if given is not None:
                return Path(given)
            if is_root and (root / name).exists():
                return root / name
            if name == "transformer" and root is not None:
                return root  # a transformer file or folder on its own
            raise FileNotFoundError(
                f"no {name.replace('_', ' ')} given" + (f" and {root} has no {name}/ folder" if root else "")
                + f"; pass --{name.replace('_encoder', '').replace('text', 't5')} PATH.")

        lcm = False
        if is_root:
            sched = root / "scheduler" / "scheduler_config.json"
            if sched.exists():
                config = read_json(sched)
                lcm = isinstance(config, dict) and config.get("_class_name") == "LCMScheduler"
        text_encoder_path = part(text_encoder, "text_encoder")
        if tokenizer is None and is_root and (root / "tokenizer").exists():
            tokenizer = root / "tokenizer"
        return cls(part(transformer, "transformer"), text_encoder_path,
                   Path(tokenizer) if tokenizer is not None else text_encoder_path, part(vae, "vae"), lcm)


@torch.inference_mode()
def encode_prompts(text_encoder, tokenizer, prompts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 hidden states [B, L, C] and mask [B, L] (on T5's device) for prompts lower-cased and stripped as
    diffusers' PixArt pipelines do (clean_caption=False), padded to `max_length` tokens."""
    texts = [p.lower().strip() for p in prompts]
    ids, mask = tokenizer(texts, max_length=max_length)  # [B, L], [B, L]
    device = next(text_encoder.parameters()).device
    return text_encoder(ids.to(device), mask.to(device)), mask.to(device)  # [B, L, C], [B, L]


class PixArtPipeline:
    """PixArt DiT + T5 encoder + tokenizer + VAE.

    `__call__` mirrors diffusers' `PixArtAlphaPipeline`/`PixArtSigmaPipeline`: prompts are lower-cased and
    stripped (diffusers with clean_caption=False), tokenized to the model's caption length (α 120, Σ 300 tokens),
    the negative prompt gets its own mask, micro-conditions of α-1024-MS are the binned size and its exact ratio.
    """

    def __init__(self, transformer, text_encoder, tokenizer, vae, *, vae_scale_factor: float | None = None,
                 max_sequence_length: int | None = None, lcm: bool = False):
        self.transformer = transformer
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.vae = vae
        config = transformer.config
        self.vae_scale_factor = vae_scale_factor or getattr(vae, "scaling_factor", None) or config.vae_scale_factor
        self.max_sequence_length = max_sequence_length or config.model_max_length
        self.defaults = dict(LCM_DEFAULTS if lcm else STANDARD_DEFAULTS)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, *, transformer=None, text_encoder=None, tokenizer=None,
                        vae=None, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                        text_encoder_dtype: torch.dtype | None = None, vae_dtype: torch.dtype | None = None,
                        variant: str | None = None, lcm: bool | None = None) -> "PixArtPipeline":
        """Load from a diffusers-style folder and/or separate paths (files or folders in any supported layout)."""
        from .pixart.load import load_transformer
        from .t5 import load_t5_encoder, load_t5_tokenizer
        from .vae import load_vae

        paths = PipelinePaths.resolve(path, transformer, text_encoder, tokenizer, vae)
        model = load_transformer(paths.transformer, dtype=dtype, device=device, variant=variant)
        t5 = load_t5_encoder(paths.text_encoder, dtype=text_encoder_dtype or dtype, device=device)
        tok = load_t5_tokenizer(paths.tokenizer)
        autoencoder = load_vae(paths.vae, dtype=vae_dtype or dtype, device=device)
        return cls(model, t5, tok, autoencoder, lcm=paths.lcm if lcm is None else lcm)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def encode_prompt(self, prompts: Sequence[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 hidden states [B, L, C] and mask [B, L] on the transformer's device and dtype."""
        hidden, mask = encode_prompts(self.text_encoder, self.tokenizer, prompts, max_length or self.max_sequence_length)
        return hidden.to(self.device, self.dtype), mask.to(self.device)

    def generation_size(self, height: int, width: int, binning: bool = True) -> tuple[int, int]:
        """The (height, width) sampled at: the model's nearest aspect-ratio bin, or the size itself unbinned."""
        if height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive, got {height}x{width}")
        if binning:
            return closest_bin(height, width, bins_for(self.transformer.config.sample_size))
        patch = 8 * self.transformer.config.patch_size
        if height % patch or width % patch:
            raise ValueError(f"without resolution binning height and width must be multiples of {patch}, "
                             f"got {height}x{width}")
        return height, width

    @torch.inference_mode()
    def __call__(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] = "", height: int = 1024,
                 width: int = 1024, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 sampler: str | None = None, seed: int | None = None, latents: torch.Tensor | None = None,
                 use_resolution_binning: bool = True, output_type: str = "pil", num_images_per_prompt: int = 1,
                 generator: torch.Generator | None = None, image: torch.Tensor | None = None, strength: float = 0.6,
                 callback: Callable | None = None, should_stop: Callable[[], bool] | None = None,
                 control_image=None, controlnet=None, controlnet_conditioning_scale: float = 1.0,
                 control_guidance_start: float = 0.0, control_guidance_end: float = 1.0):
        """Generate images; output_type "pil" (list of PIL images), "pt" ([B,3,H,W] in 0..1), "latent".

        PixArt-δ ControlNet: `controlnet` (from `load_controlnet`) with `control_image`, an edge map as PIL or
        [1 or B, 1 or 3, H, W] in 0..1, brought to the generation's bin and VAE-encoded
        (`controlnet.condition.encode_control_image`); `controlnet_conditioning_scale` multiplies its residuals,
        `control_guidance_start` / `_end` (0..1 of the schedule) limit the steps it acts on. Lists of ControlNets
        take lists of images (and of scales / windows, or one value for all).
        """
        sampler = sampler or self.defaults["sampler"]
        spec = sampler_spec(sampler)
        if num_inference_steps is not None and (isinstance(num_inference_steps, bool) or not isinstance(
                num_inference_steps, numbers.Integral) or num_inference_steps < 1):
            raise ValueError(f"num_inference_steps must be an integer >= 1 (or None for the sampler's default), "
                             f"got {num_inference_steps!r}")
        if guidance_scale is not None and not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
        steps = num_inference_steps or spec.default_steps
        cfg = self.defaults["guidance_scale"] if guidance_scale is None else guidance_scale
        if spec.distilled_guidance and guidance_scale is None:
            cfg = 0.0

        # 1. resolution binning
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        gen_h, gen_w = self.generation_size(height, width, use_resolution_binning)
        check_sampled_size(gen_h, gen_w)  # binned sizes always pass: only the output is resized to height x width
        check_fits(gen_h, gen_w, height, width, len(prompts) * num_images_per_prompt, self.device,
                   hidden_size=self.transformer.config.hidden_size, dtype_bytes=self.dtype.itemsize,
                   guidance=cfg > 1.0)  # refused before any allocation (pixart_core/memory.py)

        # 2. prompts (negative padded to the positive's length, each with its own mask)
        cond, cond_mask = self.encode_prompt(prompts)  # [P, L, C], [P, L]
        cond = cond.repeat_interleave(num_images_per_prompt, 0)
        cond_mask = cond_mask.repeat_interleave(num_images_per_prompt, 0)
        uncond = uncond_mask = None
        if cfg > 1.0:
            uncond, uncond_mask = self.encode_prompt(negatives, max_length=cond.shape[1])
            uncond = uncond.repeat_interleave(num_images_per_prompt, 0)
            uncond_mask = uncond_mask.repeat_interleave(num_images_per_prompt, 0)
        batch = cond.shape[0]

        # 3. latents
        config = self.transformer.config
        shape = (batch, config.in_channels, gen_h // 8, gen_w // 8)
        if generator is None and seed is not None:
            generator = torch.Generator("cpu").manual_seed(seed)
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32)  # [B, 4, h, w]
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
        noise = latents.to(self.device, self.dtype)
        init_latent = None
        if image is not None:
            pixels = resize_and_crop(image.float(), gen_w, gen_h) * 2 - 1  # [B, 3, H, W] in -1..1
            vae_device = next(self.vae.parameters()).device
            vae_dtype = next(self.vae.parameters()).dtype
            init_latent = self.vae.encode(pixels.to(vae_device, vae_dtype)).to(self.device, self.dtype) * self.vae_scale_factor
        controls = ()
        if controlnet is not None or control_image is not None:
            if controlnet is None or control_image is None:
                raise ValueError("control_image and controlnet go together: pass both (or neither)")
            controls = prepare_controls(self.vae, controlnet, control_image, controlnet_conditioning_scale,
                                        control_guidance_start, control_guidance_end, gen_w, gen_h,
                                        self.vae_scale_factor, batch, num_images_per_prompt, self.device)

        # 4. sampling
        # micro-conditions (α-1024-MS) = the binned size and its ratio: the model derives both from the latent
        eps_fn = cfg_eps_fn(self.transformer, cond, cond_mask, uncond, uncond_mask, cfg, controls=controls)
        out = sample(eps_fn, noise, sampler=sampler, steps=steps, denoise=strength if image is not None else 1.0,
                     init_latent=init_latent, generator=generator, callback=callback, should_stop=should_stop)
        if output_type == "latent":
            return out

        # 5. decode, then resize-and-crop back to the requested size
        pixels = self.decode(out)
        if (gen_h, gen_w) != (height, width):
            pixels = resize_and_crop(pixels, width, height)
        pixels = (pixels / 2 + 0.5).clamp(0, 1)  # [B, 3, H, W] in 0..1
        if output_type == "pt":
            return pixels
        if output_type == "pil":
            return to_pil(pixels)
        raise ValueError(f"output_type must be 'pil', 'pt' or 'latent', not {output_type!r}")

    def generate_transparent(self, prompt: str, **kwargs):
        """RGBA images of `prompt` from the frozen model (Alfie-style centring and attention matte): keywords and
        result (`TransparentResult`) as `pixart_core.rgba.alfie.generate_transparent`."""
        from .rgba.alfie import generate_transparent

        return generate_transparent(self, prompt, **kwargs)

    def layer_backend(self, on_progress: Callable | None = None, should_stop: Callable[[], bool] | None = None):
        """This pipeline as the layer engine's `LayerBackend` (`pixart_core.layers.backend`)."""
        from .layers.backend import LayerBackend

        vae_param = next(self.vae.parameters())
        return LayerBackend(
            model=self.transformer, encode_text=lambda prompts: self.encode_prompt(list(prompts)),
            tokenizer=self.tokenizer,
            encode_image=lambda pixels: self.vae.encode(pixels.to(vae_param.device, vae_param.dtype)).float(),
            decode_latent=lambda latent: self.vae.decode(latent.to(vae_param.device, vae_param.dtype)).float(),
            scaling_factor=float(self.vae_scale_factor), max_length=int(self.max_sequence_length),
            on_progress=on_progress, should_stop=should_stop)

    def generate_layers(self, layout, seed: int = 0, num_inference_steps: int | None = None,
                        guidance_scale: float | None = None, sampler: str | None = None, **backend_kwargs):
        """A `LayerStack` from a region layout (`pixart_core.layers.engine.generate_layers`); None settings take
        the pipeline's defaults. backend_kwargs: on_progress(phase, step, total), should_stop()."""
        from .layers.engine import generate_layers

        sampler = sampler or self.defaults["sampler"]
        return generate_layers(self.layer_backend(**backend_kwargs), layout, seed=seed,
                               steps=num_inference_steps or sampler_spec(sampler).default_steps,
                               guidance=self.defaults["guidance_scale"] if guidance_scale is None else guidance_scale,
                               sampler=sampler)

    def regenerate_layer(self, stack, index, prompt: str | None = None, seed: int | None = None, **kwargs):
        """A new stack with one layer sampled again in context, the others unchanged
        (`pixart_core.layers.engine.regenerate_layer`); kwargs: num_inference_steps, guidance_scale, sampler,
        on_progress, should_stop."""
        from .layers.engine import regenerate_layer

        sampler = kwargs.pop("sampler", None) or self.defaults["sampler"]
        steps = kwargs.pop("num_inference_steps", None) or sampler_spec(sampler).default_steps
        guidance = kwargs.pop("guidance_scale", None)
        guidance = self.defaults["guidance_scale"] if guidance is None else guidance
        return regenerate_layer(self.layer_backend(**kwargs), stack, index, prompt=prompt, seed=seed, steps=steps,
                                guidance=guidance, sampler=sampler)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-space latents -> images in -1..1 (float32)."""
        vae_param = next(self.vae.parameters())
        return self.vae.decode((latents / self.vae_scale_factor).to(vae_param.device, vae_param.dtype)).float()


def to_pil(pixels: torch.Tensor) -> list:
    """[B, 3, H, W] in 0..1 -> PIL images (rounded like diffusers' numpy_to_pil)."""
    from PIL import Image

    arrays = (pixels.permute(0, 2, 3, 1).cpu().float().numpy() * 255).round().astype("uint8")  # [B, H, W, 3]
    return [Image.fromarray(a) for a in arrays]
