"""The shapes world: the training script still trains, and the committed trained fixture behaves.

The figures (issue #8) are asserted on the committed fixture over held-out scenes: placement and background (text
to image), the attention of a shape's words over that shape, and a ControlNet that makes the picture follow a
layout's edges. Targets the fixture misses are strict xfails; the floors its README states are the regression
tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pixart_core.controlnet.load import load_controlnet
from pixart_core.pipeline import PixArtPipeline
from pixart_core.testing import shapes_world as world
from pixart_core.testing import shapes_world_eval as evaluate
from pixart_core.testing.ddpm_loss import DDPMSchedule, learned_sigma_loss
from pixart_core.testing.shapes_data import ShapeSpec, render
from pixart_core.testing.shapes_judge import colour_mask, judge_scene, mask_iou

ROOT = Path(__file__).resolve().parents[1]


def test_ddpm_tables_equal_diffusers_and_the_bound_is_zero_for_an_exact_model():
    diffusers = pytest.importorskip("diffusers")
    schedule = DDPMSchedule()
    reference = diffusers.DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    torch.testing.assert_close(schedule.alphas_cumprod.float(), reference.alphas_cumprod, rtol=1e-5, atol=1e-7)
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 400, 999])
    xt = schedule.add_noise(x0, noise, t)
    exact = torch.cat([noise, -torch.ones_like(noise)], dim=1)  # ε exact, variance = the posterior's β̃
    mse, vb = learned_sigma_loss(exact, x0, xt, noise, t, schedule, max_weight=10.0)
    assert float(mse) == 0.0 and abs(float(vb)) < 1e-6
    off = torch.cat([noise + 0.1, torch.zeros_like(noise)], dim=1)
    mse, vb = learned_sigma_loss(off, x0, xt, noise, t, schedule, max_weight=10.0)
    assert float(mse) > 0.01 and float(vb) > 0.0


def test_training_script_writes_a_loadable_pipeline_folder(tmp_path, t5_tokenizer_dir):
    out = tmp_path / "world"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "train_shapes_world.py"), "--out", str(out),
                             "--quick", "--tokenizer", str(t5_tokenizer_dir)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]  # no staging folder left behind
    world_pipe = PixArtPipeline.from_pretrained(out)
    assert world_pipe.transformer.config.family == "sigma" and world_pipe.transformer.config.learned_sigma
    assert world_pipe.vae_scale_factor != pytest.approx(0.13025)  # the measured 1/std of the trained VAE's latents
    controlnet = load_controlnet(out / "controlnet")
    image = world.generate(world_pipe, "a red circle on the left, on a grey background", steps=2,
                           controlnet=controlnet, control_image=torch.zeros(1, 3, 128, 128))
    assert image.shape == (1, 128, 128, 3)


def test_a_run_reusing_the_vae_trains_the_same_dit_as_a_full_run(t5_tokenizer_dir):
    import copy

    from pixart_core.t5.tokenizer import load_t5_tokenizer
    from pixart_core.testing import shapes_training as training

    tokenizer = load_t5_tokenizer(t5_tokenizer_dir)
    plan = training.TrainPlan(seed=3).quick()
    full = training.run(plan, tokenizer)
    reused = training.run(plan, tokenizer, vae=copy.deepcopy(full["vae"]).half().float())  # as a folder gives it
    for name, weight in full["dit"].state_dict().items():
        assert torch.equal(weight, reused["dit"].state_dict()[name]), name
    for name, weight in full["controlnet"].state_dict().items():
        assert torch.equal(weight, reused["controlnet"].state_dict()[name]), name


def test_training_script_refuses_a_missing_tokenizer_folder(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "train_shapes_world.py"), "--out",
                             str(tmp_path / "w"), "--quick", "--tokenizer", str(tmp_path / "nowhere")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--tokenizer" in result.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("item, named", [("train_t5=maybe", "true or false"), ("dit_steps=many", "takes a int"),
                                         ("no_such=1", "unknown field")])
def test_training_script_refuses_a_bad_set_value(tmp_path, item, named):
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "train_shapes_world.py"), "--out",
                             str(tmp_path / "w"), "--quick", "--set", item], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "--set" in result.stderr and named in result.stderr, result.stderr[-500:]
    assert not (tmp_path / "w").exists()


def test_fixture_is_a_pipeline_folder_the_loaders_read_as_it_is(world_pipe):
    assert world_pipe.transformer.config.family == "sigma"
    assert world_pipe.transformer.config.sample_size * 8 == world.SIZE
    net = world.load_world_controlnet()
    assert net.num_blocks >= 1 and net.hidden_size == world_pipe.transformer.config.hidden_size


def test_cli_generates_from_the_fixture_folder(tmp_path, world_dir):
    out = tmp_path / "shape.png"
    result = subprocess.run([sys.executable, "-m", "pixart_core", "generate", "--model", str(world.FIXTURE_DIR),
                             "--prompt", "a yellow square in the centre, on a black background", "--height", "128",
                             "--width", "128", "--no-binning", "--steps", "20", "--batch", "6", "--dtype", "fp32",
                             "--out", str(out), "--device", "cpu"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    from PIL import Image

    asked = render("black", [ShapeSpec("square", "yellow", "centre", 64.0, 64.0, 17.5)])
    paths = [out] + [tmp_path / f"shape_{index}.png" for index in range(1, 6)]
    verdicts = [judge_scene(np.asarray(Image.open(path).convert("RGB")), asked) for path in paths]
    assert all(v["background_ok"] for v in verdicts), verdicts
    # the fixture draws this prompt right in all 6 seeds; 5 is the floor (README of the fixture)
    assert sum(v["all_found"] for v in verdicts) >= 5, verdicts


# Issue #8's figures, and the floors the committed fixture holds (measured on it: README of the fixture).


@pytest.fixture(scope="module")
def t2i(world_pipe):
    return evaluate.text_to_image_figures(world_pipe, count=50)


@pytest.fixture(scope="module")
def attention(world_pipe):
    return evaluate.attention_figures(world_pipe, count=30)


@pytest.fixture(scope="module")
def control(world_pipe):
    return evaluate.controlnet_figures(world_pipe, world.load_world_controlnet(), count=30)


def test_text_to_image_holds_the_fixtures_figures(t2i):
    assert t2i["shapes"] >= 0.8, t2i  # measured 90%


def test_text_to_image_gets_the_background_right(t2i):
    assert t2i["backgrounds"] >= 0.9, t2i  # the target; measured 100%


def test_text_to_image_places_named_shapes(t2i):
    assert t2i["prompts"] >= 0.8, t2i  # the target; measured 82% (100 prompts: 88%)


def test_attention_of_a_shapes_words_overlaps_that_shape(attention):
    # the target; measured 0.515 (the metric gives 0.61 to a map that is the true shape's token cells)
    assert attention["shapes"] >= 30, attention
    assert attention["iou"] >= 0.5, attention


def test_controlnet_makes_the_picture_follow_the_layout_edges(control):
    assert control["iou"] >= 0.7, control  # the target; measured 0.768


def test_controlnet_changes_the_picture_toward_the_layout(world_pipe):
    """Without the edges the same prompts match the layouts' exact masks worse (the branch does the work);
    measured over 10 layouts on the fixture of 2026-12-07: IoU 0.71 with the edges against 0.56 without."""
    scenes = world.held_out_scenes(10)
    images = world.generate(world_pipe, [s.prompt for s in scenes], seed=0)
    plain = np.mean([mask_iou(colour_mask(img, spec.colour), truth >= 0.5)
                     for img, s in zip(images, scenes) for spec, truth in zip(s.shapes, s.masks)])
    controlled = evaluate.controlnet_figures(world_pipe, world.load_world_controlnet(), count=10)["iou"]
    assert controlled > plain + 0.1, (plain, controlled)


@pytest.fixture(scope="module")
def transparency(world_pipe):
    """Issue #9 item 9: Alfie-style generation on 30 held-out single shapes; alpha against the colour mask."""
    return evaluate.transparency_figures(world_pipe, count=30)


def test_transparent_generation_cuts_out_the_drawn_shape(transparency):
    # issue #9's targets; measured IoU 0.889, MAE 0.008
    assert transparency["iou"] >= 0.85 and transparency["mae"] <= 0.06, transparency
