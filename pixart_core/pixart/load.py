"""Load a PixArt transformer from any released layout without a second copy of the weights.

Accepted: official .pth ({'state_dict': ...}, read with weights_only) and .safetensors, a diffusers `transformer/`
folder (single or sharded), a diffusers pipeline root (its transformer/ subfolder), diffusers-key single files
and ComfyUI files (`model.diffusion_model.` prefix; a full checkpoint's VAE/T5 keys are skipped), and the
official ControlNet .pth (its base model). The module is built on the meta device, each tensor is read straight
into the target dtype and device (fused diffusers q/k/v concatenated along dim 0), then assigned.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..checkpoint_io import StateDictReader, read_json, weight_files
from ..errors import CheckpointError, format_keys
from .config import PRESETS, PixArtConfig
from .detect import Detection, detect

if TYPE_CHECKING:
    from .model import PixArtTransformer

log = logging.getLogger(__name__)

_SHARD_NAME = re.compile(r"-\d{5}-of-\d{5}\.")
_DIFFUSERS_STEM = "diffusion_pytorch_model"
# Fields a variant override never changes: they are read from the weights' shapes.
_STRUCTURE_FIELDS = ("hidden_size", "num_heads", "depth", "patch_size", "in_channels", "out_channels", "mlp_ratio",
                     "caption_channels", "qk_norm", "kv_compress_layers", "kv_compress_ratio", "has_null_caption")


@dataclass
class LocatedWeights:
    """Weight files of a transformer and the JSON files next to them that help detection."""

    name: str
    files: list[Path]
    diffusers_config: dict | None = None
    model_index: dict | None = None
    vae_config: dict | None = None


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object.")
    return data


def _pipeline_files(folder: Path) -> tuple[dict | None, dict | None]:
    """model_index.json and vae/config.json of the pipeline root `folder`, if it is one."""
    return _read_json(folder / "model_index.json"), _read_json(folder / "vae" / "config.json")


def locate_weights(path: Path | str) -> LocatedWeights:
    """Resolve a file, a diffusers transformer folder or a pipeline root to its weight files and JSON files."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: not found; give a .safetensors/.pth file or a diffusers model folder.")
    if path.is_file():
        folder, located = path.parent, LocatedWeights(str(path), [path])
        shard = _SHARD_NAME.search(path.name)
        if shard:  # one shard of a sharded model: load all of them
            located.files = weight_files(folder, (path.name[: shard.start()],))
        if path.name.startswith(_DIFFUSERS_STEM):
            located.diffusers_config = _read_json(folder / "config.json")
            if folder.name == "transformer":
                located.model_index, located.vae_config = _pipeline_files(folder.parent)
        return located
    located = LocatedWeights(str(path), [])
    folder = path
    if (path / "model_index.json").is_file():
        located.model_index, located.vae_config = _pipeline_files(path)
        folder = path / "transformer"
        if not folder.is_dir():
            contents = ", ".join(sorted(p.name for p in path.iterdir())[:10])
            raise CheckpointError(f"{path}: a diffusers pipeline folder without a transformer/ subfolder "
                                  f"(it holds: {contents}); download the transformer too.")
    elif path.name == "transformer":
        located.model_index, located.vae_config = _pipeline_files(path.parent)
    located.diffusers_config = _read_json(folder / "config.json")
    located.files = _folder_weights(folder)
    return located


def _folder_weights(folder: Path) -> list[Path]:
    """The weight files of one model in `folder`: its shard index, else its single file.

    A folder holding several unrelated files (e.g. fp32 and `.fp16` variants, or a models/ folder) must
    not be merged: the plain `diffusion_pytorch_model.*` wins, otherwise the caller must name a file."""
    stems = (_DIFFUSERS_STEM,) if any(p.name.startswith(_DIFFUSERS_STEM) for p in folder.iterdir()) else ()
    files = weight_files(folder, stems)
    if len(files) == 1 or any(folder.glob("*.index.json")):
        return files
    plain = [f for f in files if f.stem == _DIFFUSERS_STEM]
    if len(plain) == 1:
        return plain
    raise CheckpointError(f"{folder}: holds several weight files ({', '.join(f.name for f in files[:6])}) and "
                          "no shard index; pass the file to load.")



def apply_variant(detection: Detection, variant: str) -> Detection:
    """Use the PRESETS `variant` for what the weights cannot tell (family, resolution, PE, token count).

    Structure (width, depth, heads, channels) always comes from the weights; the preset must agree with
    everything the weights do tell, or CheckpointError explains the mismatch."""
    if variant not in PRESETS:
        raise CheckpointError(f"{detection.source}: unknown PixArt variant {variant!r}; "
                              f"choose one of {', '.join(PRESETS)}.")
    preset, found = PRESETS[variant], detection.config
    problems = []
    if preset.micro_condition != found.micro_condition:
        have, need = ("has", "has none") if found.micro_condition else ("has no", "needs them")
        problems.append(f"the file {have} size/aspect-ratio embedders, {variant} {need}")
    if found.has_null_caption and found.model_max_length != preset.model_max_length:
        problems.append(f"its null caption has {found.model_max_length} tokens, "
                        f"{variant} uses {preset.model_max_length}")
    full_width = found.hidden_size == preset.hidden_size
    if found.depth != preset.depth and (full_width or 42 in (found.depth, preset.depth)):
        problems.append(f"it has {found.depth} blocks, {variant} has {preset.depth}")
    if full_width:
        for name in ("caption_channels", "in_channels", "out_channels", "patch_size"):
            if getattr(found, name) != getattr(preset, name):
                problems.append(f"{name} is {getattr(found, name)}, {variant} has {getattr(preset, name)}")
    if problems:
        raise CheckpointError(f"{detection.source}: the weights do not fit variant {variant!r}: "
                              f"{'; '.join(problems)}. Detected: {detection.summary()}.")
    config = preset.with_(**{name: getattr(found, name) for name in _STRUCTURE_FIELDS})
    changed = [f"{n} {getattr(found, n)} -> {getattr(config, n)}" for n in ("family", "sample_size",
               "pe_interpolation", "model_max_length") if getattr(found, n) != getattr(config, n)]
    note = f"variant {variant!r} chosen by the caller" + (f" ({', '.join(changed)})" if changed else "")
    if changed:
        log.warning("%s: %s", detection.source, note)
    return replace(detection, config=config, evidence=[*detection.evidence, note])


def _with_config(detection: Detection, config: PixArtConfig) -> Detection:
    """Use an explicit config; a stored null caption the config does not want is skipped."""
    sources, ignored = dict(detection.sources), list(detection.ignored)
    if not config.has_null_caption and "y_embedder.y_embedding" in sources:
        ignored += sources.pop("y_embedder.y_embedding")
    return replace(detection, config=config, sources=sources, ignored=ignored,
                   evidence=[*detection.evidence, "config given by the caller"])


def _check_keys(detection: Detection, reader: StateDictReader, expected: dict[str, torch.Tensor]) -> None:
    """CheckpointError naming the file and the first offending keys, before any tensor is read."""
    sources = detection.sources
    missing, unexpected = expected.keys() - sources.keys(), sources.keys() - expected.keys()
    mismatched = []
    for key in expected.keys() & sources.keys():
        parts = [reader.info(p).shape for p in sources[key]]
        shape = (sum(s[0] for s in parts), *parts[0][1:]) if len(parts) > 1 else parts[0]
        if tuple(shape) != tuple(expected[key].shape):
            mismatched.append(f"{key!r} file {tuple(shape)} vs model {tuple(expected[key].shape)}")
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if missing:
        problems.append(f"missing {format_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected {format_keys(unexpected)}")
    if mismatched:
        problems.append(f"wrong shapes {'; '.join(mismatched[:4])}" + (" ..." if len(mismatched) > 4 else ""))
    raise CheckpointError(
        f"{detection.source}: the weights do not match a {detection.config.variant} PixArt model "
        f"({detection.layout} layout, prefix '{detection.prefix}'): {'; '.join(problems)}. "
        f"Detected: {detection.summary()}. The file is damaged, or pass variant=/config= that fits it.")


def _read_state_dict(detection: Detection, reader: StateDictReader, expected: dict[str, torch.Tensor],
                     device: torch.device) -> dict[str, torch.Tensor]:
    """Each model tensor allocated in its target dtype on `device` and filled in place from the file.

    Fused diffusers pieces (q/k/v) are read straight into row slices of the fused tensor: no per-piece
    temporaries, whose frees between kept tensors fragmented the heap (+28% peak RSS with `torch.cat`)."""
    state: dict[str, torch.Tensor] = {}
    for key, target in expected.items():
        fused = torch.empty(target.shape, dtype=target.dtype, device=device)  # [sum of piece rows, ...]
        row = 0
        for part in detection.sources[key]:
            rows = reader.info(part).shape[0] if fused.dim() else 1
            reader.read_into(part, fused[row:row + rows] if fused.dim() else fused)  # [rows, ...]
            row += rows
        state[key] = fused
    return state


def _check_materialised(model: torch.nn.Module) -> None:
    """Every tensor must have come from the file (the model has no non-persistent buffers to rebuild)."""
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"PixArt model tensors {format_keys(leftover)} were not loaded; "
                           "non-persistent buffers need re-materialising in load.py")


def build_from_detection(detection: Detection, reader: StateDictReader, dtype: torch.dtype,
                         device: torch.device | str) -> "PixArtTransformer":
    """Meta-device model for `detection.config`, filled from `reader` (strict, assign=True)."""
    from .model import PixArtTransformer  # noqa: F811 (runtime import; the module is heavy)

    device = torch.device(device)
    model = PixArtTransformer(detection.config, dtype=dtype, device="meta")
    expected = model.state_dict()
    _check_keys(detection, reader, expected)
    state = _read_state_dict(detection, reader, expected, device)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"{detection.source}: loading the weights failed: {err}") from err
    del state
    _check_materialised(model)
    return model.to(device).eval()


def inspect_transformer(path: Path | str) -> Detection:
    """Detect the variant and layout of `path` without loading any tensor (for UIs and `--info`)."""
    located = locate_weights(path)
    with StateDictReader(located.files) as reader:
        return detect(reader, name=located.name, diffusers_config=located.diffusers_config,
                      model_index=located.model_index, vae_config=located.vae_config)


def load_transformer(path: Path | str, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                     variant: str | None = None, config: PixArtConfig | None = None) -> "PixArtTransformer":
    """Load a PixArt transformer from `path` (any layout above), detecting its variant from the weights.

    `variant` (a PRESETS name) overrides what the weights cannot tell and is validated against them; `config`
    replaces detection altogether. The result has `.detection` (a `Detection`) attached.
    """
    located = locate_weights(path)
    with StateDictReader(located.files) as reader:
        detection = detect(reader, name=located.name, diffusers_config=located.diffusers_config,
                           model_index=located.model_index, vae_config=located.vae_config)
        if config is not None:
            detection = _with_config(detection, config)
        elif variant is not None:
            detection = apply_variant(detection, variant)
        model = build_from_detection(detection, reader, dtype, device)
    model.detection = detection
    log.info("%s: %s", located.name, detection.summary())
    log.debug("%s: evidence: %s; ignored %d keys", located.name, "; ".join(detection.evidence),
              len(detection.ignored))
    return model
