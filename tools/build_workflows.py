"""Write the example workflows: UI format (workflows/*.json, drag-and-drop and Browse Templates) and API
format (workflows/api/*.json, for /prompt and the tests), both from one description per graph.

Widget values are ordered from each node's INPUT_TYPES, so the files always match the node definitions.
Run: `python tools/build_workflows.py` (tests check that the committed files are what this writes).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOCKET_TYPES_ARE_WIDGETS = ("INT", "FLOAT", "STRING", "BOOLEAN")

# Core nodes used by the examples: their widget inputs in order (what the frontend stores positionally).
CORE_WIDGETS: dict[str, list[str]] = {
    "VAELoader": ["vae_name"],
    "VAEDecode": [],
    "SaveImage": ["filename_prefix"],
    "LoadImage": ["image", "upload"],
    "PreviewImage": [],
}
CORE_SOCKETS: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {
    "VAELoader": ([], [("VAE", "VAE")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE")], []),
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "PreviewImage": ([("images", "IMAGE")], []),
}

# Node body sizes [width, height] for the canvas: at least what ComfyUI frontend 1.27 computes for each node
# (node.computeSize()), wider where text should stay readable; the 30 px title bar sits above `pos`.
UI_SIZES: dict[str, list[int]] = {
    "AtelierModelLoader": [370, 130], "AtelierT5Loader": [370, 110], "AtelierT5TextEncode": [380, 200],
    "AtelierResolutionSelect": [380, 80], "AtelierSampler": [320, 320], "AtelierVAELoader": [320, 60],
    "VAELoader": [320, 60], "AtelierVAEDecode": [210, 50], "AtelierVAEEncode": [210, 50], "VAEDecode": [210, 50],
    "LoadImage": [370, 330], "SaveImage": [340, 340], "AtelierControlNetLoader": [370, 90],
    "AtelierApplyControlNet": [320, 190], "AtelierHEDPreprocessor": [320, 60], "AtelierCannyPreprocessor": [320, 80],
    "AtelierTransparentSampler": [400, 560], "AtelierTransparentDecode": [340, 150],
    "AtelierTransparentEncode": [340, 100], "AtelierSaveRGBA": [340, 340], "PreviewImage": [340, 340],
}
TITLE_HEIGHT, COLUMN_GAP, ROW_GAP, MARGIN = 30, 60, 40, 40
# Room left below a node for what appears on it after a run: the web extension's detected-variant box on the
# model loader; the frontend's latent preview on the sampler (frontend 1.27 grows it from 320 to ~534 px tall).
GROWS_BY: dict[str, int] = {"AtelierModelLoader": 80, "AtelierSampler": 220, "AtelierTransparentSampler": 220}


@dataclass
class Node:
    id: int
    type: str
    values: dict = field(default_factory=dict)  # widget name -> value
    links: dict = field(default_factory=dict)  # input name -> (node id, output slot)
    title: str | None = None


def load_pack():
    name = "pixart_atelier_build"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def node_spec(class_type: str):
    """(ordered widget names, seed-like widget names, input sockets, output sockets) of a node type."""
    mappings = load_pack().NODE_CLASS_MAPPINGS
    if class_type in CORE_WIDGETS:
        inputs, outputs = CORE_SOCKETS[class_type]
        return CORE_WIDGETS[class_type], set(), inputs, outputs
    cls = mappings[class_type]
    spec = cls.INPUT_TYPES()
    widgets, controlled, sockets = [], set(), []
    for section in ("required", "optional"):
        for name, (kind, *opts) in spec.get(section, {}).items():
            options = opts[0] if opts else {}
            if isinstance(kind, list) or kind in SOCKET_TYPES_ARE_WIDGETS:
                widgets.append(name)
                if options.get("control_after_generate"):
                    controlled.add(name)
            else:
                sockets.append((name, kind))
    names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
    return widgets, controlled, sockets, list(zip(names, cls.RETURN_TYPES))


def to_api(nodes: list[Node]) -> dict:
    api = {}
    for node in nodes:
        inputs = dict(node.values)
        inputs.update({name: [str(src), slot] for name, (src, slot) in node.links.items()})
        api[str(node.id)] = {"class_type": node.type, "inputs": inputs, "_meta": {"title": node.title or node.type}}
    return api


def to_ui(nodes: list[Node]) -> dict:
    by_id = {n.id: n for n in nodes}
    links, ui_nodes = [], []
    out_links: dict[tuple[int, int], list[int]] = {}
    for node in nodes:
        for name, (src, slot) in node.links.items():
            link_id = len(links) + 1
            out_type = node_spec(by_id[src].type)[3][slot][1]
            links.append([link_id, src, slot, node.id, name, out_type])
            out_links.setdefault((src, slot), []).append(link_id)
    positions, orders = _layout(nodes), _execution_order(nodes)
    for node in nodes:
        widgets, controlled, sockets, outputs = node_spec(node.type)
        values = []
        for name in widgets:
            if name == "upload":
                values.append("image")
                continue
            values.append(node.values.get(name))
            if name in controlled:
                values.append("fixed")
        inputs = []
        link_of = {l[4]: l[0] for l in links if l[3] == node.id}
        for slot_name, kind in sockets:
            inputs.append({"name": slot_name, "type": kind, "link": link_of.get(slot_name)})
        for name in widgets:
            if name in node.links:  # a widget turned into an input
                kind = "INT" if name in ("width", "height") else "*"
                inputs.append({"name": name, "type": kind, "widget": {"name": name}, "link": link_of[name]})
        ui_nodes.append({
            "id": node.id, "type": node.type, "pos": positions[node.id], "size": UI_SIZES[node.type],
            "flags": {}, "order": orders[node.id], "mode": 0, "inputs": inputs,
            "outputs": [{"name": name, "type": kind, "links": out_links.get((node.id, i), []), "slot_index": i}
                        for i, (name, kind) in enumerate(outputs)],
            "title": node.title or None,
            "properties": {"Node name for S&R": node.type, "cnr_id": "pixart-atelier"},
            "widgets_values": values,
        })
        if ui_nodes[-1]["title"] is None:
            del ui_nodes[-1]["title"]
    ui_links = [[l[0], l[1], l[2], l[3], _input_slot(by_id[l[3]], l[4]), l[5]] for l in links]
    return {"last_node_id": max(by_id), "last_link_id": len(links), "nodes": ui_nodes, "links": ui_links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def _execution_order(nodes: list[Node]) -> dict[int, int]:
    """Kahn's order as the frontend computes it: sources in list order first, then nodes as their inputs are met."""
    waiting = {n.id: len({src for src, _ in n.links.values()}) for n in nodes}
    queue = [n.id for n in nodes if not waiting[n.id]]
    order: dict[int, int] = {}
    while queue:
        done = queue.pop(0)
        order[done] = len(order)
        for n in nodes:
            if done in {src for src, _ in n.links.values()}:
                waiting[n.id] -= 1
                if not waiting[n.id]:
                    queue.append(n.id)
    return order


def _layout(nodes: list[Node]) -> dict[int, list[int]]:
    """Left-to-right columns by link depth (loaders just left of their first consumer), stacked top-down."""
    by_id = {n.id: n for n in nodes}
    depth: dict[int, int] = {}

    def longest_path(node_id: int) -> int:
        if node_id not in depth:
            sources = {src for src, _ in by_id[node_id].links.values()}
            depth[node_id] = 1 + max(map(longest_path, sources)) if sources else 0
        return depth[node_id]

    for n in nodes:
        longest_path(n.id)
    for n in nodes:
        if not n.links:
            consumers = [depth[m.id] for m in nodes if n.id in {src for src, _ in m.links.values()}]
            depth[n.id] = max(0, min(consumers, default=1) - 1)
    for n in nodes:  # an output node (Save Image) goes under its only source, keeping the graph compact
        sources = {src for src, _ in n.links.values()}
        if len(sources) == 1 and not any(n.id in {src for src, _ in m.links.values()} for m in nodes):
            depth[n.id] = depth[sources.pop()]
    positions, x = {}, MARGIN
    for column in range(max(depth.values()) + 1):
        members = [n for n in nodes if depth[n.id] == column]
        y = MARGIN + TITLE_HEIGHT
        for n in members:
            positions[n.id] = [x, y]
            y += UI_SIZES[n.type][1] + TITLE_HEIGHT + ROW_GAP + GROWS_BY.get(n.type, 0)
        x += max((UI_SIZES[n.type][0] for n in members), default=0) + COLUMN_GAP
    return positions


def _input_slot(node: Node, input_name: str) -> int:
    widgets, _, sockets, _ = node_spec(node.type)
    names = [name for name, _ in sockets] + [w for w in widgets if w in node.links]
    return names.index(input_name)


def _text_to_image(model: str, vae_nodes: str, vae: str, sampler: dict, prompt: str, resolution: bool) -> list[Node]:
    nodes = [
        Node(1, "AtelierModelLoader", {"model_name": model, "dtype": "auto", "variant": "auto"}),
        Node(2, "AtelierT5Loader", {"t5_name": "t5xxl_fp16.safetensors", "dtype": "auto", "device": "auto"}),
        Node(3, "AtelierT5TextEncode", {"positive": prompt, "negative": ""}, {"t5": (2, 0), "model": (1, 0)}),
        Node(5, "AtelierSampler", {"seed": 42, "steps": sampler["steps"], "cfg": sampler["cfg"],
                                   "sampler_name": sampler["name"], "width": 1024, "height": 1024,
                                   "batch_size": 1, "denoise": 1.0},
             {"model": (1, 0), "positive": (3, 0), "negative": (3, 1)}),
    ]
    if resolution:
        nodes.insert(3, Node(4, "AtelierResolutionSelect", {"ratio": "1.0"}, {"model": (1, 0)}))
        nodes[4].links.update({"width": (4, 0), "height": (4, 1)})
    if vae_nodes == "core":
        nodes += [Node(6, "VAELoader", {"vae_name": vae}), Node(7, "VAEDecode", {}, {"samples": (5, 0), "vae": (6, 0)})]
    else:
        nodes += [Node(6, "AtelierVAELoader", {"vae_name": vae}),
                  Node(7, "AtelierVAEDecode", {}, {"latent": (5, 0), "vae": (6, 0)})]
    nodes.append(Node(8, "SaveImage", {"filename_prefix": "PixArt"}, {"images": (7, 0)}))
    return nodes


def _transparent_graphs() -> dict[str, list[Node]]:
    """RGBA (#9): a Σ sticker through the attention matte, and RGBA image-to-image through LayerDiffuse's
    transparent VAE (offset encoder in, transparent decoder out); both save RGBA PNGs and preview on a checkerboard."""
    sigma = {"model_name": "PixArt-Sigma-XL-2-1024-MS.pth", "dtype": "auto", "variant": "auto"}
    t5 = {"t5_name": "t5xxl_fp16.safetensors", "dtype": "auto", "device": "auto"}
    sticker = [
        Node(1, "AtelierModelLoader", sigma),
        Node(2, "AtelierT5Loader", t5),
        Node(3, "AtelierTransparentSampler", {
            "prompt": "a cute red panda sitting, full body, sticker illustration",
            "negative": "blurry, shadow, low-resolution, low-quality", "seed": 42, "steps": 20, "cfg": 4.5,
            "sampler_name": "dpmpp_2m", "width": 1024, "height": 1024, "batch_size": 1, "border": 0.125,
            "steer": 1.0, "capture_from": 0.5}, {"model": (1, 0), "t5": (2, 0)}),
        Node(6, "VAELoader", {"vae_name": "sdxl_vae.safetensors"}),
        Node(7, "AtelierTransparentDecode", {"engine": "attention matte", "tta": True},
             {"samples": (3, 0), "vae": (6, 0), "attention": (3, 1)}),
        Node(8, "AtelierSaveRGBA", {"filename_prefix": "PixArt-sticker"}, {"rgba": (7, 2)}),
        Node(9, "PreviewImage", {}, {"images": (7, 3)}),
    ]
    rgba_img2img = [
        Node(1, "AtelierModelLoader", sigma),
        Node(2, "AtelierT5Loader", t5),
        Node(3, "AtelierT5TextEncode", {"positive": "a blue glass bottle with a cork, product photo", "negative": ""},
             {"t5": (2, 0), "model": (1, 0)}),
        Node(4, "LoadImage", {"image": "example_rgba.png"}),
        Node(6, "VAELoader", {"vae_name": "sdxl_vae.safetensors"}),
        Node(9, "AtelierTransparentEncode", {"encoder_name": "vae_transparent_encoder.safetensors"},
             {"image": (4, 0), "vae": (6, 0), "mask": (4, 1)}),
        Node(5, "AtelierSampler", {"seed": 7, "steps": 20, "cfg": 4.5, "sampler_name": "dpmpp_2m", "width": 1024,
                                   "height": 1024, "batch_size": 1, "denoise": 0.5},
             {"model": (1, 0), "positive": (3, 0), "negative": (3, 1), "latent": (9, 0)}),
        Node(7, "AtelierTransparentDecode", {"engine": "vae_transparent_decoder.safetensors", "tta": True},
             {"samples": (5, 0), "vae": (6, 0)}),
        Node(8, "AtelierSaveRGBA", {"filename_prefix": "PixArt-rgba-img2img"}, {"rgba": (7, 2)}),
        Node(10, "PreviewImage", {}, {"images": (7, 3)}),
    ]
    return {"pixart_sigma_transparent_sticker": sticker, "pixart_rgba_img2img": rgba_img2img}


def graphs() -> dict[str, list[Node]]:
    dpm = {"name": "dpmpp_2m", "steps": 20, "cfg": 4.5}
    img2img = [
        Node(1, "AtelierModelLoader", {"model_name": "PixArt-Sigma-XL-2-1024-MS.pth", "dtype": "auto", "variant": "auto"}),
        Node(2, "AtelierT5Loader", {"t5_name": "t5xxl_fp16.safetensors", "dtype": "auto", "device": "auto"}),
        Node(3, "AtelierT5TextEncode", {"positive": "an oil painting of a lighthouse at dusk, thick brush strokes",
                                        "negative": ""}, {"t5": (2, 0), "model": (1, 0)}),
        Node(4, "LoadImage", {"image": "example.png"}),
        Node(6, "VAELoader", {"vae_name": "sdxl_vae.safetensors"}),
        Node(9, "AtelierVAEEncode", {}, {"image": (4, 0), "vae": (6, 0)}),
        Node(5, "AtelierSampler", {"seed": 7, "steps": 20, "cfg": 4.5, "sampler_name": "dpmpp_2m", "width": 1024,
                                   "height": 1024, "batch_size": 1, "denoise": 0.6},
             {"model": (1, 0), "positive": (3, 0), "negative": (3, 1), "latent": (9, 0)}),
        Node(7, "VAEDecode", {}, {"samples": (5, 0), "vae": (6, 0)}),
        Node(8, "SaveImage", {"filename_prefix": "PixArt-img2img"}, {"images": (7, 0)}),
    ]
    # PixArt-δ ControlNet as the official ControlNet app: HED edges of an image, α-1024-MS, 14 steps, cfg 4.5
    controlnet_hed = [
        Node(1, "AtelierModelLoader", {"model_name": "PixArt-XL-2-1024-MS.pth", "dtype": "auto", "variant": "auto"}),
        Node(2, "AtelierT5Loader", {"t5_name": "t5xxl_fp16.safetensors", "dtype": "auto", "device": "auto"}),
        Node(3, "AtelierT5TextEncode", {"positive": "a stone cottage with a thatched roof in a flower garden, "
                                        "watercolor", "negative": ""}, {"t5": (2, 0), "model": (1, 0)}),
        Node(4, "LoadImage", {"image": "example.png"}),
        Node(9, "AtelierHEDPreprocessor", {"hed_name": "ControlNetHED.pth"}, {"image": (4, 0)}),
        Node(10, "AtelierControlNetLoader", {"controlnet_name": "PixArt-XL-2-1024-ControlNet.pth", "dtype": "auto"}),
        Node(6, "AtelierVAELoader", {"vae_name": "sd-vae-ft-ema.safetensors"}),
        Node(11, "AtelierApplyControlNet", {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0},
             {"positive": (3, 0), "negative": (3, 1), "controlnet": (10, 0), "image": (9, 0), "vae": (6, 0)}),
        Node(5, "AtelierSampler", {"seed": 42, "steps": 14, "cfg": 4.5, "sampler_name": "dpmpp_2m", "width": 1024,
                                   "height": 1024, "batch_size": 1, "denoise": 1.0},
             {"model": (1, 0), "positive": (11, 0), "negative": (11, 1)}),
        Node(7, "AtelierVAEDecode", {}, {"latent": (5, 0), "vae": (6, 0)}),
        Node(8, "SaveImage", {"filename_prefix": "PixArt-controlnet"}, {"images": (7, 0)}),
    ]
    return {
        "pixart_sigma_1024_text_to_image": _text_to_image(
            "PixArt-Sigma-XL-2-1024-MS.pth", "core", "sdxl_vae.safetensors", dpm,
            "a red fox curled up asleep in fresh snow, soft morning light, detailed fur", resolution=True),
        "pixart_alpha_1024ms_text_to_image": _text_to_image(
            "PixArt-XL-2-1024-MS.pth", "atelier", "sd-vae-ft-ema.safetensors", dpm,
            "a cozy reading nook with a window seat, rain outside, warm lamp light", resolution=False),
        "pixart_delta_lcm_4_steps": _text_to_image(
            "PixArt-LCM-XL-2-1024-MS.safetensors", "atelier", "sd-vae-ft-ema.safetensors",
            {"name": "lcm", "steps": 4, "cfg": 1.0}, "a bowl of ramen, studio photo, steam rising", resolution=False),
        "pixart_sigma_image_to_image": img2img,
        "pixart_delta_controlnet_hed": controlnet_hed,
        **_transparent_graphs(),
    }


def main() -> None:
    for name, nodes in graphs().items():
        for path, data in ((ROOT / "workflows" / f"{name}.json", to_ui(nodes)),
                           (ROOT / "workflows" / "api" / f"{name}.json", to_api(nodes))):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            tmp.replace(path)


if __name__ == "__main__":
    main()
