"""Layout parsing: defaults, JSON round trip, and one ValueError per invalid input naming the layer and field."""

from __future__ import annotations

import copy
import json
import re

import pytest

from pixart_core.layers import MAX_LAYERS, LayerSpec, Layout, parse_layout
from pixart_core.layers.layout import retold


def _layout(**overrides) -> dict:
    layout = {"width": 96, "height": 64, "prompt": "a sunny park", "negative": "blurry",
              "background": {"prompt": "grass and trees"},
              "layers": [{"name": "cat", "prompt": "a ginger cat", "box": [4, 8, 40, 60]},
                         {"name": "dog", "prompt": "a brown dog", "box": [30.5, 2, 90, 50]}]}
    layout.update(overrides)
    return layout


def _with_layer(index: int, **fields) -> dict:
    layout = _layout()
    layout["layers"] = copy.deepcopy(layout["layers"])
    for key, value in fields.items():
        if value is ...:
            layout["layers"][index].pop(key)
        else:
            layout["layers"][index][key] = value
    return layout


def test_parse_fills_defaults():
    layout = parse_layout({"width": 96, "height": 64, "prompt": "scene",
                           "layers": [{"prompt": "a cat", "box": [0, 0, 96, 64]},
                                      {"prompt": "a dog", "box": [1, 1, 2, 2]}]})
    assert layout.negative == ""
    assert layout.background_prompt == "scene"  # the background defaults to the global prompt
    assert [spec.name for spec in layout.layers] == ["layer 1", "layer 2"]  # stack indices (0 = background)
    assert layout.layers[0] == LayerSpec(name="layer 1", prompt="a cat", box=(0, 0, 96, 64))


def test_json_round_trip_and_dict_string_agree():
    layout = parse_layout(_layout())
    assert parse_layout(layout.to_json()) == layout
    assert parse_layout(json.dumps(_layout())) == layout
    assert parse_layout(layout) == layout
    assert json.loads(layout.to_json()) == layout.to_dict()
    assert layout.layers[1].box == (30.5, 2, 90, 50)
    assert isinstance(layout, Layout) and layout.background_prompt == "grass and trees"


def test_64_layers_accepted_65_refused():
    layers = [{"name": f"l{i}", "prompt": "dot", "box": [0, 0, 8, 8]} for i in range(MAX_LAYERS)]
    assert len(parse_layout(_layout(layers=layers)).layers) == 64
    with pytest.raises(ValueError, match=r"^layout\.layers: 65 layers; at most 64"):
        parse_layout(_layout(layers=layers + [{"name": "extra", "prompt": "dot", "box": [0, 0, 8, 8]}]))


@pytest.mark.parametrize("layout, message", [
    ("{not json", r"^layout: invalid JSON \(.* line 1 column 2\)"),
    ("[1, 2]", r"^layout: must be a JSON object"),
    (_layout(width=None), r"^layout\.width: missing"),
    (_layout(width=96.0), r"^layout\.width: must be a positive integer.*96\.0"),
    (_layout(height=0), r"^layout\.height: must be a positive integer.*0"),
    (_layout(height=-5), r"^layout\.height: must be a positive integer.*-5"),
    (_layout(width="96"), r"^layout\.width: must be a positive integer"),
    (_layout(width=True), r"^layout\.width: must be a positive integer"),
    (_layout(prompt=None), r"^layout\.prompt: missing"),
    (_layout(prompt="  "), r"^layout\.prompt: empty"),
    (_layout(negative=3), r"^layout\.negative: must be a text"),
    (_layout(background="sky"), r"^layout\.background: must be an object"),
    (_layout(background={"prompt": 7}), r"^layout\.background\.prompt: must be a text"),
    (_layout(background={"promt": "sky"}), r"^layout\.background: unknown field 'promt'"),
    (_layout(colour="red"), r"^layout: unknown field 'colour'"),
    (_layout(layers=None), r"^layout\.layers: missing"),
    (_layout(layers=[]), r"^layout\.layers: empty"),
    (_layout(layers={"a": 1}), r"^layout\.layers: must be a list"),
    (_layout(layers=["cat"]), r"^layout\.layers\[0\]: must be an object"),
    (_with_layer(1, prompt=...), r"^layout\.layers\[1\] \('dog'\)\.prompt: missing"),
    (_with_layer(1, prompt=""), r"^layout\.layers\[1\] \('dog'\)\.prompt: empty"),
    (_with_layer(0, name=..., prompt=...), r"^layout\.layers\[0\]\.prompt: missing"),
    (_with_layer(0, name=""), r"^layout\.layers\[0\]\.name: must be a non-empty text"),
    (_with_layer(0, name=5), r"^layout\.layers\[0\]\.name: must be a non-empty text"),
    (_with_layer(1, promt="x"), r"^layout\.layers\[1\] \('dog'\): unknown field 'promt'"),
    (_with_layer(1, box=...), r"^layout\.layers\[1\] \('dog'\)\.box: missing"),
    (_with_layer(1, box=[1, 2, 3]), r"^layout\.layers\[1\] \('dog'\)\.box: must be 4 numbers"),
    (_with_layer(1, box=[1, 2, 3, 4, 5]), r"^layout\.layers\[1\] \('dog'\)\.box: must be 4 numbers"),
    (_with_layer(1, box=[1, "2", 3, 4]), r"^layout\.layers\[1\] \('dog'\)\.box: must be 4 numbers"),
    (_with_layer(1, box=[1, True, 3, 4]), r"^layout\.layers\[1\] \('dog'\)\.box: must be 4 numbers"),
    (_with_layer(1, box="0,0,4,4"), r"^layout\.layers\[1\] \('dog'\)\.box: must be 4 numbers"),
    (_with_layer(1, box=[0, 0, float("nan"), 4]), r"^layout\.layers\[1\] \('dog'\)\.box: must be finite"),
    (_with_layer(1, box=[50, 0, 50, 10]), r"^layout\.layers\[1\] \('dog'\)\.box: x1 \(50\) must be greater than x0"),
    (_with_layer(1, box=[60, 0, 40, 10]), r"^layout\.layers\[1\] \('dog'\)\.box: x1 \(40\) must be greater"),
    (_with_layer(1, box=[0, 9, 10, 9]), r"^layout\.layers\[1\] \('dog'\)\.box: y1 \(9\) must be greater than y0"),
    (_with_layer(1, box=[0, 0, 97, 10]), r"^layout\.layers\[1\] \('dog'\)\.box: .* outside the 96x64 canvas"),
    (_with_layer(1, box=[0, 0, 10, 65]), r"^layout\.layers\[1\] \('dog'\)\.box: .* outside the 96x64 canvas"),
    (_with_layer(1, box=[-1, 0, 10, 10]), r"^layout\.layers\[1\] \('dog'\)\.box: .* outside the 96x64 canvas"),
    (_with_layer(1, name="cat"), r"^layout\.layers\[1\] \('cat'\)\.name: duplicate of layout\.layers\[0\]"),
    (_with_layer(0, name="background"), r"^layout\.layers\[0\] \('background'\)\.name: duplicate of the "
                                        r"background"),
])
def test_invalid_layouts_name_layer_and_field(layout, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_layout(layout)
    assert "\n" not in str(info.value)


def test_default_names_can_clash_with_given_ones():
    layout = _layout(layers=[{"prompt": "a", "box": [0, 0, 4, 4]}, {"name": "layer 1", "prompt": "b",
                                                                    "box": [0, 0, 4, 4]}])
    with pytest.raises(ValueError, match=re.escape("layout.layers[1] ('layer 1').name: duplicate of layout.layers[0]")):
        parse_layout(layout)


def test_retold_replaces_the_whole_phrase_in_any_case_only():
    assert retold("a cat and a dog in a park", "a dog", "a fox") == "a cat and a fox in a park"
    assert retold("A Dog near a doghouse", "a dog", "a fox") == "a fox near a doghouse"  # whole words only
    assert retold("a cat in a park", "a dog", "a fox") == "a cat in a park"  # absent: unchanged
    assert retold("a dog (small)", "(small)", "big") == "a dog big"  # the phrase is literal, not a pattern
    assert retold("a dog", "", "a fox") == "a dog"
