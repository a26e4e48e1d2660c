"""The example workflows name only existing nodes, with the right number of widget values, in both formats."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UI_FILES = sorted((ROOT / "workflows").glob("*.json"))
API_FILES = sorted((ROOT / "workflows" / "api").glob("*.json"))


@pytest.fixture(scope="module")
def builder():
    spec = importlib.util.spec_from_file_location("build_workflows", ROOT / "tools" / "build_workflows.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_workflows"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_four_examples_exist_in_both_formats():
    names = {p.stem for p in UI_FILES}
    assert names == {p.stem for p in API_FILES}
    assert {"pixart_sigma_1024_text_to_image", "pixart_alpha_1024ms_text_to_image", "pixart_delta_lcm_4_steps",
            "pixart_sigma_image_to_image", "pixart_sigma_transparent_sticker", "pixart_rgba_img2img"} <= names


def test_committed_files_match_the_builder(builder):
    for name, nodes in builder.graphs().items():
        assert json.loads((ROOT / "workflows" / f"{name}.json").read_text()) == builder.to_ui(nodes), name
        assert json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text()) == builder.to_api(nodes), name


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow_nodes_exist_with_right_widget_counts(path, pack, builder):
    data = json.loads(path.read_text())
    known = set(pack.NODE_CLASS_MAPPINGS) | set(builder.CORE_WIDGETS)
    node_ids = {n["id"] for n in data["nodes"]}
    for node in data["nodes"]:
        assert node["type"] in known, f"{path.name}: unknown node type {node['type']}"
        widgets, controlled, sockets, outputs = builder.node_spec(node["type"])
        assert len(node["widgets_values"]) == len(widgets) + len(controlled), (path.name, node["type"])
        assert len(node["outputs"]) == len(outputs)
    for link_id, src, src_slot, dst, dst_slot, kind in data["links"]:
        assert src in node_ids and dst in node_ids, f"{path.name}: link {link_id} to a missing node"
    assert data["last_link_id"] == len(data["links"])


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.stem)
def test_api_workflow_inputs_match_node_definitions(path, pack, builder):
    api = json.loads(path.read_text())
    for node_id, node in api.items():
        kind = node["class_type"]
        if kind in builder.CORE_WIDGETS:
            continue
        cls = pack.NODE_CLASS_MAPPINGS[kind]
        spec = cls.INPUT_TYPES()
        required, optional = spec["required"], spec.get("optional", {})
        assert set(required) <= set(node["inputs"]), f"{path.name} node {node_id}: missing inputs"
        assert set(node["inputs"]) <= set(required) | set(optional), f"{path.name} node {node_id}: unknown inputs"
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                assert value[0] in api, f"{path.name} node {node_id}: {name} links to a missing node"
