"""The node layer's only door into ComfyUI: model folders, devices, dtypes, model management, progress, interruption.

Inside ComfyUI every function defers to the host (`folder_paths`, `comfy.model_management`, `comfy.utils`,
`latent_preview`). Outside it (tests, scripts) each falls back to plain behaviour: model folders under
`$PIXART_ATELIER_MODELS/<kind>`, cuda-else-cpu, a tqdm bar, never interrupted, no previews.

ComfyUI modules are never imported at this module's top: the host is detected from `sys.modules`
(ComfyUI imports `folder_paths` and `comfy.model_management` before it loads any custom node), so importing
this file never initialises ComfyUI's device state by accident. Other node modules that need a ComfyUI object
(e.g. `comfy.sd.VAE` in core_vae.py) get its module through `comfy_module`.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from ..pixart_core.checkpoint_io import WEIGHT_SUFFIXES
from ..pixart_core.dtypes import default_dtype as _hardware_default_dtype
from ..pixart_core.vae.config import LATENT_SPACES

MODELS_ENV = "PIXART_ATELIER_MODELS"
# Folder names under $PIXART_ATELIER_MODELS for each kind (ComfyUI's own defaults, legacy names included).
FALLBACK_FOLDERS = {"diffusion_models": ("diffusion_models", "unet"), "text_encoders": ("text_encoders", "clip")}
# managed(kind=...) -> (load device, offload device) functions of comfy.model_management.
DEVICE_FUNCTIONS = {
    "diffusion": ("get_torch_device", "unet_offload_device"),
    "text_encoder": ("text_encoder_device", "text_encoder_offload_device"),
    "vae": ("vae_device", "vae_offload_device"),
}
# Model folders listed as one name, per kind: words that config.json's model_type/_class_name/architectures contain.
FOLDER_MODELS = {
    "text_encoders": ("t5",),
    "vae": ("autoencoderkl",),
    "diffusion_models": ("transformer2dmodel",),
    "checkpoints": ("transformer2dmodel",),
    "controlnet": ("pixartcontrolnet",),
}


def in_comfyui() -> bool:
    """True when running inside a ComfyUI process."""
    return "folder_paths" in sys.modules and "comfy.model_management" in sys.modules


def comfy_module(module_name: str) -> Any:
    """A ComfyUI module such as "comfy.sd" (only call when `in_comfyui()`)."""
    return importlib.import_module(module_name)


# ---------------------------------------------------------------------------------------------- model files


def model_folders(kind: str) -> list[Path]:
    """Folders searched for models of `kind` ("diffusion_models", "checkpoints", "text_encoders", "vae", ...)."""
    if in_comfyui():
        try:
            return [Path(p) for p in comfy_module("folder_paths").get_folder_paths(kind)]
        except KeyError:  # a kind ComfyUI does not know
            return []
    base = os.environ.get(MODELS_ENV)
    return [Path(base) / name for name in FALLBACK_FOLDERS.get(kind, (kind,))] if base else []


def register_model_folder(kind: str, extensions: tuple[str, ...]) -> None:
    """Make `kind` (e.g. "annotators") a model folder kind of ComfyUI, `models/<kind>`, merged with what is
    registered already (extra_model_paths.yaml, other packs): their folders stay, ours is added, and listed
    extensions gain `extensions`. Outside ComfyUI the kind is `$PIXART_ATELIER_MODELS/<kind>` with no call."""
    if not in_comfyui():
        return
    folder_paths = comfy_module("folder_paths")
    known = kind in folder_paths.folder_names_and_paths
    folder_paths.add_model_folder_path(kind, os.path.join(folder_paths.models_dir, kind))
    paths, listed = folder_paths.folder_names_and_paths[kind]
    if not known or listed:  # an empty set lists every file: keep it that way
        folder_paths.folder_names_and_paths[kind] = (paths, set(listed) | set(extensions))


def _is_model_folder(folder: Path, words: tuple[str, ...]) -> bool:
    """A Hugging Face / diffusers model folder: config.json whose model_type, _class_name or architectures
    contain one of `words`, next to weight files."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        has_weights = any(p.name.endswith(WEIGHT_SUFFIXES) for p in folder.iterdir())
    except (OSError, ValueError, AttributeError):
        return False
    names = [config.get("model_type"), config.get("_class_name"), *(config.get("architectures") or [])]
    return has_weights and any(word in str(name).lower() for name in names for word in words)


def _scan(folders: list[Path], words: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(weight files, model folders) under `folders`, relative to their base folder as folder_paths names them."""
    files, model_dirs = [], []
    for base in folders:
        seen: set[str] = set()  # real paths visited: a symlink loop or a second link to a folder is walked once
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:
                dirnames.clear()
                continue
            seen.add(real)
            if words and dirpath != str(base) and _is_model_folder(Path(dirpath), words):
                model_dirs.append(os.path.relpath(dirpath, base))
                dirnames.clear()  # its files are not separate models
                continue
            files += [os.path.relpath(os.path.join(dirpath, f), base) for f in filenames if f.endswith(WEIGHT_SUFFIXES)]
    return files, model_dirs


def list_models(kind: str) -> list[str]:
    """Model names for a dropdown: weight files, plus model folders (HF T5, diffusers VAE / PixArt transformer)
    listed by name with their inner files hidden."""
    folders, words = model_folders(kind), FOLDER_MODELS.get(kind, ())
    if in_comfyui() and folders:  # the host's cached listing, with its extensions and filters
        model_dirs = _scan(folders, words)[1] if words else []
        inside = tuple(folder + os.sep for folder in model_dirs)
        files = [f for f in comfy_module("folder_paths").get_filename_list(kind) if not f.startswith(inside)]
    else:
        files, model_dirs = _scan(folders, words)
    return sorted(set(files) | set(model_dirs))


def model_path(kind: str, name: str) -> Path:
    """Full path of the file or folder `name` listed by `list_models(kind)`; FileNotFoundError if absent."""
    relative = Path(os.path.normpath(name))
    if relative.is_absolute() or relative.parts[:1] == ("..",):
        raise FileNotFoundError(f"{kind} model name '{name}' must be a path inside the {kind} folders")
    folders = model_folders(kind)
    for folder in folders:
        if (folder / relative).exists():
            return folder / relative
    where = ", ".join(str(f) for f in folders) or f"nowhere (outside ComfyUI set {MODELS_ENV} to a models folder)"
    raise FileNotFoundError(f"{kind} model '{name}' not found; searched {where}")


def comfy_tokenizer_dir() -> Path | None:
    """ComfyUI's bundled T5 tokenizer folder (comfy/text_encoders/t5_tokenizer), or None outside ComfyUI."""
    if not in_comfyui():
        return None
    for root in getattr(sys.modules.get("comfy"), "__path__", []):
        folder = Path(root) / "text_encoders" / "t5_tokenizer"
        if (folder / "tokenizer.json").is_file():
            return folder
    return None


# --------------------------------------------------------------------------------------- devices and dtypes


def devices_for(kind: str) -> tuple[torch.device, torch.device]:
    """(load device, offload device) for a "diffusion", "text_encoder" or "vae" module."""
    if kind not in DEVICE_FUNCTIONS:
        raise ValueError(f"unknown module kind '{kind}'; expected one of {sorted(DEVICE_FUNCTIONS)}")
    if in_comfyui():
        mm = comfy_module("comfy.model_management")
        load_fn, offload_fn = DEVICE_FUNCTIONS[kind]
        return getattr(mm, load_fn)(), getattr(mm, offload_fn)()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu"), torch.device("cpu")


def compute_device() -> torch.device:
    return devices_for("diffusion")[0]


def text_encoder_device() -> torch.device:
    return devices_for("text_encoder")[0]


def memory_budget(device: torch.device) -> int | None:
    """Bytes a run may use on `device` inside ComfyUI: the device's total memory, since ComfyUI offloads its
    cached models on demand; None outside ComfyUI (then the free memory is the budget)."""
    if not in_comfyui():
        return None
    return int(comfy_module("comfy.model_management").get_total_memory(device))


def forced_dtype() -> torch.dtype | None:
    """The dtype ComfyUI's command line forces on diffusion models (--force-fp32, --fp32-unet, --bf16-unet,
    --fp16-unet, --force-fp16), or None."""
    if not in_comfyui():
        return None
    args = comfy_module("comfy.cli_args").args
    for flags, dtype in ((("force_fp32", "fp32_unet"), torch.float32), (("bf16_unet",), torch.bfloat16),
                         (("fp16_unet", "force_fp16"), torch.float16)):
        if any(getattr(args, flag, False) for flag in flags):
            return dtype
    return None


def default_dtype(device: torch.device) -> torch.dtype:
    """The dtype of a model loaded with dtype "auto": ComfyUI's forced dtype if any, else pixart_core's one rule
    (`pixart_core.dtypes.default_dtype`: bf16/fp16 on GPUs, bf16 on CPUs with native bf16, else fp32)."""
    return forced_dtype() or _hardware_default_dtype(device)


# ------------------------------------------------------------------------------------------ model management


class AtelierModule(torch.nn.Module):
    """The shell a ModelPatcher holds: it writes bookkeeping attributes (`device`, ...) on its model, not ours."""

    def __init__(self, inner: torch.nn.Module, kind: str):
        super().__init__()
        self.inner = inner
        self.kind = kind


class ManagedModule:
    """A pixart_core module with its devices and (inside ComfyUI) the ModelPatcher that places and offloads it."""

    def __init__(self, module: torch.nn.Module, kind: str, device: torch.device | None = None):
        self.module = module
        self.kind = kind
        self.load_device, self.offload_device = devices_for(kind)
        self.load_device = torch.device(device) if device is not None else self.load_device
        self.patcher = None
        if in_comfyui():
            patcher_class = comfy_module("comfy.model_patcher").ModelPatcher
            self.patcher = patcher_class(AtelierModule(module, kind), self.load_device, self.offload_device)


def managed(module: torch.nn.Module, *, kind: str, device: torch.device | None = None) -> ManagedModule:
    """Hand `module` to ComfyUI's model management (once per module; keep the handle with the module).

    `kind` ("diffusion", "text_encoder", "vae") picks ComfyUI's load/offload devices; `device` overrides the
    load device (e.g. the CPU for T5). Leave the module on its offload device (the CPU) until loaded.
    """
    return ManagedModule(module, kind, device)


def load_on_device(*handles: ManagedModule, memory_required: int = 0) -> Any:
    """Put the modules on their load device together; returns the module (or a tuple for several handles).

    Load every module a step needs in ONE call: ComfyUI may offload a resident module to make room for the
    next. `memory_required` (bytes) reserves room for activations. Plain torch modules cannot run split across
    devices (ComfyUI's low-VRAM streaming only works for comfy.ops layers), so loading is always full.
    """
    if in_comfyui():
        mm = comfy_module("comfy.model_management")
        mm.load_models_gpu([h.patcher for h in handles], memory_required=memory_required, force_full_load=True)
    else:
        for handle in handles:
            handle.module.to(handle.load_device)
    modules = tuple(handle.module for handle in handles)
    return modules[0] if len(modules) == 1 else modules


# ---------------------------------------------------------------------------------- progress and interruption


class Progress:
    """A progress bar: ComfyUI's ProgressBar (UI progress, previews) in the host; tqdm (or nothing) outside."""

    def __init__(self, total: int):
        self.total = total
        self._bar: Any = None
        if in_comfyui():
            self._bar = comfy_module("comfy.utils").ProgressBar(total)
        else:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=total, leave=False)

    def update(self, step: int, preview_image: Any = None) -> None:
        """Report `step` of `total` done (absolute); `preview_image` is a PIL image (shown only in the host).

        In the host this raises ComfyUI's InterruptProcessingException when the user pressed cancel.
        """
        if self._bar is None:
            return
        if in_comfyui():
            preview = None
            if preview_image is not None:
                preview = ("JPEG", preview_image, comfy_module("latent_preview").MAX_PREVIEW_RESOLUTION)
            self._bar.update_absolute(step, self.total, preview)
        else:
            self._bar.update(max(0, min(step, self.total) - self._bar.n))
            if step >= self.total:
                self._bar.close()


def progress(total: int) -> Progress:
    return Progress(total)


def preview_callback(latent_space: str) -> Callable[..., Any] | None:
    """A function `(step, total, x, denoised) -> PIL image` for `Progress.update`, or None when previews are off
    (outside ComfyUI, or ComfyUI's `--preview-method none`).

    `denoised` [B, 4, h, w] is in the scaled latent space the DiT works in; only sample 0 is shown.
    `latent_space` is a key of pixart_core's LATENT_SPACES: "sd15" (PixArt-α) or "sdxl" (PixArt-Σ).
    """
    if latent_space not in LATENT_SPACES:
        raise ValueError(f"unknown latent space '{latent_space}'; expected one of {sorted(LATENT_SPACES)}")
    if not in_comfyui():
        return None
    latent_format = getattr(comfy_module("comfy.latent_formats"), LATENT_SPACES[latent_space].comfy_latent_format)()
    previewer = comfy_module("latent_preview").get_previewer(compute_device(), latent_format)
    if previewer is None:
        return None

    def preview(step: int, total: int, x: torch.Tensor, denoised: torch.Tensor) -> Any:
        return previewer.decode_latent_to_preview(denoised[:1].float())  # PIL image of sample 0

    return preview


def check_interrupted() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user cancelled (and clear the flag); no-op outside."""
    if in_comfyui():
        comfy_module("comfy.model_management").throw_exception_if_processing_interrupted()


def should_stop() -> bool:
    """True while a cancel is pending, without raising or clearing it; always False outside ComfyUI."""
    return bool(in_comfyui() and comfy_module("comfy.model_management").processing_interrupted())
