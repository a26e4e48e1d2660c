"""Detect a PixArt transformer's variant and key layout from tensor names and shapes (the layouts of
PixArt-alpha/PixArt-sigma `.pth` releases and diffusers `PixArtTransformer2DModel`).

Layouts: "official" (`t_block.1.weight`, `blocks.N.*`), "diffusers" (`adaln_single.*`, `transformer_blocks.N.*`)
and "controlnet-official" (`base_model.*` + `controlnet.*`, of which only the base is used). Any key prefix
(`model.`, `module.`, `net.`, `transformer.`, `model.diffusion_model.` ...) is accepted; keys outside the
prefix (VAE, T5 in a full ComfyUI checkpoint) are ignored. Every guess is recorded in `Detection.evidence`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint_io import StateDictReader
from ..errors import CheckpointError, format_keys
from ..vae.config import LATENT_SPACES
from .config import FAMILIES, PixArtConfig, pe_interpolation_for
from .convert import diffusers_key_sources

Shapes = Mapping[str, tuple[int, ...]]

_OFFICIAL_ANCHOR = "t_block.1.weight"
_DIFFUSERS_ANCHOR = "adaln_single.linear.weight"
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_SIZE_NAMES = {32: "256", 64: "512", 128: "1024", 256: "2K"}
_SIZE_IN_NAME = re.compile(r"(?<![0-9])(256|512|1024|2048)(?![0-9])|(?<![0-9a-z])(2k)(?![0-9a-z])")
_SIZE_FROM_NAME = {"256": 32, "512": 64, "1024": 128, "2048": 256, "2k": 256}
_RELEASED_HEAD_DIM = 72  # XL/2: 1152 = 16 x 72

# (substring of some key, what the file looks like); first match wins. Used only for error messages.
_LOOKALIKES: tuple[tuple[str, str], ...] = (
    ("lora_", "a LoRA; apply it to a loaded model instead"),
    ("controlnet_blocks.", "a PixArt ControlNet (diffusers layout) without its base model; load it with the "
                           "ControlNet loader (load_controlnet) and the base PixArt transformer separately"),
    ("copied_block.", "a PixArt ControlNet branch without its base model; load it with the ControlNet loader "
                      "(load_controlnet) and the base PixArt transformer separately"),
    ("mlp.inverted_conv.", "a Sana transformer, not PixArt"),
    ("SelfAttention.q.weight", "a T5 text encoder; load it with the T5 loader"),
    ("input_blocks.", "a Stable Diffusion UNet checkpoint, not PixArt"),
    ("double_blocks.", "a FLUX transformer, not PixArt"),
    ("joint_blocks.", "a Stable Diffusion 3 transformer, not PixArt"),
    ("decoder.up_blocks.", "a VAE (diffusers layout); load it with the VAE loader"),
    ("decoder.up.", "a VAE (original SD layout); load it with the VAE loader"),
    ("down_blocks.", "a Stable Diffusion UNet (diffusers layout), not PixArt"),
    ("shared.weight", "a T5 text encoder; load it with the T5 loader"),
)


@dataclass
class Detection:
    """What a checkpoint holds: the model config, its key layout and the evidence behind each choice.

    `sources` maps each official (model) key to the file keys concatenated along dim 0 to make it;
    `ignored` lists file keys that are not loaded (stored pos_embed, ControlNet branch, VAE/T5 keys).
    """

    config: PixArtConfig
    layout: str
    prefix: str
    evidence: list[str]
    source: str = ""
    sources: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    ignored: list[str] = field(default_factory=list, repr=False)
    weights: str = ""  # which wrapped weights a training checkpoint gave, e.g. "EMA weights (state_dict_ema)"

    def summary(self) -> str:
        """One line, e.g. 'PixArt-Σ 1024 (depth 28, 300 tokens, PE x2, no micro-conditions; diffusers layout)'."""
        cfg = self.config
        size = _SIZE_NAMES.get(cfg.sample_size, f"{cfg.resolution}px")
        name = f"{FAMILIES[cfg.family].display_name} {size}{'-MS' if cfg.micro_condition else ''}"
        parts = [f"depth {cfg.depth}"]
        if cfg.hidden_size != 1152:
            parts.append(f"width {cfg.hidden_size}x{cfg.num_heads} heads")
        parts += [f"{cfg.model_max_length} tokens", f"PE x{cfg.pe_interpolation:g}",
                  "micro-conditions" if cfg.micro_condition else "no micro-conditions"]
        if cfg.qk_norm:
            parts.append("qk-norm")
        if cfg.kv_compress_layers:
            parts.append(f"KV compress x{cfg.kv_compress_ratio} in {len(cfg.kv_compress_layers)} blocks")
        layout = {"controlnet-official": "ControlNet official layout, base model only"}.get(
            self.layout, f"{self.layout} layout")
        if self.prefix and self.layout != "controlnet-official":
            layout += f", prefix '{self.prefix}'"
        if self.weights:
            layout += f"; {self.weights}"
        return f"{name} ({', '.join(parts)}; {layout})"



def describe_non_pixart(keys, class_name: str | None = None) -> str:
    """A hint naming what a non-PixArt file looks like ('' if unknown)."""
    if class_name:
        if "AutoencoderKL" in class_name:
            return "a VAE (diffusers AutoencoderKL); load it with the VAE loader"
        if "T5" in class_name:
            return "a T5 text encoder; load it with the T5 loader"
    for needle, text in _LOOKALIKES:
        if any(needle in k for k in keys):
            return text
    return ""


def _not_pixart(name: str, keys, class_name: str | None = None) -> CheckpointError:
    hint = describe_non_pixart(keys, class_name)
    what = f"it looks like {hint}" if hint else (
        f"it has neither '{_OFFICIAL_ANCHOR}' (official) nor '{_DIFFUSERS_ANCHOR}' (diffusers); its keys are "
        f"{format_keys(keys) or 'none'}")
    return CheckpointError(f"{name}: not a PixArt transformer checkpoint; {what}.")


def _find_prefix(name: str, shapes: Shapes) -> tuple[str, str]:
    """(layout, prefix) from the anchor key; the shortest prefix wins if several match."""
    found: list[tuple[str, str]] = []
    for key in shapes:
        for layout, anchor in (("official", _OFFICIAL_ANCHOR), ("diffusers", _DIFFUSERS_ANCHOR)):
            if key.endswith(anchor):
                prefix = key[: -len(anchor)]
                if prefix == "" or prefix.endswith("."):
                    found.append((layout, prefix))
    if not found:
        raise _not_pixart(name, shapes.keys())
    found.sort(key=lambda item: (len(item[1]), item[0]))
    layout, prefix = found[0]
    if layout == "official" and prefix.endswith("base_model."):
        outer = prefix[: -len("base_model.")]
        if any(k.startswith(outer + "controlnet.") for k in shapes):
            layout = "controlnet-official"
    return layout, prefix


def _official_sources(name: str, layout: str, rel: Shapes) -> tuple[dict[str, tuple[str, ...]], dict]:
    """({official key: relative file keys}, {official key: shape}) for the prefix-stripped keys."""
    if layout == "diffusers":
        try:
            sources = diffusers_key_sources(rel.keys())
        except ValueError as err:
            raise CheckpointError(f"{name}: diffusers-layout PixArt weights with bad keys: {err}.") from err
        shapes = {}
        for key, parts in sources.items():
            first = rel[parts[0]]
            shapes[key] = (sum(rel[p][0] for p in parts), *first[1:]) if len(parts) > 1 else first
        return sources, shapes
    sources = {k: (k,) for k in rel if k != "pos_embed"}
    return sources, {k: rel[k] for k in sources}


def _heads(hidden: int, diffusers_config: dict | None, evidence: list[str]) -> int:
    if diffusers_config and "num_attention_heads" in diffusers_config:
        heads = int(diffusers_config["num_attention_heads"])
        head_dim = diffusers_config.get("attention_head_dim")
        if head_dim is not None and heads * int(head_dim) != hidden:
            evidence.append(f"config.json heads {heads} x {head_dim} != width {hidden}; trusting the weights")
        else:
            evidence.append(f"{heads} heads from config.json")
            return heads
    if hidden % _RELEASED_HEAD_DIM == 0:
        evidence.append(f"{hidden // _RELEASED_HEAD_DIM} heads: head size 72 as in every released XL/2 model")
        return hidden // _RELEASED_HEAD_DIM
    evidence.append(f"1 head: width {hidden} fits no known head size")
    return 1


def _name_hint(name: str) -> str:
    """The lower-cased file (or model folder) name, the only part of a path that describes the model."""
    path = Path(name)
    parts = [path.name]
    if path.name.startswith("diffusion_pytorch_model") or path.name == "transformer":
        parts.append(path.parent.name)
        if path.parent.name == "transformer":
            parts.append(path.parent.parent.name)
    return " ".join(parts).lower()


def _family(shapes: Shapes, micro: bool, model_index: dict | None, vae_config: dict | None,
            name: str, evidence: list[str]) -> str:
    null_rows = shapes.get("y_embedder.y_embedding", (0,))[0]
    if micro:
        evidence.append("family alpha: size/aspect-ratio embedders exist only in α-1024-MS and its derivatives")
        return "alpha"
    by_length = {facts.max_length: family for family, facts in FAMILIES.items()}
    if null_rows in by_length:
        family = by_length[null_rows]
        evidence.append(f"family {family}: null caption y_embedding has {null_rows} rows")
        return family
    pipeline = (model_index or {}).get("_class_name", "")
    if "Alpha" in pipeline or "Sigma" in pipeline:
        family = "alpha" if "Alpha" in pipeline else "sigma"
        evidence.append(f"family {family}: model_index.json names {pipeline}")
        return family
    scale = (vae_config or {}).get("scaling_factor")
    by_scale = {LATENT_SPACES[facts.latent_space].scaling_factor: family for family, facts in FAMILIES.items()}
    if scale in by_scale:
        family = by_scale[scale]
        evidence.append(f"family {family}: the pipeline's VAE scaling_factor is {scale}")
        return family
    hint = _name_hint(name)
    if ("alpha" in hint) != ("sigma" in hint):
        family = "alpha" if "alpha" in hint else "sigma"
        evidence.append(f"family {family}: from the file name (the weights cannot tell)")
        return family
    evidence.append("family sigma: GUESS (no micro-conditions, no null caption, no model_index.json); "
                    "pass variant='alpha-512' (or another preset) if this is PixArt-α")
    return "sigma"


def _sample_size(rel: Shapes, patch: int, micro: bool, diffusers_config: dict | None, name: str,
                 evidence: list[str]) -> int:
    """Latent side at the training resolution: stored pos_embed, config.json, file name, else 128."""
    if "pos_embed" in rel:
        tokens = rel["pos_embed"][-2]
        side = math.isqrt(tokens)
        if side * side == tokens:
            evidence.append(f"sample_size {side * patch}: stored pos_embed has {tokens} = {side}^2 tokens")
            return side * patch
        evidence.append(f"stored pos_embed has {tokens} tokens (not a square); ignored")
    if diffusers_config and "sample_size" in diffusers_config:
        size = int(diffusers_config["sample_size"])
        evidence.append(f"sample_size {size} from config.json")
        return size
    if diffusers_config is not None:
        evidence.append("sample_size 128: diffusers default (config.json has no sample_size)")
        return 128
    match = _SIZE_IN_NAME.search(_name_hint(name))
    if match and not micro:
        text = match.group(1) or match.group(2)
        size = _SIZE_FROM_NAME[text]
        evidence.append(f"sample_size {size}: '{text}' in the file name (the weights cannot tell)")
        return size
    why = "micro-conditions (α-1024-MS)" if micro else "GUESS, no pos_embed or config.json; the most common release"
    evidence.append(f"sample_size 128 (1024 px): {why}")
    return 128


def _pe_interpolation(sample_size: int, family: str, diffusers_config: dict | None, evidence: list[str]) -> float:
    if diffusers_config is not None:
        scale = diffusers_config.get("interpolation_scale")
        if scale is not None:
            evidence.append(f"PE interpolation {float(scale):g} from config.json interpolation_scale")
            return float(scale)
        default = float(max(sample_size // 64, 1))
        evidence.append(f"PE interpolation {default:g}: diffusers default max(sample_size // 64, 1)")
        return default
    value = pe_interpolation_for(sample_size, family)
    evidence.append(f"PE interpolation {value:g} for a {family} model trained at {sample_size * 8} px")
    return value


def _kv_compress(shapes: Shapes) -> tuple[tuple[int, ...], int]:
    layers = sorted(int(m.group(1)) for k in shapes if k.endswith(".attn.sr.weight") and (m := _BLOCK.match(k)))
    if not layers:
        return (), 1
    return tuple(layers), int(shapes[f"blocks.{layers[0]}.attn.sr.weight"][-1])


def _require(name: str, shapes: Shapes, *keys: str) -> None:
    missing = [k for k in keys if k not in shapes]
    if missing:
        raise CheckpointError(f"{name}: PixArt weights are incomplete, missing {format_keys(missing)}; "
                              "the file is damaged or was saved partially. Re-download or re-convert it.")


def _config_from_shapes(name: str, shapes: Shapes, rel: Shapes, diffusers_config: dict | None,
                        model_index: dict | None, vae_config: dict | None,
                        evidence: list[str]) -> PixArtConfig:
    if any(".mlp.inverted_conv." in k for k in shapes):  # Sana shares PixArt's top-level names
        raise _not_pixart(name, shapes.keys())
    blocks = {int(m.group(1)) for k in shapes if (m := _BLOCK.match(k))}
    depth = max(blocks, default=-1) + 1
    if blocks != set(range(depth)) or not blocks:
        raise CheckpointError(f"{name}: transformer blocks {sorted(set(range(depth)) - blocks) or 'all'} are "
                              f"missing (found {len(blocks)} of {depth}); the file is damaged.")
    _require(name, shapes, "t_block.1.weight", "x_embedder.proj.weight", "y_embedder.y_proj.fc1.weight",
             "final_layer.linear.weight", "blocks.0.mlp.fc1.weight")
    hidden = shapes["t_block.1.weight"][1]
    _, in_channels, patch, _ = shapes["x_embedder.proj.weight"]
    out_channels = shapes["final_layer.linear.weight"][0] // (patch * patch)
    micro = "csize_embedder.mlp.0.weight" in shapes or "ar_embedder.mlp.0.weight" in shapes
    null_rows = shapes["y_embedder.y_embedding"][0] if "y_embedder.y_embedding" in shapes else None
    evidence.append(f"depth {depth}, width {hidden}, patch {patch}, {in_channels}->{out_channels} channels"
                    f"{' (learned sigma)' if out_channels == 2 * in_channels else ''}")
    if micro:
        evidence.append("micro-conditions: csize/ar (resolution/aspect-ratio) embedders present")
    family = _family(shapes, micro, model_index, vae_config, name, evidence)
    if null_rows is not None:
        max_length = null_rows
        evidence.append(f"{null_rows} T5 tokens from the null caption y_embedding")
    else:
        max_length = FAMILIES[family].max_length
        evidence.append(f"{max_length} T5 tokens: the {family} default (no y_embedding)")
    sample_size = _sample_size(rel, patch, micro, diffusers_config, name, evidence)
    kv_layers, kv_ratio = _kv_compress(shapes)
    try:
        return PixArtConfig(
            hidden_size=hidden, depth=depth, num_heads=_heads(hidden, diffusers_config, evidence),
            patch_size=patch, in_channels=in_channels, out_channels=out_channels,
            mlp_ratio=shapes["blocks.0.mlp.fc1.weight"][0] / hidden,
            caption_channels=shapes["y_embedder.y_proj.fc1.weight"][1], model_max_length=max_length,
            sample_size=sample_size,
            pe_interpolation=_pe_interpolation(sample_size, family, diffusers_config, evidence),
            micro_condition=micro, family=family, qk_norm="blocks.0.attn.q_norm.weight" in shapes,
            kv_compress_layers=kv_layers, kv_compress_ratio=kv_ratio, has_null_caption=null_rows is not None)
    except ValueError as err:
        raise CheckpointError(f"{name}: PixArt weights with an impossible configuration: {err}.") from err


def detect(weights: StateDictReader | Shapes, *, name: str | None = None, diffusers_config: dict | None = None,
           model_index: dict | None = None, vae_config: dict | None = None) -> Detection:
    """Detect the PixArt variant and key layout of `weights` (a reader or its key -> shape map).

    `diffusers_config` is the transformer's config.json, `model_index` the pipeline root's model_index.json and
    `vae_config` the pipeline's vae/config.json (only its scaling_factor is used, to tell α from Σ).
    Raises CheckpointError naming `name` for files that are not PixArt transformers.
    """
    weights_note = ""
    if isinstance(weights, StateDictReader):
        name = name or weights.name
        shapes = weights.shapes()
        weights_note = weights.weights_note
    else:
        shapes = dict(weights)
    name = name or "checkpoint"
    class_name = (diffusers_config or {}).get("_class_name")
    if class_name and "PixArt" not in class_name and class_name != "Transformer2DModel":
        raise _not_pixart(name, shapes.keys(), class_name)
    layout, prefix = _find_prefix(name, shapes)
    rel = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    ignored = [k for k in shapes if not k.startswith(prefix)]
    evidence = [f"{layout} keys" + (f" under prefix '{prefix}'" if prefix else "")]
    if weights_note:
        evidence.append(f"{weights_note}: a training checkpoint's EMA weights are the ones to sample with"
                        if weights_note.startswith("EMA") else weights_note)
    if layout == "controlnet-official":
        branch_prefix = prefix[: -len("base_model.")] + "controlnet."
        branch = {k[len(branch_prefix):].split(".")[0] for k in ignored if k.startswith(branch_prefix)}
        evidence.append(f"ControlNet branch with {len(branch)} control blocks ignored (base model loaded)")
    if ignored and layout != "controlnet-official":
        evidence.append(f"{len(ignored)} keys outside the prefix ignored (e.g. {ignored[0]!r})")
    sources, official_shapes = _official_sources(name, layout, rel)
    if "pos_embed" in rel:
        ignored.append(prefix + "pos_embed")
    config = _config_from_shapes(name, official_shapes, rel, diffusers_config, model_index, vae_config, evidence)
    full_sources = {k: tuple(prefix + p for p in parts) for k, parts in sources.items()}
    return Detection(config, layout, prefix, evidence, name, full_sources, ignored, weights_note)
