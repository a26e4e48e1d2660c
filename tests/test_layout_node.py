"""The PixArt Layout node (nodes/layout_node.py): the Layout it builds and what VALIDATE_INPUTS refuses."""

from __future__ import annotations

import inspect
import json
import re

import pytest

LAYERS = {"layers": [{"name": "sun", "prompt": "a yellow sun", "box": [100, 100, 400, 500]},
                     {"name": "tree", "prompt": "a green tree", "box": [520, 200, 920, 700]}]}


@pytest.fixture(scope="module")
def layout_node(pack):
    return pack.NODE_CLASS_MAPPINGS["AtelierLayout"]


def test_metadata_and_widget_order(pack, layout_node):
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["AtelierLayout"]
    assert layout_node.RETURN_TYPES == ("PIXART_LAYOUT",) and layout_node.DESCRIPTION
    assert layout_node.CATEGORY.startswith("PixArt Atelier/")
    required = layout_node.INPUT_TYPES()["required"]
    # saved workflows hold widget values by position: this order is part of the workflow format
    assert list(required) == ["layout", "width", "height", "prompt", "background"]
    for name, (kind, options) in required.items():
        assert options.get("tooltip"), name
    assert required["layout"][1]["multiline"] and required["width"][1]["step"] == 16
    assert required["width"][1]["max"] == required["height"][1]["max"] == 4096
    assert layout_node.VALIDATE_INPUTS(required["layout"][1]["default"], 1024, 1024, "a poster", "") is True


def test_builds_the_layout_from_widgets_and_json(layout_node):
    (layout,) = layout_node().build(json.dumps(LAYERS), 1024, 768, "a garden poster", "a pale sky")
    assert (layout.width, layout.height, layout.prompt, layout.background_prompt) == (1024, 768, "a garden poster",
                                                                                       "a pale sky")
    assert [(layer.name, layer.prompt, layer.box) for layer in layout.layers] == \
        [("sun", "a yellow sun", (100, 100, 400, 500)), ("tree", "a green tree", (520, 200, 920, 700))]
    # empty background = the global prompt; the widgets replace size and prompts written in the JSON
    text = json.dumps({**LAYERS, "width": 64, "prompt": "ignored", "negative": "blurry"})
    (layout,) = layout_node().build(text, 1024, 768, "a garden poster", "  ")
    assert layout.width == 1024 and layout.prompt == layout.background_prompt == "a garden poster"
    assert layout.negative == "blurry"
    (from_list,) = layout_node().build(json.dumps(LAYERS["layers"]), 1024, 768, "p", "")  # a bare list of layers
    assert len(from_list.layers) == 2


@pytest.mark.parametrize("layout, width, height, prompt, message", [
    ('{"layers": [', 1024, 768, "p", "layout: invalid JSON"),
    ("", 1024, 768, "p", "layout: empty"),
    ('{"layers": []}', 1024, 768, "p", "layout.layers: empty"),
    ('"text"', 1024, 768, "p", "layout: must be a JSON object"),
    (json.dumps(LAYERS), 1024, 640, "p", "layout.layers[1] ('tree').box"),
    (json.dumps({"layers": [{"name": "sun", "promt": "x", "box": [0, 0, 9, 9]}]}), 1024, 768, "p", "unknown field 'promt'"),
    (json.dumps({"layers": [{"name": "sun", "prompt": "", "box": [0, 0, 9, 9]}]}), 1024, 768, "p", "('sun').prompt: empty"),
    (json.dumps(LAYERS), 1000, 768, "p", "width: 1000 is not a multiple of 16; use 992 or 1008"),
    (json.dumps(LAYERS), 1024, 8192, "p", "height: 8192 is outside 16..4096"),
    (json.dumps(LAYERS), 1024, 768, "  ", "prompt: empty"),
])  # fmt: skip
def test_invalid_layouts_are_refused_with_one_line_naming_the_field(layout_node, layout, width, height, prompt, message):
    reason = layout_node.VALIDATE_INPUTS(layout, width, height, prompt, "")
    assert isinstance(reason, str) and message in reason and "\n" not in reason, reason
    with pytest.raises(ValueError, match="^" + re.escape(reason) + "$"):
        layout_node().build(layout, width, height, prompt, "")


def test_validate_inputs_waits_for_linked_values(layout_node):
    """Inputs fed by links reach VALIDATE_INPUTS as None: only the JSON is checked then."""
    assert layout_node.VALIDATE_INPUTS(json.dumps(LAYERS), None, None, "p", "") is True
    assert layout_node.VALIDATE_INPUTS(json.dumps(LAYERS), 1024, 768, None, None) is True
    assert "invalid JSON" in layout_node.VALIDATE_INPUTS("{", None, None, None, None)
    # ComfyUI passes only the inputs VALIDATE_INPUTS names; every widget must be among them (and so checked here)
    names = inspect.getfullargspec(layout_node.VALIDATE_INPUTS).args
    assert set(layout_node.INPUT_TYPES()["required"]) <= set(names)


def test_widget_text_helper_writes_the_editor_format():
    from pixart_atelier.nodes.layout_node import DEFAULT_LAYOUT, layers_widget_text

    text = layers_widget_text(LAYERS["layers"])
    assert json.loads(text) == LAYERS and text.count("\n") == 3  # one line per layer
    assert text.splitlines()[1] == '  {"name": "sun", "prompt": "a yellow sun", "box": [100, 100, 400, 500]},'
    assert json.loads(DEFAULT_LAYOUT)["layers"][0]["name"] == "subject"
    assert layers_widget_text([]) == '{"layers": []}'
