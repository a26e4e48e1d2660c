"""PixArtPipeline with PixArt-δ ControlNets, and the sampling window of `cfg_eps_fn(controls=...)`.

The reference is built here from the pipeline's own pieces: the control latent computed independently (cover
resize + centre crop, VAE posterior mean, scale factor) and fed to the transformer's `controls=` at every step.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pixart_core.pipeline import PixArtPipeline
from pixart_core.sampling import cfg_eps_fn, linear_schedule, plan_for, sample
from pixart_core.sampling.guidance import ScheduledControl

PROMPT, STEPS, CFG = "a stone cottage, watercolor", 4, 4.5


@pytest.fixture(scope="module")
def pipe(tiny_suite):
    return PixArtPipeline.from_pretrained(tiny_suite / "pipelines" / "alpha-1024-ms")


@pytest.fixture(scope="module")
def controlnets(tiny_suite):
    from pixart_core import load_controlnet

    return [load_controlnet(tiny_suite / "controlnets" / name) for name in ("official.pth", "diffusers")]


def _control_latent(pipe, image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, 1 or 3, H, W] in 0..1 -> scaled latent: covered, centre-cropped, to -1..1, posterior mean, scaled."""
    rgb = image.expand(-1, 3, -1, -1).float()  # [B, 3, H, W]
    scale = max(height / rgb.shape[2], width / rgb.shape[3])
    size = (max(int(rgb.shape[2] * scale), height), max(int(rgb.shape[3] * scale), width))
    rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)  # [B, 3, rH, rW]
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    pixels = rgb[:, :, top:top + height, left:left + width] * 2 - 1  # [B, 3, height, width]
    with torch.no_grad():
        mean = pipe.vae.encode_moments(pixels).chunk(2, dim=1)[0]  # [B, 4, h, w]
    return mean * pipe.vae_scale_factor


class _AlwaysControlled(torch.nn.Module):
    """The transformer with fixed `controls` at every call (the reference's full window)."""

    def __init__(self, transformer, controls):
        super().__init__()
        self.transformer, self.controls = transformer, controls

    def forward(self, x, t, context, context_mask=None):
        return self.transformer(x, t, context, context_mask=context_mask, controls=self.controls)


def _reference(pipe, controls, noise, height, width):
    cond, cond_mask = pipe.encode_prompt([PROMPT])  # [1, L, C], [1, L]
    uncond, uncond_mask = pipe.encode_prompt([""], max_length=cond.shape[1])
    model = _AlwaysControlled(pipe.transformer, controls)
    with torch.inference_mode():
        return sample(cfg_eps_fn(model, cond, cond_mask, uncond, uncond_mask, CFG), noise, steps=STEPS)


def _run(pipe, noise, height, width, **control):
    return pipe(PROMPT, height=height, width=width, num_inference_steps=STEPS, guidance_scale=CFG, latents=noise,
                use_resolution_binning=False, output_type="latent", **control)  # [1, 4, h, w]


def test_pipeline_follows_the_reference_wiring(pipe, controlnets):
    height, width = 64, 96
    image = torch.rand(1, 1, 50, 110, generator=torch.Generator().manual_seed(0))  # a 1-channel edge map
    noise = torch.randn(1, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(1))
    got = _run(pipe, noise, height, width, control_image=image, controlnet=controlnets[0],
               controlnet_conditioning_scale=0.5)
    latent = _control_latent(pipe, image, height, width)  # [1, 4, 8, 12]
    expected = _reference(pipe, [(controlnets[0], latent, 0.5)], noise, height, width)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    plain = _run(pipe, noise, height, width)
    assert (got - plain).abs().max() > 1e-3  # the ControlNet acts
    # a 1-channel map is its grey RGB image; PIL images are read as 0..1 RGB
    from PIL import Image

    rgb = _run(pipe, noise, height, width, control_image=image.expand(-1, 3, -1, -1), controlnet=controlnets[0],
               controlnet_conditioning_scale=0.5)
    assert torch.equal(rgb, got)
    pil = Image.fromarray((image[0, 0] * 255).round().byte().numpy()).convert("RGB")
    from_pil = _run(pipe, noise, height, width, control_image=pil, controlnet=controlnets[0],
                    controlnet_conditioning_scale=0.5)
    quantized = _run(pipe, noise, height, width, control_image=(image * 255).round() / 255,
                     controlnet=controlnets[0], controlnet_conditioning_scale=0.5)
    assert torch.equal(from_pil, quantized)


def test_two_controlnets_and_a_batch(pipe, controlnets):
    height, width = 64, 64
    images = [torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(s)) for s in (2, 3)]
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    got = pipe(PROMPT, height=height, width=width, num_inference_steps=STEPS, guidance_scale=CFG, latents=noise,
               use_resolution_binning=False, output_type="latent", num_images_per_prompt=2,
               control_image=images, controlnet=controlnets, controlnet_conditioning_scale=[0.5, 1.0])
    cond, cond_mask = pipe.encode_prompt([PROMPT] * 2)
    uncond, uncond_mask = pipe.encode_prompt([""] * 2, max_length=cond.shape[1])
    controls = [(net, _control_latent(pipe, image, height, width), scale)
                for net, image, scale in zip(controlnets, images, (0.5, 1.0))]
    with torch.inference_mode():
        expected = sample(cfg_eps_fn(_AlwaysControlled(pipe.transformer, controls), cond, cond_mask, uncond,
                                     uncond_mask, CFG), noise, steps=STEPS)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_window_switches_control_on_and_off(pipe, controlnets):
    height, width = 64, 64
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    control = {"control_image": image, "controlnet": controlnets[0]}
    plain = _run(pipe, noise, height, width)
    # start = end = 1: active only at t = 0, which a 4-step DPM-Solver++ never evaluates
    assert torch.equal(_run(pipe, noise, height, width, control_guidance_start=1.0, control_guidance_end=1.0,
                            **control), plain)
    assert torch.equal(_run(pipe, noise, height, width, controlnet_conditioning_scale=0.0, **control), plain)
    full = _run(pipe, noise, height, width, **control)
    assert (full - plain).abs().max() > 1e-3
    late = _run(pipe, noise, height, width, control_guidance_start=0.5, **control)
    assert not torch.equal(late, full) and not torch.equal(late, plain)


class _Recorder(torch.nn.Module):
    """A stand-in DiT: records (timestep, control latents) per call, returns zeros."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, x, t, context, context_mask=None, controls=None):
        self.calls.append((float(t[0]), None if controls is None else [c[1].clone() for c in controls]))
        return torch.zeros_like(x)


def test_window_follows_comfyui_percent_convention():
    steps, start, end = 10, 0.3, 0.6
    recorder = _Recorder()
    latent = torch.randn(1, 4, 4, 4)
    control = ScheduledControl(torch.nn.Identity(), latent, 0.8, start, end)
    context = torch.randn(1, 5, 8)
    eps_fn = cfg_eps_fn(recorder, context, None, torch.zeros(1, 5, 8), None, 3.0, controls=[control])
    sample(eps_fn, torch.randn(2, 4, 4, 4), steps=steps)
    low, high = (1 - end) * 999, (1 - start) * 999
    timesteps = plan_for(linear_schedule(), "dpmpp_2m", steps, 1.0).timesteps
    inside = [float(t) for t in timesteps if low <= float(t) <= high]
    assert inside and len(inside) < steps
    assert [t for t, controls in recorder.calls if controls is not None] == inside
    for t, controls in recorder.calls:
        if controls is not None:  # one latent for the whole CFG batch [uncond(2); cond(2)]
            assert len(controls) == 1 and torch.equal(controls[0], latent.expand(4, -1, -1, -1))


def test_bad_control_arguments_are_named(pipe, controlnets):
    with pytest.raises(ValueError, match="control_image and controlnet"):
        pipe(PROMPT, height=64, width=64, num_inference_steps=1, control_image=torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="control_image has 3 images"):
        pipe(PROMPT, height=64, width=64, num_inference_steps=1, use_resolution_binning=False,
             control_image=torch.rand(3, 3, 64, 64), controlnet=controlnets[0])
    with pytest.raises(ValueError, match="start_percent"):
        ScheduledControl(torch.nn.Identity(), torch.zeros(1, 4, 8, 8), 1.0, 0.6, 0.2)
