"""Save RGBA images as PNG files with straight alpha, named and tagged like core Save Image.

Inside ComfyUI the files go to ComfyUI's output folder under core's naming (`folder_paths.get_save_image_path`:
`<prefix>_00001_.png`, %date%-style variables, sub-folders in the prefix) with the prompt and the workflow as PNG
text chunks, so core "Join Image with Alpha" + "Save Image" writes the same pixels and text. Outside ComfyUI they
go to `$PIXART_ATELIER_OUTPUT` (else `./output`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from . import host
from .types import CATEGORY, check_image

OUTPUT_ENV = "PIXART_ATELIER_OUTPUT"


def output_dir() -> Path:
    if host.in_comfyui():
        return Path(host.comfy_module("folder_paths").get_output_directory())
    return Path(os.environ.get(OUTPUT_ENV) or "output").resolve()


def save_paths(prefix: str, width: int, height: int, numbered: str = r"_(\d+)_\.png$") -> tuple[Path, str, int, str]:
    """(folder, file stem, first counter, sub-folder) for `prefix`, refusing a prefix that leaves the output;
    outside ComfyUI the counter follows the files named `<stem>` + `numbered` (a regex with the number's group)."""
    output = output_dir()
    if host.in_comfyui():
        folder, stem, counter, subfolder, _ = host.comfy_module("folder_paths").get_save_image_path(
            prefix, str(output), width, height)
        return Path(folder), stem, counter, subfolder
    subfolder, stem = os.path.split(os.path.normpath(prefix))
    folder = (output / subfolder).resolve()
    if os.path.commonpath((output, folder)) != str(output):
        raise ValueError(f"filename_prefix '{prefix}' points outside the output folder {output}; use a relative name")
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(stem) + numbered)
    numbers = [int(m.group(1)) for name in os.listdir(folder) if (m := pattern.match(name))]
    return folder, stem, max(numbers, default=0) + 1, subfolder


def workflow_metadata(prompt, extra_pnginfo) -> dict[str, str] | None:
    """PNG text chunks as core Save Image writes them: "prompt" and each extra_pnginfo key (e.g. "workflow"),
    JSON-encoded; None when ComfyUI runs with --disable-metadata."""
    if host.in_comfyui() and getattr(host.comfy_module("comfy.cli_args").args, "disable_metadata", False):
        return None
    text = {} if prompt is None else {"prompt": json.dumps(prompt)}
    text.update({key: json.dumps(value) for key, value in (extra_pnginfo or {}).items()})
    return text


class AtelierSaveRGBA:
    """Save RGBA images (straight alpha) as PNG files in the output folder, with the workflow embedded."""

    DESCRIPTION = ("Saves RGBA images [B, H, W, 4] (from PixArt Transparent Decode, or core Join Image with Alpha) "
                   "as 8-bit PNG files with straight (not premultiplied) alpha in ComfyUI's output folder, named "
                   "and tagged with the prompt and workflow like core Save Image. A 3-channel image is saved "
                   "opaque. Image editors open the files with their transparency.")
    CATEGORY = f"{CATEGORY}/image"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    RETURN_NAMES = ()
    OUTPUT_TOOLTIPS = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "rgba": ("IMAGE", {"tooltip": "RGBA images [B, H, W, 4] in 0..1 with straight alpha (channel 3 = "
                                              "opacity); RGB images are saved opaque."}),
                "filename_prefix": ("STRING", {"default": "PixArt-RGBA", "tooltip": "File name prefix; may hold a "
                                    "sub-folder and core's %date:yyyy-MM-dd% / %width% variables."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save(self, rgba, filename_prefix="PixArt-RGBA", prompt=None, extra_pnginfo=None):
        from ..pixart_core.rgba.rgba_io import save_rgba_png

        check_image(rgba, "rgba")
        if rgba.shape[-1] not in (3, 4):
            raise ValueError(f"rgba: expected 3 or 4 channels, got {rgba.shape[-1]}; connect an RGBA IMAGE")
        images = rgba.detach().float().cpu()  # [B, H, W, C]
        if images.shape[-1] == 3:
            images = torch.cat([images, torch.ones_like(images[..., :1])], dim=-1)  # [B, H, W, 4] opaque
        folder, stem, counter, subfolder = save_paths(filename_prefix, rgba.shape[2], rgba.shape[1])
        text = workflow_metadata(prompt, extra_pnginfo)
        results = []
        for index, image in enumerate(images):
            name = f"{stem.replace('%batch_num%', str(index))}_{counter:05}_.png"
            save_rgba_png(folder / name, image, text)  # 8 bits as core Save Image: clip(255 * x) truncated
            results.append({"filename": name, "subfolder": subfolder, "type": "output"})
            counter += 1
        return {"ui": {"images": results}}
