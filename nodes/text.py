"""T5 text encoding for PixArt: positive and negative prompts, padded to the model's 120 or 300 tokens."""

from __future__ import annotations

from ..pixart_core.pipeline import encode_prompts
from . import host
from .types import CATEGORY, PIXART_CONDITIONING, PIXART_MODEL, PIXART_T5, PixArtConditioning


def encode(t5, prompts: list[str], max_length: int) -> PixArtConditioning:
    """T5 on ComfyUI's device (prompts prepared as the reference pipelines do); the result stays on the CPU."""
    hidden, mask = encode_prompts(host.load_on_device(t5.handle), t5.tokenizer, prompts, max_length)  # [N, L, C]
    return PixArtConditioning(hidden.float().cpu(), mask.cpu(), list(prompts))


class AtelierT5TextEncode:
    """Encode a positive and a negative prompt with T5, each with its own attention mask."""

    DESCRIPTION = ("Encodes the positive and negative prompts with T5, padded to the model's token count "
                   "(PixArt-α 120, PixArt-Σ 300) with attention masks, as the reference pipelines do.")
    CATEGORY = f"{CATEGORY}/conditioning"
    FUNCTION = "encode"
    RETURN_TYPES = (PIXART_CONDITIONING, PIXART_CONDITIONING)
    RETURN_NAMES = ("positive", "negative")
    OUTPUT_TOOLTIPS = ("Positive prompt conditioning.", "Negative prompt conditioning (empty = the reference default).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "t5": (PIXART_T5, {"tooltip": "The T5 encoder from the PixArt T5 loader."}),
            "model": (PIXART_MODEL, {"tooltip": "The PixArt model; decides 120 (α) or 300 (Σ) tokens."}),
            "positive": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                    "tooltip": "What the image should show."}),
            "negative": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                    "tooltip": "What to steer away from; PixArt's default is empty."}),
        }}

    def encode(self, t5, model, positive, negative):
        return (encode(t5, [positive], model.max_length), encode(t5, [negative], model.max_length))
