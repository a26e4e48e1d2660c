"""The node layer's only door into ComfyUI: model folders, devices, model management, progress, interruption.

Inside ComfyUI every function defers to the host (`folder_paths`, `comfy.model_management`, `comfy.utils`,
`latent_preview`). Outside it (tests, scripts) each falls back to plain behaviour: model folders under
`$PIXART_ATELIER_MODELS/<kind>`, cuda-else-cpu, a tqdm bar, never interrupted, no previews.

ComfyUI modules are never imported at this module's top: the host is detected from `sys.modules`
(ComfyUI imports `folder_paths` and `comfy.model_management` before it loads any custom node), so importing
this file never initialises ComfyUI's device state by accident. pixart_core is imported only by `load_vae`.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

MODELS_ENV = "PIXART_ATELIER_MODELS"
WEIGHT_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
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
}
LATENT_FORMATS = {"sd15": "SD15", "sdxl": "SDXL"}  # our latent-space names -> comfy.latent_formats classes


def in_comfyui() -> bool:
    """True when running inside a ComfyUI process."""
    return "folder_paths" in sys.modules and "comfy.model_management" in sys.modules


def _host(module_name: str) -> Any:
    """A ComfyUI module (only call when `in_comfyui()`)."""
    return importlib.import_module(module_name)


# ---------------------------------------------------------------------------------------------- model files


def model_folders(kind: str) -> list[Path]:
    """Folders searched for models of `kind` ("diffusion_models", "checkpoints", "text_encoders", "vae", ...)."""
    if in_comfyui():
        try:
            return [Path(p) for p in _host("folder_paths").get_folder_paths(kind)]
        except KeyError:  # a kind ComfyUI does not know
            return []
    base = os.environ.get(MODELS_ENV)
    return [Path(base) / name for name in FALLBACK_FOLDERS.get(kind, (kind,))] if base else []


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
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
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
        files = [f for f in _host("folder_paths").get_filename_list(kind) if not f.startswith(inside)]
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
        mm = _host("comfy.model_management")
        load_fn, offload_fn = DEVICE_FUNCTIONS[kind]
        return getattr(mm, load_fn)(), getattr(mm, offload_fn)()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu"), torch.device("cpu")


def compute_device() -> torch.device:
    return devices_for("diffusion")[0]


def offload_device() -> torch.device:
    return devices_for("diffusion")[1]


def text_encoder_device() -> torch.device:
    return devices_for("text_encoder")[0]


def preferred_dtype(
    device: torch.device, allowed: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)
) -> torch.dtype:
    """First dtype of `allowed` that `device` runs well (ComfyUI's should_use_fp16/bf16 in the host); else fp32."""
    for dtype in allowed:
        if dtype == torch.float32:
            return dtype
        if in_comfyui():
            mm = _host("comfy.model_management")
            if (mm.should_use_fp16 if dtype == torch.float16 else mm.should_use_bf16)(device):
                return dtype
        elif device.type == "cuda" and (dtype == torch.float16 or torch.cuda.is_bf16_supported()):
            return dtype
    return torch.float32


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
            patcher_class = _host("comfy.model_patcher").ModelPatcher
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
        mm = _host("comfy.model_management")
        mm.load_models_gpu([h.patcher for h in handles], memory_required=memory_required, force_full_load=True)
    else:
        for handle in handles:
            handle.module.to(handle.load_device)
    modules = tuple(handle.module for handle in handles)
    return modules[0] if len(modules) == 1 else modules


# ------------------------------------------------------------------------------------------------------- VAE


class PlainVAE:
    """pixart_core's AutoencoderKL behind comfy.sd.VAE's encode/decode contract (used outside ComfyUI)."""

    def __init__(self, model: torch.nn.Module):
        self.handle = managed(model, kind="vae")

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images [B, H, W, C] in 0..1 (centre-cropped to multiples of 8) -> unscaled latents [B, 4, H/8, W/8]."""
        model = load_on_device(self.handle)
        top, left = pixels.shape[1] % 8 // 2, pixels.shape[2] % 8 // 2
        pixels = pixels[:, top:top + pixels.shape[1] // 8 * 8, left:left + pixels.shape[2] // 8 * 8, :3]  # [B, H, W, 3]
        images = pixels.movedim(-1, 1).to(model.device) * 2.0 - 1.0  # [B, 3, H, W] in -1..1
        return model.encode(images).float().cpu()  # [B, 4, H/8, W/8]

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Unscaled latents [B, 4, h, w] -> images [B, 8h, 8w, 3] in 0..1."""
        model = load_on_device(self.handle)
        images = model.decode(latent.to(model.device))  # [B, 3, H, W] in about -1..1
        return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1).cpu()  # [B, H, W, 3]


def load_vae(path: Path) -> Any:
    """Load an SD-1.x/SDXL VAE file or diffusers folder (anything pixart_core.vae.load_vae reads).

    In ComfyUI: a real comfy.sd.VAE (core VAE nodes accept it), built from the weights as pixart_core read
    them. Outside: a PlainVAE. Both: encode(images [B, H, W, C] 0..1) -> unscaled latents, decode(latents)
    -> images [B, H, W, 3] 0..1.
    """
    from ..pixart_core.vae import load_vae as read_vae
    from ..pixart_core.vae.convert import to_ldm_state_dict

    model = read_vae(path)  # float32, CPU
    if not in_comfyui():
        return PlainVAE(model)
    cfg, widths = model.config, list(model.config.block_out_channels)
    if cfg.norm_num_groups != 32 or any(w % widths[0] for w in widths) or not cfg.use_quant_conv:
        raise ValueError(f"{path}: ComfyUI's VAE cannot hold this layout (widths {widths}, "
                         f"{cfg.norm_num_groups} norm groups, quant_conv {cfg.use_quant_conv})")
    ddconfig = {"double_z": True, "z_channels": cfg.latent_channels, "resolution": 256, "in_channels": cfg.in_channels,
                "out_ch": cfg.out_channels, "ch": widths[0], "ch_mult": [w // widths[0] for w in widths],
                "num_res_blocks": cfg.layers_per_block, "attn_resolutions": [], "dropout": 0.0}
    state = to_ldm_state_dict(model.state_dict(), len(widths))
    del model
    vae = _host("comfy.sd").VAE(sd=state, config={"params": {"embed_dim": cfg.latent_channels, "ddconfig": ddconfig}})
    missing = sorted(set(vae.first_stage_model.state_dict()) - set(state))
    if missing:
        raise ValueError(f"{path}: ComfyUI's VAE has weights the file lacks: {missing[:5]}")
    return vae


# ---------------------------------------------------------------------------------- progress and interruption


class Progress:
    """A progress bar: ComfyUI's ProgressBar (UI progress, previews) in the host; tqdm (or nothing) outside."""

    def __init__(self, total: int):
        self.total = total
        self._bar: Any = None
        if in_comfyui():
            self._bar = _host("comfy.utils").ProgressBar(total)
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
                preview = ("JPEG", preview_image, _host("latent_preview").MAX_PREVIEW_RESOLUTION)
            self._bar.update_absolute(step, self.total, preview)
        else:
            self._bar.update(max(0, min(step, self.total) - self._bar.n))
            if step >= self.total:
                self._bar.close()


def progress(total: int) -> Progress:
    return Progress(total)


def preview_callback(latent_space: str, total_steps: int | None = None) -> Callable[..., Any] | None:
    """A function `(step, total, x, denoised) -> PIL image` for `Progress.update`, or None when previews are off
    (outside ComfyUI, or ComfyUI's `--preview-method none`).

    `denoised` [B, 4, h, w] is in the scaled latent space the DiT works in; only sample 0 is shown.
    `latent_space` is "sd15" (PixArt-α, SD-1.x VAE) or "sdxl" (PixArt-Σ, SDXL VAE); `total_steps` is unused.
    """
    if latent_space not in LATENT_FORMATS:
        raise ValueError(f"unknown latent space '{latent_space}'; expected one of {sorted(LATENT_FORMATS)}")
    if not in_comfyui():
        return None
    latent_format = getattr(_host("comfy.latent_formats"), LATENT_FORMATS[latent_space])()
    previewer = _host("latent_preview").get_previewer(compute_device(), latent_format)
    if previewer is None:
        return None

    def preview(step: int, total: int, x: torch.Tensor, denoised: torch.Tensor) -> Any:
        return previewer.decode_latent_to_preview(denoised[:1].float())  # PIL image of sample 0

    return preview


def check_interrupted() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user cancelled (and clear the flag); no-op outside."""
    if in_comfyui():
        _host("comfy.model_management").throw_exception_if_processing_interrupted()


def should_stop() -> bool:
    """True while a cancel is pending, without raising or clearing it; always False outside ComfyUI."""
    return bool(in_comfyui() and _host("comfy.model_management").processing_interrupted())
