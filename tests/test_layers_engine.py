"""Layered generation on a tiny random pipeline: the stack's shape, names, boxes and exact composite, 8 layers,
regeneration of one layer (the others pixel-identical, from a PSD-loaded stack too), refusals before model work,
progress per phase and stopping."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pixart_core.layers import Layer, LayerBackend, LayerStack, generate_layers, regenerate_layer
from pixart_core.sampling import SamplingInterrupted

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 4
LAYOUT = {"width": 128, "height": 96, "prompt": "a cat and a dog in a park", "background": {"prompt": "a park"},
          "layers": [{"name": "dog", "prompt": "a brown dog", "box": [8, 16, 80, 90]},
                     {"name": "cat", "prompt": "a ginger cat", "box": [48, 8, 120, 70]}]}


def recording_backend(sigma_pipe, **kwargs) -> tuple[LayerBackend, list]:
    """The pipeline's backend with every decoded picture recorded (the first is the composite pass')."""
    backend = sigma_pipe.layer_backend(**kwargs)
    decoded = []
    inner = backend.decode_latent

    def decode(latent):
        pixels = inner(latent)
        decoded.append(pixels)
        return pixels

    backend.decode_latent = decode
    return backend, decoded


def as_uint8(pixels: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] about -1..1 -> uint8 [H, W, 3] as the engine quantises."""
    return np.rint(((pixels[0].float() / 2 + 0.5).clamp(0, 1) * 255).permute(1, 2, 0).numpy()).astype(np.uint8)


def box_region(box, height: int, width: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    inside = np.zeros((height, width), bool)
    inside[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = True
    return inside


def check_stack(stack: LayerStack, layout: dict, composite: np.ndarray) -> None:
    assert [layer.name for layer in stack.layers] == ["background"] + [spec["name"] for spec in layout["layers"]]
    assert (stack.width, stack.height) == (layout["width"], layout["height"])
    assert np.asarray(stack.layers[0].image)[..., 3].min() == 255  # opaque background
    for layer, spec in zip(stack.layers[1:], layout["layers"]):
        assert layer.image.mode == "RGBA" and layer.image.size == (layout["width"], layout["height"])
        assert tuple(layer.box) == tuple(spec["box"]) and layer.prompt == spec["prompt"]
        alpha = np.asarray(layer.image)[..., 3]
        assert alpha[~box_region(layer.box, stack.height, stack.width)].max() == 0, layer.name
    difference = np.abs(np.asarray(stack.composite, np.float64) - composite.astype(np.float64))
    assert difference.mean() <= 1.0, difference.mean()


def test_stack_matches_layout_and_recomposites_to_the_picture(sigma_pipe):
    phases = []
    backend, decoded = recording_backend(sigma_pipe, on_progress=lambda phase, step, total: phases.append(phase))
    stack = generate_layers(backend, LAYOUT, seed=1, steps=STEPS)
    check_stack(stack, LAYOUT, as_uint8(decoded[0]))
    assert stack.layout is not None and stack.layout.layers[0].name == "dog"
    assert any(np.asarray(layer.image)[..., 3].max() > 0 for layer in stack.layers[1:])
    assert phases[0] == "composite" and "background" in phases  # a progress report per phase and step
    assert phases.count("composite") == STEPS
    again = sigma_pipe.generate_layers(LAYOUT, seed=1, num_inference_steps=STEPS)
    for first, second in zip(stack.layers, again.layers):  # seeded: the same stack up to float rounding
        assert np.abs(np.asarray(first.image, np.int16) - np.asarray(second.image, np.int16)).max() <= 1


def test_eight_layers(sigma_pipe):
    boxes = [[0, 0, 64, 64], [32, 0, 128, 48], [16, 40, 80, 112], [64, 64, 128, 128], [8, 88, 56, 128],
             [40, 24, 96, 80], [96, 8, 128, 40], [24, 56, 48, 80]]
    layout = {"width": 128, "height": 128, "prompt": "a sticker sheet of animals", "negative": "blurry",
              "layers": [{"name": f"animal {i}", "prompt": f"a cute animal number {i}", "box": box}
                         for i, box in enumerate(boxes)]}
    backend, decoded = recording_backend(sigma_pipe)
    stack = generate_layers(backend, layout, seed=0, steps=STEPS)
    assert len(stack) == 9
    check_stack(stack, layout, as_uint8(decoded[0]))


@pytest.fixture(scope="module")
def stack(sigma_pipe):
    return sigma_pipe.generate_layers(LAYOUT, seed=2, num_inference_steps=STEPS)


def assert_only_changed(before: LayerStack, after: LayerStack, index: int) -> None:
    assert len(after) == len(before)
    for position, (old, new) in enumerate(zip(before.layers, after.layers)):
        if position != index:
            assert np.array_equal(np.asarray(old.image), np.asarray(new.image)), old.name
    layer = after.layers[index]
    alpha = np.asarray(layer.image)[..., 3]
    assert alpha[~box_region(layer.box, after.height, after.width)].max(initial=0) == 0


def test_regenerate_keeps_every_other_layer(sigma_pipe, stack):
    new = sigma_pipe.regenerate_layer(stack, 1, prompt="a black dog", seed=5, num_inference_steps=STEPS)
    assert_only_changed(stack, new, 1)
    assert new.layers[1].prompt == "a black dog" and new.layout.layers[0].prompt == "a black dog"
    assert new.layout.prompt == LAYOUT["prompt"]  # "a brown dog" is not in it: nothing to retell
    assert new.layers[2] is stack.layers[2]
    assert not np.array_equal(np.asarray(new.layers[1].image), np.asarray(stack.layers[1].image))
    expected = np.asarray(LayerStack(new.layers, new.width, new.height).composite)
    assert np.array_equal(np.asarray(new.composite), expected)  # the composite follows the new layer
    by_name = sigma_pipe.regenerate_layer(stack, "cat", seed=5, num_inference_steps=STEPS)  # the layer's own prompt
    assert_only_changed(stack, by_name, 2)
    background = sigma_pipe.regenerate_layer(stack, 0, prompt="a beach", seed=5, num_inference_steps=STEPS)
    assert_only_changed(stack, background, 0)
    assert np.asarray(background.layers[0].image)[..., 3].min() == 255


def test_regenerate_a_stack_loaded_from_psd(sigma_pipe, stack, tmp_path):
    loaded = LayerStack.load(stack.save(tmp_path / "poster.psd"))
    new = regenerate_layer(sigma_pipe.layer_backend(), loaded, "dog", prompt="a spotted dog", seed=3, steps=STEPS)
    assert_only_changed(loaded, new, 1)
    bare = LayerStack([Layer(layer.name, layer.image, layer.box) for layer in loaded.layers], loaded.width,
                      loaded.height)  # no layout, no prompts: as a PSD made elsewhere
    new = regenerate_layer(sigma_pipe.layer_backend(), bare, 2, prompt="a grey cat", seed=3, steps=STEPS)
    assert_only_changed(bare, new, 2)
    with pytest.raises(ValueError, match="prompt: layer 'cat' has no prompt"):
        regenerate_layer(sigma_pipe.layer_backend(), bare, 2, steps=STEPS)
    with pytest.raises(ValueError, match="index: no layer named 'bird'"):
        regenerate_layer(sigma_pipe.layer_backend(), bare, "bird", prompt="a bird")
    with pytest.raises(ValueError, match="index: 7 is not a layer index"):
        regenerate_layer(sigma_pipe.layer_backend(), bare, 7, prompt="a bird")


def refusing_backend() -> LayerBackend:
    """A backend whose every model function fails the test: refusals must come before any model work."""

    def forbidden(*args, **kwargs):
        raise AssertionError("model work started before validation")

    model = torch.nn.Linear(1, 1)
    model.config = SimpleNamespace(patch_size=2)
    return LayerBackend(model=model, encode_text=forbidden, tokenizer=None, encode_image=forbidden,
                        decode_latent=forbidden, scaling_factor=1.0, max_length=300)


@pytest.mark.parametrize("change, message", [
    ({"width": 120}, "layout.width: 120 is not a multiple of 16"),
    ({"height": 100}, "layout.height: 100 is not a multiple of 16"),
    ({"layers": [{"name": "a", "box": [0, 0, 8, 8]}]}, r"layout.layers\[0\] \('a'\).prompt: missing"),
    ({"layers": [{"name": "a", "prompt": "x", "box": [0, 0, 8, 800]}]}, "lies outside"),
    ({"layers": [{"name": "a", "prompt": "x", "box": [0, 0, 8, 8]}] * 2}, "duplicate"),
    ({"layers": "nope"}, "layout.layers: must be a list"),
])
def test_bad_layouts_are_refused_before_model_work(change, message):
    with pytest.raises(ValueError, match=message):
        generate_layers(refusing_backend(), {**LAYOUT, **change})


def test_bad_settings_and_invalid_json_are_refused():
    with pytest.raises(ValueError, match="layout: invalid JSON"):
        generate_layers(refusing_backend(), "{not json")
    with pytest.raises(ValueError, match="steps: must be a whole number"):
        generate_layers(refusing_backend(), LAYOUT, steps=0)
    with pytest.raises(ValueError, match="unknown sampler 'fast'"):
        generate_layers(refusing_backend(), LAYOUT, sampler="fast")
    with pytest.raises(ValueError, match="guidance: must be a finite number"):
        generate_layers(refusing_backend(), LAYOUT, guidance=float("nan"))
    image = Image.new("RGBA", (120, 96))
    odd = LayerStack([Layer("background", image, (0, 0, 120, 96)), Layer("a", image, (0, 0, 8, 8), "x")], 120, 96)
    with pytest.raises(ValueError, match="stack.width: 120"):
        regenerate_layer(refusing_backend(), odd, 1)


def test_should_stop_interrupts_between_steps(sigma_pipe):
    calls = []
    backend = sigma_pipe.layer_backend(should_stop=lambda: calls.append(1) or len(calls) >= 2)
    with pytest.raises(SamplingInterrupted):
        generate_layers(backend, LAYOUT, seed=0, steps=STEPS)


def test_a_layers_hint_reads_its_content_words_not_their_punctuation(t5_tokenizer_dir):
    """Commas draw every image token's attention alike; a layer's hint must not average them in."""
    from pixart_core.layers.layer_alpha import content_positions
    from pixart_core.t5 import load_t5_tokenizer

    tokenizer = load_t5_tokenizer(t5_tokenizer_dir)
    prompt = "a ginger cat, sitting."
    ids = tokenizer.encode(prompt)[:-1]
    words = [tokenizer.encode(word)[:-1] for word in ("ginger", "cat", "sitting")]
    assert [ids[p] for p in content_positions(tokenizer, prompt)] == words[0] + words[1] + words[2]
    assert content_positions(tokenizer, "the") == list(range(len(tokenizer.encode("the")) - 1))


def test_a_regenerated_layers_new_prompt_is_retold_in_the_scene_prompt(sigma_pipe):
    """The global prompt named the layer's old content ("a brown dog"): regeneration and the new stack's layout
    read the new one in its place, so the scene no longer asks for the old content inside the box."""
    layout = {**LAYOUT, "prompt": "a ginger cat and a brown dog in a park"}
    backend = sigma_pipe.layer_backend()
    told = []
    encode = backend.encode_text
    backend.encode_text = lambda texts: told.append(list(texts)) or encode(texts)
    first = generate_layers(backend, layout, seed=1, steps=2)
    new = regenerate_layer(backend, first, "dog", prompt="a black dog", seed=2, steps=2)
    assert told[-1][:2] == ["a ginger cat and a black dog in a park", "a black dog"]
    assert new.layout.prompt == "a ginger cat and a black dog in a park"
    assert new.layout.layers[0].prompt == "a black dog"
