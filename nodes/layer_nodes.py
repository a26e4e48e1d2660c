"""Layered generation nodes: Generate Layers (a layout to a layer stack), Regenerate Layer (one layer of a stack,
every other layer untouched) and Layer Select (one layer as core IMAGE + MASK).

Every stack also comes out as core types, so core nodes can take any layer: the composite IMAGE [1, H, W, 3],
the layers as an IMAGE batch [N, H, W, 3] (straight colour, canvas size, index 0 the background) and their
masks [N, H, W] = 1 - alpha (core's MASK convention, as Load Image gives it). The engine is
`pixart_core.layers.engine`; it reaches the models only through `layer_backend.build_backend`.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import torch

from ..pixart_core.limits import check_sampled_size
from ..pixart_core.sampling import DEFAULT_SAMPLER, DEFAULT_STEPS, SamplingInterrupted, sampler_spec
from . import host
from .layer_backend import StepReporter, build_backend
from .sampler import AtelierSampler
from .types import CATEGORY, PIXART_MODEL, PIXART_T5

log = logging.getLogger(__name__)

PIXART_LAYOUT = "PIXART_LAYOUT"  # a pixart_core.layers.Layout (from the Layout node)
PIXART_LAYERS = "PIXART_LAYERS"  # a pixart_core.layers.LayerStack

STACK_RETURN_TYPES = (PIXART_LAYERS, "IMAGE", "IMAGE", "MASK")
STACK_RETURN_NAMES = ("stack", "composite", "layers", "masks")
STACK_OUTPUT_TOOLTIPS = (
    "The layer stack (names, prompts, boxes, RGBA pixels), for Save Layers, Regenerate Layer and Layer Select.",
    "The layers composited bottom to top [1, H, W, 3].",
    "Every layer's straight colour at canvas size [N, H, W, 3], bottom to top; 0 is the background.",
    "Every layer's mask [N, H, W] = 1 - alpha (core's MASK convention), in the same order.",
)
LAYER_TOOLTIP = ("The layer: its name (e.g. 'subject'), or its index where 0 is the background and the top layer is "
                 "the last; negative indices count from the top (-1).")


def _engine():
    """`pixart_core.layers.engine`: generate_layers and regenerate_layer."""
    from ..pixart_core.layers import engine

    return engine


def check_stack(stack, argument: str):
    """The LayerStack on input `argument`, or a ValueError naming it."""
    from ..pixart_core.layers import LayerStack

    if not isinstance(stack, LayerStack):
        raise ValueError(f"{argument}: expected a layer stack (PIXART_LAYERS), got {type(stack).__name__}; connect "
                         "Generate Layers, Regenerate Layer or Load Layers")
    return stack


def layer_index(stack, layer, argument: str = "layer") -> int:
    """The stack index of `layer`: a layer name first, else an integer index (negative from the top)."""
    text = str(layer).strip()
    names = [item.name for item in stack.layers]
    if text in names:
        return names.index(text)
    count = len(names)
    if re.fullmatch(r"[+-]?\d+", text):
        index = int(text)
        if -count <= index < count:
            return index % count
        raise ValueError(f"{argument}: index {index} is outside the stack of {count} layers; give 0..{count - 1} "
                         f"(0 is the background) or a name: {', '.join(repr(n) for n in names)}")
    raise ValueError(f"{argument}: no layer named {text!r}; give one of {', '.join(repr(n) for n in names)} "
                     f"or an index 0..{count - 1}")


def _pixels(image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).float() / 255.0  # [H, W, C] in 0..1


def stack_outputs(stack) -> tuple:
    """(stack, composite [1, H, W, 3], layers [N, H, W, 3], masks [N, H, W]) in core IMAGE/MASK form."""
    rgba = torch.stack([_pixels(layer.image) for layer in stack.layers])  # [N, H, W, 4] straight alpha
    composite = _pixels(stack.composite.convert("RGB"))[None]  # [1, H, W, 3]
    return stack, composite, rgba[..., :3].contiguous(), (1.0 - rgba[..., 3]).contiguous()  # [N, H, W, 3], [N, H, W]


def _with_thumbs(stack) -> dict:
    """The node's return value: the stack outputs and the layers' thumbnails for the region editor."""
    from .layer_files import save_layer_thumbs

    return {"ui": {"layer_thumbs": save_layer_thumbs(stack)}, "result": stack_outputs(stack)}


def _shared_inputs() -> dict:
    """model, t5, vae and the sampling widgets shared by Generate and Regenerate."""
    sampler = AtelierSampler.INPUT_TYPES()["required"]
    return {
        "models": {
            "model": (PIXART_MODEL, {"tooltip": "The PixArt model (PixArt-Σ works best)."}),
            "t5": (PIXART_T5, {"tooltip": "The T5 encoder; the node encodes every layer's prompt itself."}),
            "vae": ("VAE", {"tooltip": "The VAE of the model's latent space (SDXL VAE for PixArt-Σ), to decode "
                                      "and cut out the layers."}),
        },
        "sampling": {
            "seed": (sampler["seed"][0], {**sampler["seed"][1], "tooltip": "Noise seed; the same seed and layout "
                                          "give the same layers on any device."}),
            "steps": (sampler["steps"][0], {**sampler["steps"][1], "default": DEFAULT_STEPS[DEFAULT_SAMPLER],
                                            "tooltip": "Sampling steps of each generation pass."}),
            "cfg": sampler["cfg"],
            "sampler_name": sampler["sampler_name"],
        },
    }


def _run(reporter: StepReporter, call):
    """Run an engine call; a Cancel during sampling surfaces as ComfyUI's interruption."""
    try:
        with torch.inference_mode():
            return call()
    except SamplingInterrupted:
        host.check_interrupted()
        raise
    finally:
        reporter.close()


class AtelierGenerateLayers:
    """Generate a layer stack from a region layout: a background and one cut-out layer per box."""

    DESCRIPTION = ("Generates a layered picture from a layout (PixArt Layout): the background from the background "
                   "prompt, then every box as its own layer with its prompt (regional prompting inside the DiT), "
                   "cut out with transparency, stacked bottom to top in the layout's order. Outputs the stack (for "
                   "Save Layers: PSD, ORA, PNGs), the composite, each layer as an image and its mask, so core nodes "
                   "can take any layer. Progress, previews and Cancel work during every pass; the boxes of the "
                   "Layout node show the layers after a run.")
    CATEGORY = f"{CATEGORY}/layers"
    FUNCTION = "generate"
    RETURN_TYPES = STACK_RETURN_TYPES
    RETURN_NAMES = STACK_RETURN_NAMES
    OUTPUT_TOOLTIPS = STACK_OUTPUT_TOOLTIPS

    @classmethod
    def INPUT_TYPES(cls):
        shared = _shared_inputs()
        return {"required": {
            **shared["models"],
            "layout": (PIXART_LAYOUT, {"tooltip": "The region layout from PixArt Layout: canvas size, prompts and "
                                                  "the boxes, bottom to top."}),
            **shared["sampling"],
        }}

    def generate(self, model, t5, vae, layout, seed, steps, cfg, sampler_name):
        from ..pixart_core.layers import parse_layout

        layout = parse_layout(layout)  # ValueError "layout...: ..." before any model work
        check_sampled_size(layout.height, layout.width, "layout")
        steps = steps or sampler_spec(sampler_name, "sampler_name").default_steps
        reporter = StepReporter(model.latent_space, "Generate Layers")
        backend = build_backend(model, t5, vae, reporter)
        stack = _run(reporter, lambda: _engine().generate_layers(
            backend, layout, seed=seed, steps=steps, guidance=cfg, sampler=sampler_name))
        log.info("PixArt Atelier: Generate Layers made %r", stack)
        return _with_thumbs(stack)


class AtelierRegenerateLayer:
    """Regenerate one layer of a stack with a new prompt or seed; every other layer stays pixel-identical."""

    DESCRIPTION = ("Regenerates one layer of a layer stack (from Generate Layers or Load Layers, a PSD or ORA made "
                   "anywhere) inside its box, with a new prompt and/or seed; every other layer keeps its pixels. "
                   "Choose the layer by name or index (0 = the background). An empty prompt keeps the layer's "
                   "prompt. Outputs the new stack, the composite, the layers and their masks.")
    CATEGORY = f"{CATEGORY}/layers"
    FUNCTION = "regenerate"
    RETURN_TYPES = STACK_RETURN_TYPES
    RETURN_NAMES = STACK_RETURN_NAMES
    OUTPUT_TOOLTIPS = STACK_OUTPUT_TOOLTIPS

    @classmethod
    def INPUT_TYPES(cls):
        shared = _shared_inputs()
        return {"required": {
            **shared["models"],
            "stack": (PIXART_LAYERS, {"tooltip": "The layer stack to change (Generate Layers or Load Layers)."}),
            "layer": ("STRING", {"default": "1", "tooltip": LAYER_TOOLTIP}),
            "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                  "tooltip": "The layer's new prompt; empty keeps its current prompt."}),
            **shared["sampling"],
        }}

    def regenerate(self, model, t5, vae, stack, layer, prompt, seed, steps, cfg, sampler_name):
        stack = check_stack(stack, "stack")
        index = layer_index(stack, layer)
        check_sampled_size(stack.height, stack.width, "stack")
        new_prompt = prompt if prompt.strip() else None
        if new_prompt is None and not stack.layers[index].prompt.strip():
            raise ValueError(f"prompt: layer {stack.layers[index].name!r} has no stored prompt (a file made "
                             "elsewhere); type the prompt to generate it with")
        steps = steps or sampler_spec(sampler_name, "sampler_name").default_steps
        reporter = StepReporter(model.latent_space, "Regenerate Layer")
        backend = build_backend(model, t5, vae, reporter)
        result = _run(reporter, lambda: _engine().regenerate_layer(
            backend, stack, index, prompt=new_prompt, seed=seed, steps=steps, guidance=cfg, sampler=sampler_name))
        log.info("PixArt Atelier: Regenerate Layer replaced layer %d (%r)", index, stack.layers[index].name)
        return _with_thumbs(result)


class AtelierLayerSelect:
    """Pick one layer of a stack as a core IMAGE and MASK."""

    DESCRIPTION = ("Takes one layer of a layer stack, by name or index (0 = the background), as a core IMAGE "
                   "(straight colour, canvas size) and MASK (1 - alpha), for any core node: Join Image with Alpha, "
                   "inpainting, upscaling, Save Image.")
    CATEGORY = f"{CATEGORY}/layers"
    FUNCTION = "select"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    OUTPUT_TOOLTIPS = ("The layer's straight colour [1, H, W, 3] at canvas size.",
                       "The layer's mask [1, H, W] = 1 - alpha (1 where the layer is transparent).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "stack": (PIXART_LAYERS, {"tooltip": "A layer stack (Generate Layers, Regenerate Layer, Load Layers)."}),
            "layer": ("STRING", {"default": "1", "tooltip": LAYER_TOOLTIP}),
        }}

    def select(self, stack, layer):
        stack = check_stack(stack, "stack")
        rgba = _pixels(stack.layers[layer_index(stack, layer)].image)  # [H, W, 4]
        return rgba[None, ..., :3].contiguous(), (1.0 - rgba[None, ..., 3]).contiguous()  # [1, H, W, 3], [1, H, W]
