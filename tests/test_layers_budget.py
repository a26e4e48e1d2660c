"""The layer engine's budget: the sum over DiT calls of batch x image tokens stays within (1 + 0.5 N) x that of
one plain image of the same size, steps and CFG, counted on a tiny random model for N = 2, 4 and 8."""

from __future__ import annotations

import pytest

from pixart_core.layers import engine
from pixart_core.layers.budget import PhaseSchedule, TokenCounter, budget_limit, phase_schedule
from pixart_core.layers.layer_alpha import hint_alpha

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE, STEPS, CFG = 128, 6, 4.5
BOXES = [[0, 0, 80, 80], [48, 32, 128, 112], [16, 64, 96, 128], [64, 0, 128, 64], [24, 24, 72, 72],
         [80, 80, 128, 128], [0, 96, 48, 128], [40, 8, 120, 56]]


def layout(count: int) -> dict:
    return {"width": SIZE, "height": SIZE, "prompt": "a poster", "negative": "blurry",
            "layers": [{"name": f"part {i}", "prompt": f"a red thing number {i}", "box": BOXES[i]}
                       for i in range(count)]}


def test_phase_schedule_stays_within_half_an_image():
    full = phase_schedule("dpmpp_2m", 20, crop_tokens=256, canvas_tokens=256)
    assert full == PhaseSchedule(steps=20, denoise=10.5 / 20, calls=10)
    small = phase_schedule("dpmpp_2m", 20, crop_tokens=64, canvas_tokens=256)
    assert small.calls == 15  # capped at 0.75 of the schedule
    assert phase_schedule("dpmpp_2m", 1, crop_tokens=256, canvas_tokens=256) is None
    lcm = phase_schedule("lcm", 4, crop_tokens=256, canvas_tokens=256)
    assert lcm.calls == 2 and lcm.steps == 2
    for sampler in ("euler", "ddim", "sa_solver", "euler_ancestral"):
        for steps in (3, 7, 20):
            for crop in (16, 100, 256):
                schedule = phase_schedule(sampler, steps, crop_tokens=crop, canvas_tokens=256)
                if schedule is not None:
                    assert schedule.calls * crop <= 0.5 * steps * 256


@pytest.mark.parametrize("count", [2, 4, 8])
def test_budget_for_n_layers(sigma_pipe, monkeypatch, count):
    # the matte costs no DiT call: the hint serves as alpha so the counting runs fast and every phase runs
    monkeypatch.setattr(engine, "matte_in_box", lambda image, hint, box: (hint_alpha(hint), image.clone()))
    with TokenCounter(sigma_pipe.transformer) as plain:
        sigma_pipe("a poster", negative_prompt="blurry", height=SIZE, width=SIZE, num_inference_steps=STEPS,
             guidance_scale=CFG, use_resolution_binning=False, output_type="latent")
    phases = []
    with TokenCounter(sigma_pipe.transformer) as layered:
        sigma_pipe.generate_layers(layout(count), seed=0, num_inference_steps=STEPS, guidance_scale=CFG,
                             on_progress=lambda phase, step, total: phases.append(phase))
    ratio = layered.tokens / plain.tokens
    assert ratio <= budget_limit(count), (count, ratio)
    assert ratio > 1.0 and "background" in phases and any(p.startswith("amodal") for p in phases)
