"""Training-free transparency (`pixart_core.rgba.alfie`, after Alfie, arXiv 2408.14826): prompts, centre mask,
token columns, hint, border steering through `sample(step_hook=...)`, the pipeline method and the CLI flag."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from pixart_core.rgba import alfie
from pixart_core.rgba.alfie import (BorderSteering, TransparentPlan, background_prompt, centre_mask, stack_branches,
                                    subject_hint, subject_prompt, subject_token_positions)
from pixart_core.sampling import cfg_eps_fn, sample

HEIGHT, WIDTH = 192, 256  # non-square, unbinned
STEPS = 4


def test_prompts():
    assert background_prompt() == "a plain white background"
    assert subject_prompt("  A red fox ") == "A red fox on a plain white background"
    assert subject_prompt("a fox on a grey background") == "a fox on a grey background"  # already has one
    with pytest.raises(ValueError, match="prompt: empty"):
        subject_prompt("   ")


def test_centre_mask_any_aspect_ratio():
    mask = centre_mask(24, 32)  # [1, 1, h, w] a 3-row and 4-column border
    assert mask.shape == (1, 1, 24, 32) and mask.dtype == torch.float32
    assert mask[0, 0].sum() == (24 - 6) * (32 - 8)
    assert mask[0, 0, 3:21, 4:28].min() == 1 and mask[0, 0, :3].max() == 0 and mask[0, 0, :, 28:].max() == 0
    assert centre_mask(64, 64)[0, 0, 8:56, 8:56].min() == 1  # upstream's rows/cols 8..55 of 64
    assert centre_mask(5, 7, 0.0).min() == 1
    with pytest.raises(ValueError, match="border_fraction: 0.5 is out of range"):
        centre_mask(8, 8, 0.5)
    with pytest.raises(ValueError, match="positive integers"):
        centre_mask(0, 8)


def test_plan_checks_and_step_counts():
    plan = TransparentPlan(steer_steps_fraction=0.5, capture_from_fraction=1.0, blocks=[1, 0])
    assert plan.blocks == (1, 0) and plan.steered_steps(20) == 10 and plan.first_captured_step(20) == 19
    assert TransparentPlan().steered_steps(7) == 7 and TransparentPlan().first_captured_step(7) == 3
    for bad in ({"steer_steps_fraction": 1.5}, {"capture_from_fraction": float("nan")}, {"hint_gain": 0.0},
                {"border_fraction": -0.1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TransparentPlan(**bad)


def test_subject_tokens_are_the_user_words(t5_tokenizer_dir):
    from pixart_core.t5 import load_t5_tokenizer

    tokenizer = load_t5_tokenizer(t5_tokenizer_dir)
    prompt = "A Red Fox sitting, photo"
    full = tokenizer.encode(subject_prompt(prompt).lower())  # ids with </s>
    positions = subject_token_positions(tokenizer, prompt, max_length=300)
    own = tokenizer.encode(prompt.lower())[:-1]
    assert positions and max(positions) < len(own) and full[:len(own)] == own  # not the suffix, not </s>
    pieces = {w: tokenizer.encode(w)[:-1] for w in ("a", "red", "fox", "sitting", "sitting,")}
    assert pieces["sitting,"][:len(pieces["sitting"])] == pieces["sitting"]
    assert len(pieces["sitting,"]) > len(pieces["sitting"])  # the comma is a piece of its own
    # not "a", "photo", nor the comma: punctuation draws every image token's attention (a sink)
    assert [full[p] for p in positions] == pieces["red"] + pieces["fox"] + pieces["sitting"]
    assert positions[0] == len(pieces["a"])
    assert subject_token_positions(tokenizer, "the", 300) == list(range(len(tokenizer.encode("the")) - 1))
    assert max(subject_token_positions(tokenizer, "red fox " * 50, max_length=10)) < 9  # the pipeline keeps L - 1


def test_subject_hint_follows_the_attention():
    grid_h, grid_w, length = 6, 8, 12
    attention = torch.full((2, grid_h * grid_w, length), 1.0 / length)  # [B, N, L] uniform
    spot = torch.zeros(grid_h, grid_w)
    spot[2:4, 5:7] = 1.0
    attention[1, :, 3] += 0.5 * spot.flatten()  # image 1 attends to token 3 in a spot
    hint = subject_hint(attention, (grid_h, grid_w), [[3, 4]], (HEIGHT, WIDTH))
    assert hint.shape == (2, 1, HEIGHT, WIDTH) and hint.dtype == torch.float32
    assert 0.0 <= float(hint.min()) and float(hint.max()) <= 1.0
    peak = divmod(int(hint[1, 0].argmax()), WIDTH)
    assert 2 * 32 <= peak[0] < 4 * 32 and 5 * 32 <= peak[1] < 7 * 32  # the spot, upsampled
    assert float(hint[1, 0].amax()) == 1.0 and float((hint[1, 0] == 1.0).float().mean()) > 0.02  # gain 1.5 clips
    assert float(hint[0].abs().max()) == 0.0  # a flat map has no subject
    with pytest.raises(ValueError, match="grid_hw: 5x8 does not match the 48 image tokens"):
        subject_hint(attention, (5, 8), [[3]], (8, 8))
    with pytest.raises(ValueError, match="positions"):
        subject_hint(attention, (grid_h, grid_w), [[99]], (8, 8))


SAMPLERS = ("euler", "ddim", "dpmpp_2m", "euler_ancestral", "lcm", "sa_solver")


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_step_hook_sets_the_latent_the_next_step_starts_from(sampler):
    seen = []

    def eps_fn(x, t):
        seen.append(x.clone())
        return 0.1 * x + 0.01 * t.view(-1, 1, 1, 1) / 1000  # [B, C, H, W]

    noise = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(0))
    plain = sample(eps_fn, noise, sampler=sampler, steps=STEPS, generator=torch.Generator().manual_seed(1))
    seen.clear()
    nothing = sample(eps_fn, noise, sampler=sampler, steps=STEPS, generator=torch.Generator().manual_seed(1),
                     step_hook=lambda step, total, x: None)
    assert torch.equal(plain, nothing)  # a hook returning None changes nothing
    seen.clear()
    reported = []

    def hook(step, total, x):
        assert total == STEPS
        return torch.full_like(x, 0.25 * (step + 1))  # [B, C, H, W]

    out = sample(eps_fn, noise, sampler=sampler, steps=STEPS, generator=torch.Generator().manual_seed(1),
                 step_hook=hook, callback=lambda step, total, x, denoised: reported.append(x.clone()))
    for step in range(STEPS - 1):  # the model input of step i + 1 is the hooked output of step i
        assert torch.allclose(seen[step + 1], torch.full_like(noise, 0.25 * (step + 1)), atol=1e-6)
        assert torch.allclose(reported[step], torch.full_like(noise, 0.25 * (step + 1)), atol=1e-6)
    assert torch.allclose(out, torch.full_like(noise, 0.25 * STEPS), atol=1e-6)  # the last step's too
    with pytest.raises(ValueError, match=r"step_hook must return a latent shaped like x"):
        sample(eps_fn, noise, sampler=sampler, steps=STEPS, step_hook=lambda step, total, x: x[:1])


def test_border_steering_blends_background_border_and_subject_centre():
    plan = TransparentPlan(steer_steps_fraction=0.5)
    mask = centre_mask(16, 24)
    steering = BorderSteering(mask, plan)
    x = torch.cat([torch.zeros(2, 4, 16, 24), torch.ones(2, 4, 16, 24)])  # [backgrounds; subjects]
    out = steering(0, 4, x)
    assert out.shape == x.shape and torch.equal(out[:2], out[2:])
    assert torch.equal(out[2:], mask.expand(2, 4, 16, 24))  # border 0 (background), centre 1 (subject)
    assert steering(2, 4, x) is None  # past the steered half


@pytest.fixture(scope="module")
def pipe(tiny_suite):
    from pixart_core.pipeline import PixArtPipeline

    return PixArtPipeline.from_pretrained(tiny_suite / "pipelines" / "sigma-256")


def _branch_eps(pipe, prompt="a red fox", batch=1, cfg=4.5):
    states, masks = pipe.encode_prompt([background_prompt(), subject_prompt(prompt)])  # [2, L, C], [2, L]
    context, mask = stack_branches((states[:1], masks[:1]), (states[1:], masks[1:]), batch)  # [2B, L, C]
    negative, negative_mask = pipe.encode_prompt([""], max_length=context.shape[1])
    return cfg_eps_fn(pipe.transformer, context, mask, negative, negative_mask, cfg)


def test_steered_sample_border_follows_the_background_branch(pipe, monkeypatch):
    before, after = [], []

    def spying_sample(*args, step_hook, **kwargs):
        def spy(step, total, x):
            before.append(x.clone())
            out = step_hook(step, total, x)
            after.append(None if out is None else out.clone())
            return out

        return sample(*args, step_hook=spy, **kwargs)

    monkeypatch.setattr(alfie, "sample", spying_sample)
    batch = 2
    noise = torch.randn(batch, 4, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(0))
    noise = torch.cat([noise, noise])  # [2B, 4, h, w]
    plan = TransparentPlan(steer_steps_fraction=0.5, capture_from_fraction=0.5)
    with torch.inference_mode():
        result = alfie.steered_sample(pipe.transformer, _branch_eps(pipe, batch=batch), noise, plan=plan,
                                      sampler="euler", steps=STEPS)
    mask = centre_mask(HEIGHT // 8, WIDTH // 8).bool().expand(batch, 4, -1, -1)  # [B, 4, h, w]
    assert len(before) == STEPS
    for step in range(STEPS):
        background, subject = before[step][:batch], before[step][batch:]
        if step < 2:  # steered: the subject's border is the background branch's, its centre its own
            steered = after[step][batch:]
            assert torch.equal(steered[~mask], background[~mask]) and torch.equal(steered[mask], subject[mask])
            assert not torch.equal(subject[~mask], background[~mask])  # the branches did differ there
        else:
            assert after[step] is None
    assert result.latents.shape == (batch, 4, HEIGHT // 8, WIDTH // 8)
    assert result.cross_attention.shape[:2] == (batch, (HEIGHT // 16) * (WIDTH // 16))
    assert result.grid_hw == (HEIGHT // 16, WIDTH // 16)
    rows = result.cross_attention.sum(-1)  # [B, N] probabilities over the caption
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-4)


def test_capture_reads_only_the_last_steps_and_the_subject_rows(pipe, monkeypatch):
    calls = []
    real = type(pipe.transformer).capture_attention

    def counting(model, blocks=None):
        capture = real(model, blocks)
        calls.append(capture)
        return capture

    monkeypatch.setattr(type(pipe.transformer), "capture_attention", counting)
    noise = torch.randn(1, 4, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(0)).repeat(2, 1, 1, 1)
    with torch.inference_mode():
        result = alfie.steered_sample(pipe.transformer, _branch_eps(pipe), noise, sampler="dpmpp_2m", steps=STEPS,
                                      plan=TransparentPlan(capture_from_fraction=0.75))
    capture = calls[-1]
    assert capture.calls == 1  # step 3 of 4 only
    full = capture.cross_attention()  # [4, N, L]: uncond bg, uncond subject, cond bg, cond subject
    assert full.shape[0] == 4 and torch.equal(result.cross_attention, full[3:])


def test_generate_transparent_shapes_determinism_and_hint_from_capture(pipe):
    pytest.importorskip("pymatting")
    kwargs = dict(height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, use_resolution_binning=False)
    first = pipe.generate_transparent("a red fox", seed=3, **kwargs)
    assert first.rgba.shape == (1, 4, HEIGHT, WIDTH) and first.rgba.dtype == torch.float32
    assert first.image.shape == first.foreground.shape == (1, 3, HEIGHT, WIDTH)
    assert first.alpha.shape == first.hint.shape == (1, 1, HEIGHT, WIDTH)
    assert torch.equal(first.rgba[:, 3:], first.alpha) and torch.equal(first.rgba[:, :3], first.foreground)
    for tensor in (first.rgba, first.image, first.hint):
        assert tensor.device.type == "cpu" and 0.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0
    assert float(first.hint.max()) == 1.0
    again = pipe.generate_transparent("a red fox", seed=3, **kwargs)
    assert torch.equal(first.rgba, again.rgba) and torch.equal(first.hint, again.hint)
    other = pipe.generate_transparent("a red fox", seed=4, **kwargs)
    assert not torch.equal(first.image, other.image)
    # capturing other blocks changes the hint, never the image (the capture does not touch the forward)
    blocks = pipe.generate_transparent("a red fox", seed=3, plan=TransparentPlan(blocks=(0,)), **kwargs)
    assert torch.equal(blocks.image, first.image) and not torch.equal(blocks.hint, first.hint)
    binned = pipe.generate_transparent("a red fox", seed=3, height=200, width=300, num_inference_steps=2,
                                       num_images_per_prompt=2)
    assert binned.rgba.shape == (2, 4, 200, 300)


def test_generate_transparent_rejects_bad_arguments(pipe):
    with pytest.raises(ValueError, match="prompt: expected one string"):
        pipe.generate_transparent(["a", "b"], height=64, width=64)
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        pipe.generate_transparent("a fox", num_images_per_prompt=0)
    with pytest.raises(ValueError, match="multiples of 16"):
        pipe.generate_transparent("a fox", height=100, width=64, use_resolution_binning=False)


def test_cli_writes_an_rgba_png_and_refuses_jpeg(tiny_suite, tmp_path, caplog):
    from pixart_core.__main__ import main

    base = ["generate", "--model", str(tiny_suite / "pipelines" / "sigma-256"), "--prompt", "a fox",
            "--height", str(HEIGHT), "--width", str(WIDTH), "--no-binning", "--steps", "2", "--transparent",
            "--dtype", "fp32"]
    assert main([*base, "--out", str(tmp_path / "x.jpg")]) == 2
    assert "--transparent writes an RGBA PNG" in caplog.text and "end the name in .png" in caplog.text
    assert not list(tmp_path.iterdir())
    assert main([*base, "--out", str(tmp_path / "x.png"), "--image", str(tmp_path / "in.png")]) == 2
    assert "does not combine with --image" in caplog.text
    pytest.importorskip("pymatting")
    out = tmp_path / "sticker.png"
    assert main([*base, "--out", str(out), "--batch", "2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sticker.png", "sticker_1.png"]  # no temporary files
    with Image.open(out) as image:
        assert image.mode == "RGBA" and image.size == (WIDTH, HEIGHT)
        assert '"prompt": "a fox"' in image.text["pixart_atelier"]
        pixels = np.asarray(image)  # [H, W, 4]
    expected = pipe_result_first_pixels(tiny_suite)
    assert np.array_equal(pixels, expected)


def pipe_result_first_pixels(tiny_suite) -> np.ndarray:
    """What the library gives for the CLI's settings (default seed 0), as the PNG stores it."""
    from pixart_core.pipeline import PixArtPipeline
    from pixart_core.rgba.rgba_io import to_uint8

    pipe = PixArtPipeline.from_pretrained(tiny_suite / "pipelines" / "sigma-256")
    result = pipe.generate_transparent("a fox", height=HEIGHT, width=WIDTH, num_inference_steps=2, seed=0,
                                       num_images_per_prompt=2, use_resolution_binning=False)
    return to_uint8(result.rgba[0].permute(1, 2, 0).numpy())


def test_math_of_the_default_plan_matches_upstream():
    plan = TransparentPlan()
    assert plan.steered_steps(30) == 30 and math.isclose(plan.border_fraction, 1 / 8) and plan.hint_gain == 1.5
    assert plan.background == alfie.PLAIN_BACKGROUND == (1.0, 1.0, 1.0)
