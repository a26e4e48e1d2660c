"""Sampler behaviour: determinism, callbacks, interruption, guidance batching, learned sigma, v-prediction, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixart_core.sampling import (DEFAULT_STEPS, SAMPLER_TABLE, SAMPLERS, EpsDenoiser, SamplingInterrupted,
                                  cfg_eps_fn, linear_schedule, pixart_tau, plan_for, sample, sample_ddim,
                                  sample_dpmpp_2m, sample_euler)
from pixart_core.sampling.schedule import dpm_timesteps, lcm_timesteps


def _eps_fn(x, t):
    """A smooth deterministic epsilon model (depends on x and t)."""
    t = t.view(-1, 1, 1, 1)  # [B, 1, 1, 1]
    return 0.8 * torch.tanh(x) * (0.5 + t / 2000) + 0.1 * torch.sin(t / 100)


def _noise(seed=0, shape=(2, 4, 8, 8)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))  # [B, C, H, W]


def test_public_constants():
    assert SAMPLERS == ("dpmpp_2m", "sa_solver", "euler", "euler_ancestral", "ddim", "lcm")
    assert DEFAULT_STEPS == {"dpmpp_2m": 20, "sa_solver": 25, "euler": 20, "euler_ancestral": 20, "ddim": 20, "lcm": 4}


def test_schedule_facts():
    schedule = linear_schedule()
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(schedule.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-12)
    np.testing.assert_allclose(schedule.sigmas, np.sqrt((1 - schedule.alphas_cumprod) / schedule.alphas_cumprod))
    assert dpm_timesteps(20)[:3].tolist() == [999, 949, 899] and dpm_timesteps(20)[-1] == 50
    assert lcm_timesteps(4).tolist() == [999, 759, 499, 259]  # diffusers' LCMScheduler (official script: 519, 279)
    assert lcm_timesteps(4, strength=0.6).tolist() == [599, 459, 299, 159]
    t = np.array([0.0, 10.0, 500.0, 999.0, 946.4210510253906])
    np.testing.assert_allclose(schedule.sigma_to_t(schedule.sigma_at(t)), t, atol=0.05)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_seeded_generator_is_deterministic(sampler):
    steps = DEFAULT_STEPS[sampler] // 2 or 2
    first = sample(_eps_fn, _noise(), sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(7))
    again = sample(_eps_fn, _noise(), sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(7))
    other = sample(_eps_fn, _noise(), sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert torch.isfinite(first).all()
    if SAMPLER_TABLE[sampler].draws_noise:
        assert not torch.allclose(first, other)  # the generator feeds their fresh noise
    else:
        assert torch.equal(first, other)  # deterministic samplers draw nothing


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("denoise", [1.0, 0.5])
def test_callback_after_every_step(sampler, denoise):
    steps = 8 if sampler != "lcm" else 4
    init = _noise(3) if denoise < 1 else None
    events = []
    result = sample(_eps_fn, _noise(), sampler=sampler, steps=steps, denoise=denoise, init_latent=init,
                    generator=torch.Generator().manual_seed(1),
                    callback=lambda i, n, x, d: events.append((i, n, x.clone(), d.shape)))
    expected_steps = steps if (denoise == 1 or sampler == "lcm") else int(steps * denoise)
    assert [e[0] for e in events] == list(range(expected_steps))
    assert all(e[1] == expected_steps for e in events)
    assert all(e[3] == result.shape for e in events)
    assert torch.allclose(events[-1][2], result)  # the last callback sees the returned latent


@pytest.mark.parametrize("stop_after", [0, 1, 3])
def test_should_stop_raises_between_steps(stop_after):
    calls = {"eps": 0, "asked": 0}

    def counting_eps(x, t):
        calls["eps"] += 1
        return _eps_fn(x, t)

    def should_stop():
        calls["asked"] += 1
        return calls["asked"] > stop_after

    with pytest.raises(SamplingInterrupted, match=f"after {stop_after} of 10 steps"):
        sample(counting_eps, _noise(), sampler="dpmpp_2m", steps=10, should_stop=should_stop)
    assert calls["eps"] == stop_after  # one model call per finished step, none after the stop


def test_should_stop_false_runs_to_the_end():
    result = sample(_eps_fn, _noise(), sampler="euler", steps=5, should_stop=lambda: False)
    assert torch.equal(result, sample(_eps_fn, _noise(), sampler="euler", steps=5))


def test_half_precision_noise_runs_in_float32():
    result = sample(_eps_fn, _noise().half(), sampler="dpmpp_2m", steps=4)
    assert result.dtype == torch.float32
    assert torch.allclose(result, sample(_eps_fn, _noise().half().float(), sampler="dpmpp_2m", steps=4))


@pytest.mark.parametrize("sampler_fn", [sample_euler, sample_ddim, sample_dpmpp_2m])
def test_constant_denoiser_is_reached_exactly(sampler_fn):
    # With D(x, sigma) = c the probability-flow ODE solution at sigma = 0 is c; these solvers are exact for it.
    target = _noise(5)
    sigmas = torch.tensor([14.6, 5.0, 1.3, 0.4, 0.0], dtype=torch.float64)
    x = _noise(6) * 14.6
    result = sampler_fn(lambda x, sigma: target, x, sigmas)
    assert torch.allclose(result, target, atol=1e-5)


def test_denoiser_maps_sigma_to_model_input_and_timestep():
    seen = {}

    def recording_eps(x, t):
        seen["x"], seen["t"] = x, t
        return torch.zeros_like(x)

    schedule = linear_schedule()
    plan = plan_for(schedule, "euler", 10)
    denoiser = EpsDenoiser(recording_eps, schedule, plan)
    x = _noise()
    sigma = float(plan.sigmas[1])
    out = denoiser(x, torch.full((2,), sigma))
    assert torch.equal(out, x)  # eps = 0 -> x0 = x
    assert torch.allclose(seen["x"], x / np.sqrt(1 + sigma**2))
    assert seen["t"].tolist() == pytest.approx([float(plan.timesteps[1])] * 2)  # fractional Euler timestep, exactly
    off_plan = denoiser.timestep(float(schedule.sigmas[321]))
    assert off_plan == pytest.approx(321.0, abs=1e-6)


def test_pixart_tau_window():
    schedule = linear_schedule()
    tau = pixart_tau(schedule)
    assert [tau(float(schedule.sigmas[t])) for t in (199, 200, 500, 800, 801)] == [0.0, 1.0, 1.0, 1.0, 0.0]


# --- guidance --------------------------------------------------------------------------------------------


class RecordingModel:
    """A stand-in PixArt transformer: records its inputs, returns per-sample constants in 2*C channels."""

    def __init__(self, learned_sigma=True):
        self.calls = []
        self.learned_sigma = learned_sigma

    def __call__(self, x, t, context, context_mask=None, resolution=None, aspect_ratio=None):
        self.calls.append(dict(x=x, t=t, context=context, mask=context_mask, resolution=resolution,
                               aspect_ratio=aspect_ratio))
        value = context[:, 0, 0].view(-1, 1, 1, 1)  # [nB, 1, 1, 1] identifies which prompt a row got
        eps = value.expand_as(x) + 0.01 * x  # [nB, C, H, W]
        if self.learned_sigma:
            return torch.cat([eps, torch.full_like(x, 1e6)], dim=1)  # [nB, 2C, H, W] junk variance channels
        return eps


def _prompts():
    positive = torch.full((1, 5, 8), 2.0)  # [1, L, C]
    positive_mask = torch.tensor([[1, 1, 1, 0, 0]])  # [1, L]
    negative = torch.full((1, 3, 8), -1.0)  # [1, L', C]  shorter: padded to 5
    negative_mask = torch.tensor([[1, 1, 0]])  # [1, L']
    return positive, positive_mask, negative, negative_mask


def test_cfg_runs_one_batch_uncond_first_with_separate_masks():
    model = RecordingModel()
    positive, positive_mask, negative, negative_mask = _prompts()
    eps_fn = cfg_eps_fn(model, positive, positive_mask, negative, negative_mask, 4.5)
    x, t = _noise(), torch.tensor([999.0, 999.0])
    eps = eps_fn(x, t)
    assert len(model.calls) == 1
    call = model.calls[0]
    assert torch.equal(call["x"], torch.cat([x, x]))
    assert call["t"].tolist() == [999.0] * 4
    assert call["context"].shape == (4, 5, 8)
    assert call["context"][:2, :3].eq(-1).all() and call["context"][:2, 3:].eq(0).all()  # [uncond (padded), ...
    assert call["context"][2:].eq(2).all()  # ... cond]
    assert call["mask"].tolist() == [[1, 1, 0, 0, 0]] * 2 + [[1, 1, 1, 0, 0]] * 2
    assert call["resolution"] is None and call["aspect_ratio"] is None  # micro-conditions: the model's own default
    expected = (-1.0 + 0.01 * x) + 4.5 * ((2.0 + 0.01 * x) - (-1.0 + 0.01 * x))  # uncond + s (cond - uncond)
    assert eps.shape == x.shape  # learned-sigma channels dropped
    assert torch.allclose(eps, expected, atol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 0.0])
def test_guidance_scale_at_most_one_runs_cond_only(scale):
    model = RecordingModel()
    positive, positive_mask, _, _ = _prompts()
    eps_fn = cfg_eps_fn(model, positive, positive_mask, None, None, scale)
    x = _noise()
    eps = eps_fn(x, torch.tensor([500.0, 500.0]))
    assert len(model.calls) == 1 and model.calls[0]["x"].shape[0] == 2
    assert model.calls[0]["resolution"] is None
    assert torch.allclose(eps, 2.0 + 0.01 * x)


def test_cfg_without_negative_is_an_error():
    positive, positive_mask, _, _ = _prompts()
    with pytest.raises(ValueError, match="negative context"):
        cfg_eps_fn(RecordingModel(), positive, positive_mask, None, None, 4.5)


def test_learned_sigma_channels_are_dropped_and_plain_eps_kept():
    positive, positive_mask, negative, negative_mask = _prompts()
    x, t = _noise(), torch.tensor([10.0, 10.0])
    with_sigma = cfg_eps_fn(RecordingModel(True), positive, positive_mask, negative, negative_mask, 3.0)(x, t)
    plain = cfg_eps_fn(RecordingModel(False), positive, positive_mask, negative, negative_mask, 3.0)(x, t)
    assert with_sigma.shape == plain.shape == x.shape
    assert torch.equal(with_sigma, plain)
    assert with_sigma.abs().max() < 100  # none of the 1e6 variance values leaked


def test_v_prediction_is_converted_to_eps():
    schedule = linear_schedule()
    x0, eps_true = _noise(1), _noise(2)
    t = torch.tensor([37.0, 800.0])
    alpha_bar = torch.tensor(schedule.alphas_cumprod[[37, 800]], dtype=torch.float32).view(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps_true  # [B, C, H, W]
    v = alpha_bar.sqrt() * eps_true - (1 - alpha_bar).sqrt() * x0  # [B, C, H, W]

    def v_model(x, t, context, context_mask=None, resolution=None, aspect_ratio=None):
        return v

    positive, positive_mask, _, _ = _prompts()
    eps = cfg_eps_fn(v_model, positive, positive_mask, None, None, 1.0, prediction="v_prediction")(x_t, t)
    assert torch.allclose(eps, eps_true, atol=1e-5)
    with pytest.raises(ValueError, match="prediction"):
        cfg_eps_fn(v_model, positive, positive_mask, None, None, 1.0, prediction="sample")


def test_cfg_broadcasts_one_prompt_over_a_batch_and_rejects_mismatch():
    model = RecordingModel(False)
    positive, positive_mask, negative, negative_mask = _prompts()
    eps_fn = cfg_eps_fn(model, positive, positive_mask, negative, negative_mask, 2.0)
    eps_fn(_noise(shape=(3, 4, 8, 8)), torch.full((3,), 5.0))
    assert model.calls[0]["context"].shape[0] == 6
    bad = cfg_eps_fn(model, positive.expand(2, -1, -1), positive_mask.expand(2, -1), negative, negative_mask, 2.0)
    with pytest.raises(ValueError, match="batch size 2"):
        bad(_noise(shape=(3, 4, 8, 8)), torch.full((3,), 5.0))


# --- input validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(sampler="heun"), "unknown sampler"),
        (dict(steps=0), "positive integer"),
        (dict(steps=2.5), "positive integer"),
        (dict(sampler="lcm", steps=60), "cannot exceed 50"),
        (dict(denoise=0.5), "needs an init_latent"),
        (dict(denoise=0.0, init_latent=torch.zeros(2, 4, 8, 8)), r"denoise must be in \(0, 1\]"),
        (dict(denoise=1.5, init_latent=torch.zeros(2, 4, 8, 8)), r"denoise must be in \(0, 1\]"),
        (dict(steps=4, denoise=0.2, init_latent=torch.zeros(2, 4, 8, 8)), "leaves no step"),
        (dict(sampler="lcm", steps=8, denoise=0.1, init_latent=torch.zeros(2, 4, 8, 8)), "LCM cannot take 8 steps"),
        (dict(init_latent=torch.zeros(1, 4, 8, 8)), "differs from noise"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(_eps_fn, _noise(), **kwargs)


def test_bad_noise_and_bad_eps_shape():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        sample(_eps_fn, torch.zeros(4, 8, 8))
    with pytest.raises(ValueError, match="learned-sigma"):
        sample(lambda x, t: torch.cat([x, x], dim=1), _noise(), steps=2)
