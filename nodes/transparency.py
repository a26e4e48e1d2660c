"""Transparency (RGBA) nodes: a PixArt sampler that steers towards a cut-out subject and records where it is, a
decoder to straight colour + alpha (LayerDiffuse's transparent VAE, or a training-free attention matte), and an
encoder of RGBA images to latents carrying LayerDiffuse's transparency offset.

Conventions: LATENT holds unscaled VAE latents (the LayerDiffuse decoder takes them as they are, see
`pixart_core/rgba/transparent_load.py`); MASK is 1 - alpha (core's Load Image / Join Image with Alpha); RGBA
IMAGEs are [B, H, W, 4] with straight alpha. LayerDiffuse files live in models/layer_model, the folder
huchenlei/ComfyUI-layerdiffuse uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..pixart_core.limits import check_sampled_size
from ..pixart_core.memory import check_fits
from ..pixart_core.rgba import grey_composite
from ..pixart_core.sampling import SamplingInterrupted, cfg_eps_fn, sampler_spec
from . import host
from .layer_model_cache import transparent_decoder, transparent_encoder
from .sampler import AtelierSampler, _noise
from .text import encode as encode_text
from .types import CATEGORY, PIXART_ATTENTION, PIXART_MODEL, PIXART_T5, check_image, check_latent

log = logging.getLogger(__name__)

LAYER_MODELS = "layer_model"
host.register_model_folder(LAYER_MODELS, (".safetensors",))
ATTENTION_MATTE = "attention matte"

# ------------------------------------------------------------------------------------------------ sampling


def _alfie():
    """`pixart_core.rgba.alfie` (Alfie, arXiv 2408.14826): the node reaches the library's transparency steps only
    through this module: prompts, centre mask, plan, subject token positions and the hint."""
    from ..pixart_core.rgba import alfie

    return alfie


@dataclass
class SubjectAttention:
    """What travels through a PIXART_ATTENTION socket: the subject hint [B, 1, H, W] (0..1, CPU, pixel size) made
    from the cross-attention on the `grid_hw` token grid, and the flat background colour the sampler steered to."""

    hint: torch.Tensor
    grid_hw: tuple[int, int]
    background: tuple[float, float, float] | None
    summary: str


def transparent_sample(model, t5, prompt: str, negative: str, seed: int, steps: int, cfg: float,
                       sampler_name: str, width: int, height: int, batch: int,
                       plan) -> tuple[dict, SubjectAttention]:
    """Alfie's two branches [backgrounds B; subjects B] from the same noise, through `alfie.steered_sample` (border
    steering while `plan.steer_steps_fraction` of the steps run, cross-attention captured from
    `plan.capture_from_fraction` on); returns the subjects' LATENT and their hint at pixel size."""
    alfie, config = _alfie(), model.config
    if width % 16 or height % 16:
        raise ValueError(f"width and height must be multiples of 16 for PixArt, got {width}x{height}")
    check_sampled_size(height, width, "width/height")
    device = getattr(model.handle, "load_device", None) or host.compute_device()
    check_fits(height, width, height, width, 2 * batch, device, budget=host.memory_budget(device),
               argument="width/height", hidden_size=config.hidden_size, decode=False, guidance=cfg > 1.0,
               dtype_bytes=next(model.handle.module.parameters()).dtype.itemsize)  # two branches per image
    texts = encode_text(t5, [alfie.background_prompt(), alfie.subject_prompt(prompt), negative], model.max_length)
    positions = alfie.subject_token_positions(t5.tokenizer, prompt, model.max_length)
    context, context_mask = alfie.stack_branches((texts.hidden[:1], texts.mask[:1]),
                                                 (texts.hidden[1:2], texts.mask[1:2]), batch)  # [2B, L, C], [2B, L]
    module = host.load_on_device(model.handle)
    param = next(module.parameters())
    dev, dtype = param.device, param.dtype
    eps_fn = cfg_eps_fn(module, context.to(dev, dtype), context_mask.to(dev), texts.hidden[2:].to(dev, dtype),
                        texts.mask[2:].to(dev), cfg)
    preview, bars = host.preview_callback(model.latent_space), []

    def callback(step, total, x, denoised):  # the subject rows
        if not bars:
            bars.append(host.progress(total))
        bars[0].update(step + 1, preview(step, total, x, denoised) if preview else None)

    noise = _noise(seed, (batch, config.in_channels, height // 8, width // 8)).repeat(2, 1, 1, 1)  # [2B, 4, h, w]
    with torch.inference_mode():
        try:
            generator = torch.Generator("cpu").manual_seed((seed + 1) % 2**64)
            steered = alfie.steered_sample(module, eps_fn, noise.to(dev, dtype), plan=plan, sampler=sampler_name,
                                           steps=steps, generator=generator, callback=callback,
                                           should_stop=host.should_stop)
        except SamplingInterrupted:
            host.check_interrupted()
            raise
    hint = alfie.subject_hint(steered.cross_attention, steered.grid_hw, [positions], (height, width),
                              plan.hint_gain)  # [B, 1, H, W]
    summary = (f"Alfie steering: border {plan.border_fraction:.3f} of each side steered for "
               f"{plan.steered_steps(steps)} of {steps} steps; hint from {len(positions)} subject tokens "
               f"(attention from step {plan.first_captured_step(steps) + 1})")
    attention = SubjectAttention(hint.float().cpu(), tuple(steered.grid_hw), plan.background, summary)
    return {"samples": (steered.latents.float() / config.vae_scale_factor).cpu()}, attention


def _plan_default(name: str) -> float:
    """A TransparentPlan field's default (the library's choice), for the widgets."""
    return float(getattr(_alfie().TransparentPlan(), name))


class AtelierTransparentSampler:
    """Sample a cut-out subject on a plain background with PixArt, and record where the subject is."""

    DESCRIPTION = ("Generates a subject ready to cut out, training-free (Alfie, arXiv 2408.14826, at any size and "
                   "aspect ratio): the prompt gets a plain-background suffix, the border of the image is steered "
                   "to a flat white background during the first steps while the subject stays in the centre, and "
                   "the cross-attention of the prompt's words is recorded in the last steps. Decode with PixArt "
                   "Transparent Decode (engine 'attention matte') and the attention output for alpha.")
    CATEGORY = f"{CATEGORY}/transparency"
    FUNCTION = "generate"
    RETURN_TYPES = ("LATENT", PIXART_ATTENTION)
    RETURN_NAMES = ("latent", "attention")
    OUTPUT_TOOLTIPS = ("Unscaled latents of the subject images, for VAE Decode or PixArt Transparent Decode.",
                       "Where the subject is (a hint from cross-attention), for PixArt Transparent Decode.")

    @classmethod
    def INPUT_TYPES(cls):
        shared = AtelierSampler.INPUT_TYPES()["required"]
        return {"required": {
            "model": (PIXART_MODEL, {"tooltip": "The PixArt model (PixArt-Σ works best)."}),
            "t5": (PIXART_T5, {"tooltip": "The T5 encoder; the node encodes the prompts it needs itself."}),
            "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                  "tooltip": "The subject, e.g. 'a red fox sitting'; a plain-background suffix is "
                                             "added."}),
            "negative": ("STRING", {"multiline": True, "dynamicPrompts": True,
                                    "default": _alfie().DEFAULT_NEGATIVE,
                                    "tooltip": "What to steer away from (default: Alfie's); used when cfg > 1."}),
            **{name: shared[name] for name in ("seed", "steps", "cfg", "sampler_name", "width", "height",
                                               "batch_size")},
            "border": ("FLOAT", {"default": _plan_default("border_fraction"), "min": 0.0, "max": 0.45,
                                 "step": 0.005, "tooltip": "Fraction of each side steered to the plain background "
                                 "around the centre region where the subject goes."}),
            "steer": ("FLOAT", {"default": _plan_default("steer_steps_fraction"), "min": 0.0, "max": 1.0,
                                "step": 0.01, "tooltip": "Fraction of the steps (the first) during which the "
                                "border is steered to the plain background; 0 turns steering off."}),
            "capture_from": ("FLOAT", {"default": _plan_default("capture_from_fraction"), "min": 0.0,
                                       "max": 0.99, "step": 0.01, "tooltip": "Attention is recorded from this "
                                       "fraction of the steps to the end (later = sharper, noisier)."}),
        }}

    def generate(self, model, t5, prompt, negative, seed, steps, cfg, sampler_name, width, height, batch_size,
                 border=0.125, steer=1.0, capture_from=0.5):
        steps = steps or sampler_spec(sampler_name, "sampler_name").default_steps
        plan = _alfie().TransparentPlan(steer_steps_fraction=steer, capture_from_fraction=capture_from,
                                        border_fraction=border)
        latent, attention = transparent_sample(model, t5, prompt, negative, seed, steps, cfg, sampler_name, width,
                                               height, batch_size, plan)
        log.info("PixArt Atelier: Transparent Sampler %s", attention.summary)
        return {"ui": {"text": [attention.summary]}, "result": (latent, attention)}


# ------------------------------------------------------------------------------------------ decode and encode


def _layer_files(role: str) -> list[str]:
    """LayerDiffuse files of `role` ("decoder" or "encoder") in models/layer_model, by name."""
    return [name for name in host.list_models(LAYER_MODELS) if role in name.lower()]


@dataclass
class _Matte:
    alpha: torch.Tensor  # [B, 1, H, W] in 0..1
    foreground: torch.Tensor  # [B, 3, H, W] straight colour in 0..1
    engine: str  # what ran, for the log and the node's text


def _attention_matte(rgb: torch.Tensor, attention: SubjectAttention | None, hint: torch.Tensor | None) -> _Matte:
    """The training-free matte (`pixart_core.rgba.matte`) from a user hint (MASK, 1 = subject) or the sampler's
    attention, on the background colour the sampler steered to (else estimated from the border)."""
    from ..pixart_core.rgba.matte import matte

    if hint is None and attention is None:
        raise ValueError("engine 'attention matte' needs a hint: connect attention from PixArt Transparent Sampler "
                         "or a subject mask to hint (or choose a LayerDiffuse decoder file as engine)")
    if hint is not None:
        source, guide = "the hint mask", hint.float().reshape(-1, 1, *hint.shape[-2:])  # [B, 1, h, w]
    else:
        source, guide = "the sampler's attention", attention.hint.float()  # [B, 1, h, w]
    background = attention.background if attention is not None else None
    alpha, foreground = matte(rgb, guide, background)  # [B, 1, H, W], [B, 3, H, W]
    colour = "estimated background" if background is None else f"background {tuple(round(c, 3) for c in background)}"
    return _Matte(alpha, foreground, f"attention matte from {source} ({colour})")


def _layerdiffuse(rgb: torch.Tensor, samples: torch.Tensor, engine: str, tta: bool) -> _Matte:
    """LayerDiffuse's transparent decoder on the VAE decode `rgb` [B, 3, H, W] of `samples` (unscaled)."""
    device = host.devices_for("vae")[0]
    decoder = transparent_decoder(host.model_path(LAYER_MODELS, engine),
                                  torch.float16 if device.type in ("cuda", "mps") else torch.float32)
    module = host.load_on_device(decoder)
    out = module.estimate(rgb, samples * module.latent_scale, tta=tta).float().cpu()  # [B, 4, H, W]
    family = f"{module.family} family" if module.family else "unknown family"
    return _Matte(out[:, :1], out[:, 1:], f"LayerDiffuse decoder {engine} ({family}{', TTA x8' if tta else ''})")


def checkerboard_preview(rgba: torch.Tensor) -> torch.Tensor:
    """RGBA IMAGE [B, H, W, 4] over a grey checkerboard, IMAGE [B, H, W, 3]."""
    from ..pixart_core.rgba.rgba_io import checkerboard

    return checkerboard(rgba.movedim(-1, 1)).float().movedim(1, -1).contiguous()  # [B, H, W, 3]


class AtelierTransparentDecode:
    """Decode latents to straight colour and alpha: LayerDiffuse's transparent VAE or the attention matte."""

    DESCRIPTION = ("Decodes latents to a transparent image. Engine 'attention matte' works on any PixArt image "
                   "without extra weights: the subject hint (attention from PixArt Transparent Sampler, or a mask "
                   "from a background-removal node) and the image give a trimap, closed-form matting gives alpha. "
                   "A LayerDiffuse decoder file (models/layer_model) reads alpha from the transparency offset a "
                   "latent carries: latents from PixArt Transparent Encode (RGBA image-to-image) or from "
                   "LayerDiffuse models; a plain PixArt latent carries none. The node shows which engine ran.")
    CATEGORY = f"{CATEGORY}/transparency"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE", "IMAGE")
    RETURN_NAMES = ("image", "mask", "rgba", "preview")
    OUTPUT_TOOLTIPS = ("Straight (not premultiplied) colour [B, H, W, 3].",
                       "1 - alpha [B, H, W], core's MASK convention (Join Image with Alpha takes it as it is).",
                       "RGBA image [B, H, W, 4] with straight alpha, for PixArt Save RGBA.",
                       "The RGBA image over a checkerboard [B, H, W, 3], for Preview Image.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": ("LATENT", {"tooltip": "Unscaled latents from a PixArt sampler."}),
                "vae": ("VAE", {"tooltip": "The VAE of the model's latent space (SDXL VAE for PixArt-Σ)."}),
                "engine": ([ATTENTION_MATTE, *_layer_files("decoder")], {
                    "default": ATTENTION_MATTE, "tooltip": "'attention matte' (training-free, needs attention or "
                    "hint), or a LayerDiffuse decoder in models/layer_model: vae_transparent_decoder.safetensors "
                    "(SDXL space, PixArt-Σ), layer_sd15_vae_transparent_decoder.safetensors (PixArt-α)."}),
                "tta": ("BOOLEAN", {"default": True, "tooltip": "LayerDiffuse only: median over 8 flips/rotations "
                                    "(cleaner edges, 8x the decoder's time)."}),
            },
            "optional": {
                "attention": (PIXART_ATTENTION, {"tooltip": "Where the subject is, from PixArt Transparent Sampler "
                              "(attention matte only)."}),
                "hint": ("MASK", {"tooltip": "A subject mask (1 = subject), e.g. from a background-removal node; "
                         "replaces the attention (attention matte only)."}),
            },
        }

    def decode(self, samples, vae, engine, tta=True, attention=None, hint=None):
        latent = samples["samples"].float()  # [B, 4, h, w] unscaled
        check_latent(latent, "samples")
        image = vae.decode(latent).float().cpu()  # [B, H, W, 3]
        rgb = image[..., :3].movedim(-1, 1).contiguous()  # [B, 3, H, W]
        if engine == ATTENTION_MATTE:
            result = _attention_matte(rgb, attention, hint)
        else:
            result = _layerdiffuse(rgb, latent, engine, tta)
        foreground = result.foreground.float().cpu().movedim(1, -1).contiguous()  # [B, H, W, 3]
        mask = 1.0 - result.alpha.float().cpu()[:, 0]  # [B, H, W]
        rgba = torch.cat([foreground, (1.0 - mask)[..., None]], dim=-1)  # [B, H, W, 4], alpha as Join computes it
        log.info("PixArt Atelier: Transparent Decode ran the %s", result.engine)
        return {"ui": {"text": [f"engine: {result.engine}"]},
                "result": (foreground, mask, rgba, checkerboard_preview(rgba))}


def _split_alpha(image: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(straight colour [B, 3, H, W], alpha [B, 1, H, W]) from an RGBA IMAGE or an IMAGE + MASK (1 - alpha)."""
    rgb = image[..., :3].float().movedim(-1, 1)  # [B, 3, H, W]
    if mask is not None and not bool(mask.any()):
        mask = None if image.shape[-1] == 4 else torch.zeros_like(rgb[:, 0])  # Load Image's mask of an opaque file
    if mask is not None:
        alpha = 1.0 - (mask.float()[:, None] if mask.ndim == 3 else mask.float().reshape(1, 1, *mask.shape))
        if tuple(alpha.shape[2:]) != tuple(rgb.shape[2:]):
            raise ValueError(f"mask: its size {tuple(alpha.shape[2:])} differs from the image's "
                             f"{tuple(rgb.shape[2:])}; connect the mask of the same image (e.g. both from Load Image)")
        if alpha.shape[0] not in (1, rgb.shape[0]):
            raise ValueError(f"mask: {alpha.shape[0]} masks for {rgb.shape[0]} images; give 1 or one per image")
        alpha = alpha.expand(rgb.shape[0], -1, -1, -1)
    elif image.shape[-1] == 4:
        alpha = image[..., 3:].float().movedim(-1, 1)  # [B, 1, H, W]
    else:
        log.warning("PixArt Atelier: Transparent Encode got an RGB image and no mask; encoding it as opaque")
        alpha = torch.ones_like(rgb[:, :1])
    return rgb.clamp(0, 1), alpha.clamp(0, 1)


class _Moments(torch.nn.Module):
    """Stands in for a core VAE's regulariser so that its encode returns the posterior (mean, logvar)."""

    def forward(self, z: torch.Tensor):
        return z, None


def posterior(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior (mean, std), each [B, 4, H/8, W/8] float32 CPU, of IMAGE `pixels` [B, H, W, 3]: from
    pixart_core's VAE (PlainVAE outside ComfyUI) or a core `comfy.sd.VAE` (its encode, regulariser bypassed)."""
    inner = getattr(getattr(vae, "handle", None), "module", None)
    if hasattr(inner, "encode_moments"):
        model = host.load_on_device(vae.handle)
        with torch.no_grad():
            moments = model.encode_moments(pixels.movedim(-1, 1).to(model.device) * 2.0 - 1.0)  # [B, 8, h, w]
    else:
        first_stage = getattr(vae, "first_stage_model", None)
        regulariser = getattr(first_stage, "regularization", None)
        if regulariser is None:
            raise ValueError("vae: this VAE does not expose its posterior (mean and std); connect an SD-1.x or SDXL "
                             "VAE (Load VAE or PixArt VAE Loader)")
        first_stage.regularization = _Moments()
        try:
            moments = vae.encode(pixels)  # [B, 8, h, w]
        finally:
            first_stage.regularization = regulariser
    moments = moments.float().cpu()
    if moments.shape[1] != 8:
        raise ValueError(f"vae: expected a 4-channel latent posterior, got {moments.shape[1]} channels "
                         "(a tiled encode, or not an SD-1.x/SDXL VAE); use a smaller image or an SD VAE")
    mean, logvar = moments.chunk(2, dim=1)  # [B, 4, h, w] each
    return mean, torch.exp(0.5 * logvar.clamp(-30.0, 20.0))


class AtelierTransparentEncode:
    """Encode an RGBA image to a latent carrying LayerDiffuse's transparency offset."""

    DESCRIPTION = ("Encodes a transparent image for RGBA image-to-image: the ordinary VAE encodes the image over "
                   "mid-grey, and LayerDiffuse's offset encoder (models/layer_model) adds where it is transparent: "
                   "latent = mean + std * offset (arXiv 2402.17113). Sample it with PixArt Sampler (denoise < 1) "
                   "and decode with PixArt Transparent Decode and the matching LayerDiffuse decoder. Images are "
                   "centre-cropped to multiples of 16 pixels.")
    CATEGORY = f"{CATEGORY}/transparency"
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Unscaled latents [B, 4, H/8, W/8] with the transparency offset.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "RGBA images [B, H, W, 4] (straight alpha), or RGB with a mask."}),
                "vae": ("VAE", {"tooltip": "The VAE of the model's latent space (SDXL VAE for PixArt-Σ)."}),
                "encoder_name": (_layer_files("encoder"), {"tooltip": "LayerDiffuse offset encoder in "
                                 "models/layer_model: vae_transparent_encoder.safetensors (SDXL space, PixArt-Σ), "
                                 "layer_sd15_vae_transparent_encoder.safetensors (PixArt-α)."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "1 - alpha, as Load Image gives it for a transparent PNG; replaces "
                                             "the image's 4th channel."}),
            },
        }

    def encode(self, image, vae, encoder_name, mask=None):
        check_image(image, "image")
        rgb, alpha = _split_alpha(image, mask)  # [B, 3, H, W], [B, 1, H, W]
        height, width = rgb.shape[2] // 16 * 16, rgb.shape[3] // 16 * 16
        if height == 0 or width == 0:
            raise ValueError(f"image: {rgb.shape[3]}x{rgb.shape[2]} is too small; PixArt needs at least 16x16 pixels")
        top, left = (rgb.shape[2] - height) // 2, (rgb.shape[3] - width) // 2
        rgb, alpha = (t[:, :, top:top + height, left:left + width] for t in (rgb, alpha))
        mean, std = posterior(vae, grey_composite(rgb, alpha).movedim(1, -1).contiguous())  # [B, 4, h, w] each
        module = host.load_on_device(transparent_encoder(host.model_path(LAYER_MODELS, encoder_name)))
        offset = module.encode(rgb, alpha).float().cpu()  # [B, 4, h, w]
        return ({"samples": module.offset_latent(mean, std, offset)},)
