"""The layer nodes (#11) called directly: Generate Layers / Regenerate Layer on the tiny Σ through the backend built
from the node inputs, Layer Select, Save Layers (PSD / ORA / PNG folder with the workflow embedded, nothing left
on failure), Load Layers, the thumbnails for the region editor, and the layer workflows' builder."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LAYER_NODES = ["AtelierLayout", "AtelierGenerateLayers", "AtelierRegenerateLayer", "AtelierLayerSelect",
               "AtelierSaveLayers", "AtelierLoadLayers"]
LAYOUT = {"width": 64, "height": 48, "prompt": "a poster of a park", "background": {"prompt": "green grass"},
          "layers": [{"name": "tree", "prompt": "a tall tree", "box": [0, 0, 32, 48]},
                     {"name": "ball", "prompt": "a red ball", "box": [24, 16, 56, 48]}]}
WORKFLOW = {"workflow": {"nodes": [{"id": 1, "type": "AtelierLayout"}], "links": []}}
PROMPT = {"1": {"class_type": "AtelierLayout", "inputs": {}}}


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """Output, input and temp folders of the node layer outside ComfyUI."""
    paths = {name: tmp_path / name for name in ("output", "input", "temp")}
    for name, path in paths.items():
        path.mkdir()
        monkeypatch.setenv(f"PIXART_ATELIER_{name.upper()}", str(path))
    return paths


def _stack():
    """A hand-made 64x48 stack: opaque background, a half-transparent square, a disc; with its layout."""
    from pixart_atelier.pixart_core.layers import Layer, LayerStack, parse_layout

    y, x = np.mgrid[0:48, 0:64]
    background = np.stack([x * 4, y * 5, 255 - x * 4, np.full_like(x, 255)], -1).astype(np.uint8)  # [48, 64, 4]
    square = np.zeros((48, 64, 4), np.uint8)
    square[4:40, 2:30] = (250, 200, 10, 128)
    disc = np.zeros((48, 64, 4), np.uint8)
    disc[np.hypot(y - 32, x - 40) < 12] = (200, 20, 20, 255)
    layout = parse_layout(LAYOUT)
    layers = [Layer("background", Image.fromarray(background, "RGBA"), (0, 0, 64, 48), "green grass"),
              Layer("tree", Image.fromarray(square, "RGBA"), (0, 0, 32, 48), "a tall tree"),
              Layer("ball", Image.fromarray(disc, "RGBA"), (24, 16, 56, 48), "a red ball")]
    return LayerStack(layers, 64, 48, layout=layout)


def test_metadata_is_complete(pack):
    for node_id in LAYER_NODES:
        cls = pack.NODE_CLASS_MAPPINGS[node_id]
        assert pack.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("PixArt ")
        assert cls.CATEGORY == "PixArt Atelier/layers" and cls.DESCRIPTION and hasattr(cls, cls.FUNCTION)
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
        for section, inputs in cls.INPUT_TYPES().items():
            if section == "hidden":
                continue
            for name, (kind, *opts) in inputs.items():
                assert opts and opts[0].get("tooltip"), f"{node_id}.{name} has no tooltip"
    generate = pack.NODE_CLASS_MAPPINGS["AtelierGenerateLayers"]
    assert generate.RETURN_TYPES == ("PIXART_LAYERS", "IMAGE", "IMAGE", "MASK")
    assert list(generate.INPUT_TYPES()["required"]) == ["model", "t5", "vae", "layout", "seed", "steps", "cfg",
                                                        "sampler_name"]
    assert pack.NODE_CLASS_MAPPINGS["AtelierSaveLayers"].OUTPUT_NODE


def test_layer_select_by_name_and_index(pack):
    select = pack.NODE_CLASS_MAPPINGS["AtelierLayerSelect"]()
    stack = _stack()
    image, mask = select.select(stack, "ball")
    assert image.shape == (1, 48, 64, 3) and mask.shape == (1, 48, 64)
    rgba = np.asarray(stack.layers[2].image, np.float32) / 255  # [48, 64, 4]
    assert torch.allclose(image[0], torch.from_numpy(rgba[..., :3]))
    assert torch.allclose(mask[0], torch.from_numpy(1 - rgba[..., 3]))
    for text in ("2", " 2 ", "-1"):
        assert torch.equal(select.select(stack, text)[1], mask)
    assert float(select.select(stack, "0")[1].max()) == 0.0  # the background is opaque
    with pytest.raises(ValueError, match=r"^layer: no layer named 'cat'; give one of 'background', 'tree', 'ball'"):
        select.select(stack, "cat")
    with pytest.raises(ValueError, match=r"^layer: index 3 is outside the stack of 3 layers"):
        select.select(stack, "3")
    with pytest.raises(ValueError, match=r"^stack: expected a layer stack"):
        select.select("not a stack", "1")


def test_save_layers_writes_each_format_with_the_workflow(pack, folders):
    from pixart_atelier.nodes.layer_files import read_embedded_workflow
    from pixart_atelier.pixart_core.layers import LayerStack

    save, stack = pack.NODE_CLASS_MAPPINGS["AtelierSaveLayers"](), _stack()
    names = []
    for fmt, suffix in (("psd", ".psd"), ("ora", ".ora"), ("png folder", ""), ("psd", ".psd")):
        out = save.save(stack, fmt, "posters/park", prompt=PROMPT, extra_pnginfo=WORKFLOW)["ui"]
        (saved,) = out["layer_files"]
        path = folders["output"] / saved["subfolder"] / saved["filename"]
        assert saved["subfolder"] == "posters" and path.suffix == suffix and path.exists()
        names.append(saved["filename"])
        back = LayerStack.load(path)
        assert [layer.name for layer in back.layers] == ["background", "tree", "ball"]
        assert [layer.prompt for layer in back.layers] == ["green grass", "a tall tree", "a red ball"]
        for ours, theirs in zip(stack.layers, back.layers):
            assert np.array_equal(np.asarray(ours.image), np.asarray(theirs.image))
        assert back.layout == stack.layout
        assert read_embedded_workflow(path) == {"prompt": PROMPT, "workflow": WORKFLOW["workflow"]}
        (preview,) = out["images"]
        assert (folders[preview["type"]] / preview["subfolder"] / preview["filename"]).is_file()
    assert names == ["park_00001_.psd", "park_00002_.ora", "park_00003_", "park_00004_.psd"]
    with Image.open(folders["output"] / "posters" / "park_00003_" / "composite.png") as composite:
        assert json.loads(composite.text["workflow"]) == WORKFLOW["workflow"]  # drop it on ComfyUI
    assert sorted(os.listdir(folders["output"] / "posters")) == sorted(names)  # no temporary left


@pytest.mark.parametrize("fmt", ["psd", "ora", "png folder"])
def test_save_layers_leaves_nothing_on_failure(pack, folders, monkeypatch, fmt):
    from pixart_atelier.nodes import layer_files

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(layer_files, {"psd": "_embed_in_psd", "ora": "_embed_in_ora",
                                      "png folder": "_embed_in_pngs"}[fmt], broken)
    save = pack.NODE_CLASS_MAPPINGS["AtelierSaveLayers"]()
    with pytest.raises(OSError, match="disk full"):
        save.save(_stack(), fmt, "park", prompt=PROMPT, extra_pnginfo=WORKFLOW)
    assert os.listdir(folders["output"]) == []
    with pytest.raises(ValueError, match=r"^filename_prefix '../x' points outside the output folder"):
        save.save(_stack(), fmt, "../x")
    with pytest.raises(ValueError, match=r"^stack: expected a layer stack"):
        save.save(None, fmt, "park")
    assert os.listdir(folders["output"]) == [] and not list(folders["output"].parent.glob("x*"))


def test_load_layers_lists_loads_and_validates(pack, folders):
    from pixart_atelier.pixart_core.layers import Layer

    load_cls = pack.NODE_CLASS_MAPPINGS["AtelierLoadLayers"]
    stack = _stack()
    stack.save(folders["input"] / "poster.psd")
    (folders["input"] / "sub").mkdir()
    stack.save(folders["input"] / "sub" / "sheet.ora")
    stack.save(folders["input"] / "pngs")
    (folders["input"] / "photo.png").write_bytes(b"")  # not a layer file
    assert load_cls.INPUT_TYPES()["required"]["file"][0] == ["pngs", "poster.psd", "sub/sheet.ora"]
    for name in ("pngs", "poster.psd", "sub/sheet.ora"):
        assert load_cls.VALIDATE_INPUTS(name) is True
        loaded, composite, layers, masks = load_cls().load(name)
        assert [layer.name for layer in loaded.layers] == ["background", "tree", "ball"]
        assert composite.shape == (1, 48, 64, 3) and layers.shape == (3, 48, 64, 3) and masks.shape == (3, 48, 64)
        expected = np.asarray(stack.composite, np.float32) / 255
        assert torch.allclose(composite[0], torch.from_numpy(expected))
        assert torch.allclose(masks[2], 1 - torch.from_numpy(np.asarray(stack.layers[2].image)[..., 3] / 255.0).float())
    assert "not in the input folder" in load_cls.VALIDATE_INPUTS("missing.psd")
    assert "inside the input folder" in load_cls.VALIDATE_INPUTS("../outside.psd")
    before = load_cls.IS_CHANGED("poster.psd")
    stack.replace(1, Layer("tree", stack.layers[2].image, (0, 0, 32, 48))).save(folders["input"] / "poster.psd")
    assert load_cls.IS_CHANGED("poster.psd") != before
    (folders["input"] / "broken.psd").write_bytes(b"8BPS but not really")
    with pytest.raises(ValueError, match=r"^file: 'broken.psd' could not be loaded"):
        load_cls().load("broken.psd")


def test_layer_thumbs_for_the_region_editor(pack, folders):
    from pixart_atelier.nodes.layer_files import save_layer_thumbs

    thumbs = save_layer_thumbs(_stack(), size=16)
    assert [(t["name"], t["index"], t["type"], t["subfolder"]) for t in thumbs] == [
        ("background", 0, "temp", ""), ("tree", 1, "temp", ""), ("ball", 2, "temp", "")]
    assert thumbs[2]["box"] == [24.0, 16.0, 56.0, 48.0] and thumbs[2]["canvas"] == [64, 48]
    with Image.open(folders["temp"] / thumbs[2]["filename"]) as image:
        assert image.mode == "RGBA" and image.size == (16, 16)  # the 32x32 box shrunk to fit 16
    with Image.open(folders["temp"] / thumbs[0]["filename"]) as image:
        assert image.size == (16, 12)  # the whole 64x48 canvas


class _Bar:
    def __init__(self, log, total):
        self.log, self.total = log, total

    def update(self, step, image=None):
        self.log.append((self.total, step, image))


def test_step_reporter_sends_one_update_per_step_with_its_preview(pack, monkeypatch):
    from pixart_atelier.nodes import host, layer_backend

    events = []
    monkeypatch.setattr(host, "progress", lambda total: _Bar(events, total))
    monkeypatch.setattr(host, "preview_callback", lambda space: lambda step, total, x, denoised: f"img{step}")
    reporter = layer_backend.StepReporter("sdxl")
    latent = torch.zeros(1, 4, 2, 2)
    for step in (1, 2):
        reporter.on_progress("composite", step, 2)
        reporter.on_preview("composite", step, 2, latent)
    reporter.on_preview("background", 1, 3, latent)  # a preview before its progress
    reporter.on_progress("background", 1, 3)
    reporter.on_progress("background", 2, 3)  # no preview for this step: sent by close
    reporter.close()
    assert events == [(2, 1, "img1"), (2, 2, "img2"), (3, 1, "img1"), (3, 2, None)]
    assert reporter.phases == ["composite", "background"]
    monkeypatch.setattr(host, "preview_callback", lambda space: None)
    events.clear()
    plain = layer_backend.StepReporter("sdxl")
    plain.on_progress("composite", 1, 2)
    plain.on_preview("composite", 1, 2, latent)
    assert events == [(2, 1, None)]


@pytest.fixture(scope="module")
def models(nodes, sigma):
    """(model, t5, vae): the tiny Σ-1024, its T5 and the tiny SDXL-space VAE, from the loader nodes."""
    model, t5, _, _ = sigma
    return model, t5, nodes["AtelierVAELoader"]().load("sdxl_vae.safetensors")[0]


def test_backend_follows_the_nodes_paths(pack, models):
    from pixart_atelier.nodes.layer_backend import build_backend
    from pixart_atelier.nodes.text import encode

    model, t5, vae = models
    backend = build_backend(model, t5, vae)
    hidden, mask = backend.encode_text(["a red ball", "grass"])  # [2, L, C], [2, L]
    reference = encode(t5, ["a red ball", "grass"], model.max_length)
    assert hidden.shape == reference.hidden.shape and hidden.dtype == backend.dtype
    torch.testing.assert_close(hidden.float(), reference.hidden.to(backend.dtype).float())
    assert torch.equal(mask.cpu(), reference.mask)
    pixels = torch.rand(1, 3, 32, 48) * 2 - 1  # [1, 3, H, W] in -1..1
    latent = backend.encode_image(pixels)  # [1, 4, 4, 6]
    torch.testing.assert_close(latent, vae.encode(((pixels + 1) / 2).movedim(1, -1)))
    decoded = backend.decode_latent(latent)  # [1, 3, 32, 48]
    assert decoded.shape == (1, 3, 32, 48) and -1 <= float(decoded.min()) and float(decoded.max()) <= 1
    torch.testing.assert_close(decoded, vae.decode(latent).movedim(-1, 1) * 2 - 1)
    assert backend.scaling_factor == model.config.vae_scale_factor and backend.max_length == model.max_length


@pytest.fixture(scope="module")
def generated(pack, models):
    from pixart_atelier.pixart_core.layers import parse_layout

    model, t5, vae = models
    return pack.NODE_CLASS_MAPPINGS["AtelierGenerateLayers"]().generate(
        model, t5, vae, parse_layout(LAYOUT), 3, 2, 4.5, "dpmpp_2m")


def test_generate_layers_outputs_core_types_and_thumbs(pack, models, generated):
    from pixart_atelier.nodes.layer_nodes import stack_outputs

    stack, composite, layers, masks = generated["result"]
    assert [layer.name for layer in stack.layers] == ["background", "tree", "ball"]
    assert composite.shape == (1, 48, 64, 3) and layers.shape == (3, 48, 64, 3) and masks.shape == (3, 48, 64)
    assert float(masks[0].max()) == 0.0 and 0.0 <= float(masks.min()) and float(masks.max()) <= 1.0
    assert [t["name"] for t in generated["ui"]["layer_thumbs"]] == ["background", "tree", "ball"]
    model, t5, vae = models
    again = pack.NODE_CLASS_MAPPINGS["AtelierGenerateLayers"]().generate(model, t5, vae, stack.layout, 3, 2, 4.5,
                                                                          "dpmpp_2m")["result"]
    for ours, theirs in zip(stack_outputs(stack)[1:], again[1:]):
        assert torch.equal(ours, theirs)  # seeded


def test_generate_layers_refuses_a_bad_layout_before_sampling(pack, models, monkeypatch):
    from pixart_atelier.nodes import layer_nodes

    monkeypatch.setattr(layer_nodes, "build_backend", lambda *a, **k: pytest.fail("the model was touched"))
    bad = dict(LAYOUT, layers=[{"name": "tree", "prompt": "a tree", "box": [0, 0, 80, 48]}])
    with pytest.raises(ValueError, match=r"^layout.layers\[0\] \('tree'\).box: .* lies outside the 64x48 canvas"):
        pack.NODE_CLASS_MAPPINGS["AtelierGenerateLayers"]().generate(*models, json.dumps(bad), 3, 2, 4.5, "dpmpp_2m")


def test_regenerate_layer_keeps_the_other_layers(pack, models, generated):
    stack = generated["result"][0]
    regenerate = pack.NODE_CLASS_MAPPINGS["AtelierRegenerateLayer"]()
    out = regenerate.regenerate(*models, stack, "ball", "a blue ball", 9, 2, 4.5, "dpmpp_2m")
    new, _, layers, masks = out["result"]
    assert new.layers[2].prompt == "a blue ball"
    assert new.layers[0] is stack.layers[0] and new.layers[1] is stack.layers[1]
    assert torch.equal(layers[:2], generated["result"][2][:2]) and torch.equal(masks[:2], generated["result"][3][:2])
    assert [t["name"] for t in out["ui"]["layer_thumbs"]] == ["background", "tree", "ball"]
    same = regenerate.regenerate(*models, stack, "2", "", 9, 2, 4.5, "dpmpp_2m")["result"][0]  # keeps "a red ball"
    assert same.layers[2].prompt == "a red ball"
    with pytest.raises(ValueError, match=r"^layer: no layer named 'cat'"):
        regenerate.regenerate(*models, stack, "cat", "", 9, 2, 4.5, "dpmpp_2m")


def test_cancel_stops_layered_generation(pack, models, monkeypatch, folders):
    from pixart_atelier.nodes import host
    from pixart_atelier.pixart_core.layers import parse_layout
    from pixart_atelier.pixart_core.sampling import SamplingInterrupted

    calls = []
    monkeypatch.setattr(host, "should_stop", lambda: calls.append(1) or len(calls) > 1)
    with pytest.raises(SamplingInterrupted):
        pack.NODE_CLASS_MAPPINGS["AtelierGenerateLayers"]().generate(*models, parse_layout(LAYOUT), 3, 4, 4.5,
                                                                     "dpmpp_2m")
    assert os.listdir(folders["temp"]) == []  # no thumbnails of a cancelled run


def test_layer_workflows_match_their_builder(pack):
    spec = importlib.util.spec_from_file_location("build_layer_workflows", ROOT / "tools" / "build_layer_workflows.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_layer_workflows"] = module
    spec.loader.exec_module(module)
    graphs = module.graphs()
    assert set(graphs) == {"pixart_layers_poster", "pixart_layers_sticker_sheet", "pixart_layers_regenerate"}
    for name, nodes in graphs.items():
        assert json.loads((ROOT / "workflows" / f"{name}.json").read_text()) == module.to_ui(nodes), name
        assert json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text()) == module.to_api(nodes), name


def test_make_tiny_writes_the_layer_workflows_inputs(tiny_suite):
    from pixart_atelier.pixart_core.layers import LayerStack

    for path in (ROOT / "workflows" / "api").glob("pixart_layers_*.json"):
        for node in json.loads(path.read_text()).values():
            if node["class_type"] == "AtelierLoadLayers":
                stack = LayerStack.load(tiny_suite / "comfyui" / "input" / node["inputs"]["file"])
                regenerate = [n for n in json.loads(path.read_text()).values()
                              if n["class_type"] == "AtelierRegenerateLayer"]
                assert all(n["inputs"]["layer"] in [layer.name for layer in stack.layers] for n in regenerate)
