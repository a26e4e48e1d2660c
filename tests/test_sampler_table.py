"""The sampler table drives every name, default and check; the `sample_*` functions run under a driver that calls
them exactly as ComfyUI's KSAMPLER does (`comfy/samplers.py`), with k-diffusion's callback dict."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from pixart_core.__main__ import _add_generate, main
from pixart_core.sampling import (DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLER_TABLE, SAMPLERS, EpsDenoiser,
                                  linear_schedule, noise_sampler_from, plan_for, sample, sampler_spec)

K_DIFFUSION_KEYS = {"i", "x", "sigma", "sigma_hat", "denoised"}


def _eps_fn(x, t):
    t = t.view(-1, 1, 1, 1)  # [B, 1, 1, 1]
    return 0.8 * torch.tanh(x) * (0.5 + t / 2000) + 0.1 * torch.sin(t / 100)  # [B, C, H, W]


def _noise(seed=0):
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))  # [B, C, H, W]


def ksampler_like(sampler_function, model, noise, sigmas, seed, disable=True, **extra_options):
    """What ComfyUI's KSAMPLER.sample does around a k-diffusion sampler function: extra_args with the model
    options and the seed, a callback reading the step dict, the progress-bar flag, extra options as keywords."""
    extra_args = {"model_options": {"transformer_options": {}}, "seed": seed}
    steps = []
    samples = sampler_function(model, noise, sigmas, extra_args=extra_args, callback=steps.append, disable=disable,
                               **extra_options)
    return samples, steps


class ComfyStyleModel:
    """A denoiser called as ComfyUI calls its KSamplerX0Inpaint: model(x, sigma, model_options=..., seed=...)."""

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self.extra_args_seen = []

    def __call__(self, x, sigma, model_options=None, seed=None):
        self.extra_args_seen.append((model_options, seed))
        return self.denoiser(x, sigma)


@pytest.mark.parametrize("name", SAMPLERS)
def test_sampler_function_runs_under_a_ksampler_driver(name):
    spec = SAMPLER_TABLE[name]
    schedule = linear_schedule()
    steps = 4
    plan = plan_for(schedule, name, steps)
    denoiser = EpsDenoiser(_eps_fn, schedule, plan)
    model = ComfyStyleModel(denoiser if spec.denoiser is None else spec.denoiser(denoiser))
    sigma_start = float(plan.sigmas[0])
    x = _noise() * (sigma_start if spec.starts_from_sigma_max else math.sqrt(1 + sigma_start**2))  # [B, C, H, W]
    options = {} if spec.options is None else dict(spec.options(schedule))
    noise_calls = []
    if spec.draws_noise:
        draw = noise_sampler_from(x, torch.Generator().manual_seed(3))

        def noise_sampler(sigma, sigma_next):  # k-diffusion's two-argument form
            noise_calls.append((float(sigma), float(sigma_next)))
            return draw(sigma, sigma_next)

        options["noise_sampler"] = noise_sampler

    samples, step_dicts = ksampler_like(spec.function, model, x, plan.sigmas, seed=11, **options)

    assert [d["i"] for d in step_dicts] == list(range(steps))
    assert all(K_DIFFUSION_KEYS <= d.keys() for d in step_dicts)
    assert torch.equal(step_dicts[0]["x"], x)  # called before the update, with the step's input
    assert all(float(d["sigma"]) == float(plan.sigmas[d["i"]]) == float(d["sigma_hat"]) for d in step_dicts)
    assert all(d["denoised"].shape == x.shape for d in step_dicts)
    assert model.extra_args_seen == [({"transformer_options": {}}, 11)] * steps  # extra_args reach the model
    if spec.draws_noise:
        pairs = [(float(a), float(b)) for a, b in zip(plan.sigmas[:-1], plan.sigmas[1:])]
        assert set(noise_calls) <= set(pairs) and noise_calls  # noise_sampler(sigma, sigma_next)
    # sample() is this driver plus the VP conversion: same numbers
    expected = sample(_eps_fn, _noise(), sampler=name, steps=steps, generator=torch.Generator().manual_seed(3))
    assert torch.equal(samples / math.sqrt(1 + float(plan.sigmas[-1]) ** 2), expected)


def test_disable_controls_the_progress_bar(capsys):
    spec = SAMPLER_TABLE["euler"]
    plan = plan_for(linear_schedule(), "euler", 3)
    model = ComfyStyleModel(EpsDenoiser(_eps_fn, linear_schedule(), plan))
    ksampler_like(spec.function, model, _noise(), plan.sigmas, seed=0, disable=True)
    assert capsys.readouterr().err == ""
    ksampler_like(spec.function, model, _noise(), plan.sigmas, seed=0, disable=False)
    assert "3/3" in capsys.readouterr().err


@pytest.mark.parametrize("name", [name for name, spec in SAMPLER_TABLE.items() if spec.draws_noise])
def test_default_noise_sampler_follows_the_seed_in_extra_args(name):
    spec = SAMPLER_TABLE[name]
    schedule = linear_schedule()
    plan = plan_for(schedule, name, 4)
    denoiser = EpsDenoiser(_eps_fn, schedule, plan)
    model = ComfyStyleModel(denoiser if spec.denoiser is None else spec.denoiser(denoiser))
    options = {} if spec.options is None else dict(spec.options(schedule))
    x = _noise() * float(plan.sigmas[0])  # [B, C, H, W]
    first, _ = ksampler_like(spec.function, model, x, plan.sigmas, seed=5, **options)
    again, _ = ksampler_like(spec.function, model, x, plan.sigmas, seed=5, **options)
    other, _ = ksampler_like(spec.function, model, x, plan.sigmas, seed=6, **options)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_names_and_defaults_come_from_the_table(pack):
    assert SAMPLERS == tuple(SAMPLER_TABLE)
    assert DEFAULT_STEPS == {name: spec.default_steps for name, spec in SAMPLER_TABLE.items()}
    assert DEFAULT_SAMPLER in SAMPLER_TABLE

    required = pack.NODE_CLASS_MAPPINGS["AtelierSampler"].INPUT_TYPES()["required"]
    choices, options = required["sampler_name"]
    assert choices == list(SAMPLER_TABLE) and options["default"] == DEFAULT_SAMPLER
    assert required["steps"][1]["default"] == SAMPLER_TABLE[DEFAULT_SAMPLER].default_steps

    subparsers = argparse.ArgumentParser().add_subparsers()
    _add_generate(subparsers)
    (sampler_action,) = [a for a in subparsers.choices["generate"]._actions if "--sampler" in a.option_strings]
    assert tuple(sampler_action.choices) == tuple(SAMPLER_TABLE)


def test_one_check_names_the_argument_and_the_choices(pack, capsys):
    choices = ", ".join(SAMPLER_TABLE)
    with pytest.raises(ValueError, match=f"unknown sampler 'heun'; choose one of {choices}$"):
        sampler_spec("heun")
    with pytest.raises(ValueError, match=f"unknown sampler 'heun'; choose one of {choices}$"):
        sample(_eps_fn, _noise(), sampler="heun")
    with pytest.raises(ValueError, match=f"unknown sampler_name 'heun'; choose one of {choices}$"):
        pack.NODE_CLASS_MAPPINGS["AtelierSampler"]().generate(None, None, None, 0, 20, 4.5, "heun", 64, 64, 1)
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "a", "--out", "o.png", "--sampler", "heun"])
    assert f"argument --sampler: unknown sampler 'heun'; choose one of {choices}" in capsys.readouterr().err


def test_sample_defaults_steps_from_the_table():
    for name in ("sa_solver", "lcm"):
        default = sample(_eps_fn, _noise(), sampler=name, generator=torch.Generator().manual_seed(1))
        explicit = sample(_eps_fn, _noise(), sampler=name, steps=SAMPLER_TABLE[name].default_steps,
                          generator=torch.Generator().manual_seed(1))
        assert torch.equal(default, explicit)
