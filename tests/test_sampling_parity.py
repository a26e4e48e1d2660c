"""Our samplers against diffusers' scheduler loops (PixArt settings, linear betas), same noise and generator.

The fake epsilon model is deterministic and depends non-trivially on x and t: the exact epsilon of a
Gaussian data distribution under a smooth approximation of PixArt's alpha_bar, plus a fixed random
conv net whose contribution oscillates with t. Bar: max abs diff <= 1e-4.
"""

from __future__ import annotations

import pytest
import torch

from pixart_core.sampling import DEFAULT_STEPS, cfg_eps_fn, sample

diffusers = pytest.importorskip("diffusers")

TOLERANCE = 1e-4
LINEAR = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def _fake_eps_model():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 4, 3, 3, generator=generator) * 0.3  # [C, C, 3, 3]
    bias = torch.randn(4, generator=generator) * 0.1  # [C]
    mean, variance = 0.3, 0.6

    def eps_fn(x: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t).reshape(-1).expand(x.shape[0]).double()  # [B]
        alpha_bar = torch.exp(-(1e-4 * t + 0.5 * (0.02 - 1e-4) * t**2 / 1000)).float().view(-1, 1, 1, 1)  # [B,1,1,1]
        exact = (1 - alpha_bar).sqrt() * (x - alpha_bar.sqrt() * mean) / (alpha_bar * variance + 1 - alpha_bar)
        wobble = torch.tanh(torch.nn.functional.conv2d(x, weight, bias, padding=1))  # [B, C, H, W]
        return exact + 0.05 * wobble * torch.cos(t.float() / 150).view(-1, 1, 1, 1)

    return eps_fn


EPS_FN = _fake_eps_model()


def _scheduler(name: str):
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler, LCMScheduler, SASolverScheduler)

    if name == "dpmpp_2m":  # PixArt-Σ's released scheduler_config.json
        return DPMSolverMultistepScheduler(**LINEAR, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                           lower_order_final=True, timestep_spacing="linspace", steps_offset=0)
    if name == "ddim":
        return DDIMScheduler(**LINEAR, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing", steps_offset=0)
    if name == "euler":
        return EulerDiscreteScheduler(**LINEAR, timestep_spacing="linspace", steps_offset=0)
    if name == "euler_ancestral":
        return EulerAncestralDiscreteScheduler(**LINEAR, timestep_spacing="linspace", steps_offset=0)
    if name == "lcm":  # PixArt-LCM's scheduler_config.json (timestep_scaling 10 is the default)
        return LCMScheduler(**LINEAR, original_inference_steps=50, clip_sample=False, set_alpha_to_one=True)
    if name == "sa_solver":  # the PixArt apps' SA-Solver setting
        return SASolverScheduler(**LINEAR, predictor_order=2, corrector_order=2, algorithm_type="data_prediction",
                                 tau_func=lambda t: 1 if 200 <= t <= 800 else 0, timestep_spacing="linspace")
    raise KeyError(name)


def _diffusers_loop(name, eps_fn, noise, steps, generator=None, init_latent=None, strength=1.0):
    """The diffusers img2img / txt2img denoising loop (scale_model_input, step; LCM returns denoised)."""
    scheduler = _scheduler(name)
    if name == "lcm":
        scheduler.set_timesteps(steps, strength=strength)  # as LatentConsistencyModelImg2ImgPipeline
        timesteps = scheduler.timesteps
    else:
        scheduler.set_timesteps(steps)
        start = steps - min(int(steps * strength), steps)  # img2img `get_timesteps`
        timesteps = scheduler.timesteps[start:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
    if init_latent is None:
        latents = noise * scheduler.init_noise_sigma
    else:
        latents = scheduler.add_noise(init_latent, noise, timesteps[:1])
    stochastic = name in ("euler_ancestral", "lcm", "sa_solver")
    for i, t in enumerate(timesteps):
        model_input = scheduler.scale_model_input(latents, t)
        eps = eps_fn(model_input, t)
        out = scheduler.step(eps, t, latents, return_dict=False, **({"generator": generator} if stochastic else {}))
        latents = out[1] if name == "lcm" and i == len(timesteps) - 1 else out[0]
    return latents


def _latents(seed, scale=1.0, shift=0.0):
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed)) * scale + shift  # [B, C, H, W]


CASES = [(name, steps) for name in ("dpmpp_2m", "ddim", "euler", "euler_ancestral", "sa_solver")
         for steps in (4, 10, 20)] + [("sa_solver", 25), ("lcm", 2), ("lcm", 4), ("lcm", 8), ("dpmpp_2m", 7)]


@pytest.mark.parametrize("name,steps", CASES)
def test_txt2img_matches_diffusers(name, steps):
    noise = _latents(1)
    expected = _diffusers_loop(name, EPS_FN, noise, steps, generator=torch.Generator().manual_seed(5))
    ours = sample(EPS_FN, noise, sampler=name, steps=steps, generator=torch.Generator().manual_seed(5))
    assert ours.shape == expected.shape
    diff = (ours - expected).abs().max().item()
    assert diff <= TOLERANCE, f"{name} {steps} steps: max abs diff {diff:.3e}"
    assert expected.abs().max().item() > 0.5  # a real result, not a collapsed one


@pytest.mark.parametrize("name", ["dpmpp_2m", "ddim", "euler", "euler_ancestral", "sa_solver", "lcm"])
def test_img2img_denoise_0_6_matches_diffusers(name):
    noise, init = _latents(1), _latents(2, 0.8, 0.3)
    steps = 6 if name == "lcm" else 10
    expected = _diffusers_loop(name, EPS_FN, noise, steps, torch.Generator().manual_seed(5), init, strength=0.6)
    ours = sample(EPS_FN, noise, sampler=name, steps=steps, denoise=0.6, init_latent=init,
                  generator=torch.Generator().manual_seed(5))
    diff = (ours - expected).abs().max().item()
    assert diff <= TOLERANCE, f"{name} img2img: max abs diff {diff:.3e}"
    # and the init latent really shaped the result
    txt2img = sample(EPS_FN, noise, sampler=name, steps=steps, generator=torch.Generator().manual_seed(5))
    assert (ours - txt2img).abs().max().item() > 1e-2


def test_ddim_off_grid_step_counts_stay_close():
    # For steps not dividing 1000 diffusers' DDIM steps to t - 1000 // steps, one timestep off the next scheduled
    # one; ours follows the scheduled chain. The results stay close (documented deviation).
    noise = _latents(1)
    expected = _diffusers_loop("ddim", EPS_FN, noise, 7)
    ours = sample(EPS_FN, noise, sampler="ddim", steps=7)
    assert (ours - expected).abs().max().item() < 5e-2


def test_default_steps_match_diffusers():
    noise = _latents(3)
    for name in ("dpmpp_2m", "lcm"):
        steps = DEFAULT_STEPS[name]
        expected = _diffusers_loop(name, EPS_FN, noise, steps, generator=torch.Generator().manual_seed(9))
        ours = sample(EPS_FN, noise, sampler=name, steps=steps, generator=torch.Generator().manual_seed(9))
        assert (ours - expected).abs().max().item() <= TOLERANCE


def test_guided_dpm_matches_diffusers_pixart_pipeline():
    """cfg_eps_fn + sample == PixArtAlphaPipeline (batch order, separate masks, micro-conditions, learned sigma)."""
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=128, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    ).eval()
    scheduler = DPMSolverMultistepScheduler(**LINEAR, algorithm_type="dpmsolver++", solver_order=2,
                                            solver_type="midpoint", lower_order_final=True,
                                            timestep_spacing="linspace", steps_offset=0)
    pipe = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                               scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(4)
    prompt = torch.randn(1, 6, 32, generator=generator)  # [1, L, 32]
    prompt_mask = torch.tensor([[1, 1, 1, 1, 0, 0]])  # [1, L]
    negative = torch.randn(1, 6, 32, generator=generator)  # [1, L, 32]
    negative_mask = torch.tensor([[1, 1, 0, 0, 0, 0]])  # [1, L]
    noise = torch.randn(1, 4, 8, 6, generator=generator)  # [1, 4, H/8, W/8]
    with torch.no_grad():
        expected = pipe(prompt_embeds=prompt, prompt_attention_mask=prompt_mask, negative_prompt_embeds=negative,
                        negative_prompt=None, negative_prompt_attention_mask=negative_mask, latents=noise, height=64, width=48,
                        num_inference_steps=8, guidance_scale=4.5, output_type="latent",
                        use_resolution_binning=False, clean_caption=False).images

    def model(x, t, context, context_mask=None):
        # micro-conditions as our transformer derives them when none are given: the latent's size and ratio
        height, width = x.shape[-2] * 8, x.shape[-1] * 8
        resolution = torch.tensor([[float(height), float(width)]]).expand(x.shape[0], 2)  # [nB, 2]
        aspect_ratio = torch.tensor([[height / width]]).expand(x.shape[0], 1)  # [nB, 1]
        return transformer(x, encoder_hidden_states=context, encoder_attention_mask=context_mask, timestep=t,
                           added_cond_kwargs={"resolution": resolution, "aspect_ratio": aspect_ratio},
                           return_dict=False)[0]

    eps_fn = cfg_eps_fn(model, prompt, prompt_mask, negative, negative_mask, 4.5)
    with torch.no_grad():
        ours = sample(eps_fn, noise, sampler="dpmpp_2m", steps=8)
    # an untrained transformer does not predict the noise, so x0 = x - sigma * eps reaches ~600 at sigma_max:
    # compare relative to that scale (float32 round-off of both implementations is ~1e-7 of it)
    scale = expected.abs().max().item()
    diff = (ours - expected).abs().max().item()
    assert diff <= TOLERANCE * max(1.0, scale / 10), f"guided DPM vs PixArtAlphaPipeline: {diff:.3e} (scale {scale:.1f})"


@pytest.mark.parametrize("name", ["dpmpp_2m", "euler"])
def test_v_prediction_matches_diffusers(name):
    """A v-model through cfg_eps_fn(prediction="v_prediction") == diffusers with prediction_type="v_prediction"."""

    def v_fn(x, t):
        return EPS_FN(x, t) * 0.7 - 0.2 * x  # any deterministic function of (x, t) serves as a v-model

    def model(x, t, context, context_mask=None, resolution=None, aspect_ratio=None):
        return v_fn(x, t)

    scheduler = _scheduler(name)
    scheduler.register_to_config(prediction_type="v_prediction")
    scheduler.set_timesteps(10)
    noise = _latents(1)
    latents = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        latents = scheduler.step(v_fn(scheduler.scale_model_input(latents, t), t), t, latents, return_dict=False)[0]
    context = torch.zeros(1, 3, 8)  # [1, L, C]
    eps_fn = cfg_eps_fn(model, context, None, None, None, 1.0, prediction="v_prediction")
    ours = sample(eps_fn, noise, sampler=name, steps=10)
    diff = (ours - latents).abs().max().item()
    assert diff <= TOLERANCE, f"{name} v-prediction: max abs diff {diff:.3e}"


def test_noise_schedule_matches_diffusers():
    from diffusers import DDPMScheduler

    from pixart_core.sampling import linear_schedule

    reference = DDPMScheduler(**LINEAR).alphas_cumprod.double().numpy()
    ours = linear_schedule().alphas_cumprod
    assert abs(ours - reference).max() < 1e-6
