"""Edge-map preprocessors for PixArt ControlNets: HED (what PixArt-δ was trained on) and Canny.

Both take and return core IMAGEs [B, H, W, C] in 0..1 (edge maps as 3-channel grey images), so other nodes can
show or edit the map, and maps from other packs (comfyui_controlnet_aux) plug into Apply ControlNet as they are.
"""

from __future__ import annotations

import torch

from ..pixart_core.controlnet.hed import hed_edges, load_hed
from . import host
from .types import CATEGORY

ANNOTATORS = "annotators"  # models/annotators, as ComfyUI users of lllyasviel/Annotators keep them
host.register_model_folder(ANNOTATORS, (".pth", ".safetensors"))


def _rgb(image: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, C] -> [B, 3, H, W] float32 in 0..1."""
    return image[..., :3].movedim(-1, 1).float()  # [B, 3, H, W]


def _as_image(edges: torch.Tensor) -> torch.Tensor:
    """Edge maps [B, 1, H, W] -> IMAGE [B, H, W, 3] (float32, CPU)."""
    return edges.float().cpu().expand(-1, 3, -1, -1).movedim(1, -1).contiguous()  # [B, H, W, 3]


class AtelierHEDPreprocessor:
    """HED soft edges with ControlNetHED (the detector PixArt-δ's ControlNet was trained with)."""

    DESCRIPTION = ("Soft edge map with HED (ControlNetHED.pth from lllyasviel/Annotators, in models/annotators), "
                   "the input PixArt-δ's HED ControlNet was trained on. Runs at the image's own size: PixArt-δ "
                   "ran it at the generation size, so give an image of about that size.")
    CATEGORY = f"{CATEGORY}/preprocessors"
    FUNCTION = "detect"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("edges",)
    OUTPUT_TOOLTIPS = ("The HED edge map as a grey image [B, H, W, 3] in 0..1.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The picture to trace (at least 16x16 pixels)."}),
            "hed_name": (host.list_models(ANNOTATORS), {"tooltip": "ControlNetHED.pth (lllyasviel/Annotators on "
                         "Hugging Face) in models/annotators."}),
        }}

    def detect(self, image, hed_name):
        model = load_hed(host.model_path(ANNOTATORS, hed_name), device=host.compute_device())
        return (_as_image(hed_edges(model, _rgb(image))),)


class AtelierCannyPreprocessor:
    """Canny hard edges (OpenCV)."""

    DESCRIPTION = ("Hard edge map with OpenCV's Canny detector. PixArt-δ's released ControlNet was trained on "
                   "HED edges; Canny maps work with it too, less faithfully.")
    CATEGORY = f"{CATEGORY}/preprocessors"
    FUNCTION = "detect"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("edges",)
    OUTPUT_TOOLTIPS = ("The Canny edge map as a black-and-white image [B, H, W, 3] (0 or 1).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The picture to trace."}),
            "low_threshold": ("INT", {"default": 100, "min": 0, "max": 255,
                                      "tooltip": "Edges continue through gradients above this (0..255)."}),
            "high_threshold": ("INT", {"default": 200, "min": 0, "max": 255,
                                       "tooltip": "Edges start at gradients above this (0..255); at least low."}),
        }}

    def detect(self, image, low_threshold, high_threshold):
        from ..pixart_core.controlnet.canny import canny_edges  # OpenCV loads only when Canny is used

        return (_as_image(canny_edges(_rgb(image), low_threshold, high_threshold)),)
