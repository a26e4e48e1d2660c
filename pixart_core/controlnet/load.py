"""Load a PixArt-δ ControlNet branch from any released layout, one tensor at a time.

Layouts:
- official combined `.pth` (`{'state_dict': {base_model.*, controlnet.*}}`, e.g. `PixArt-XL-2-1024-ControlNet.pth`
  from PixArt-alpha/PixArt-ControlNet on Hugging Face): the `base_model.*` half is skipped (`load_transformer`
  reads it);
- the branch alone with official keys (`controlnet.{i}.copied_block.*`, `controlnet.0.before_proj.*`,
  `controlnet.{i}.after_proj.*`), as `.pth` or `.safetensors`;
- diffusers' research layout (`PixArtControlNetAdapterModel` in diffusers'
  `examples/research_projects/pixart/controlnet_pixart_alpha.py`): `controlnet_blocks.{i}.transformer_block.*`
  (diffusers `BasicTransformerBlock` keys, fused into the official q/k/v), `controlnet_blocks.0.before_proj.*`,
  `controlnet_blocks.{i}.after_proj.*`; a folder with config.json (`num_layers`) and
  diffusion_pytorch_model.safetensors, or the single file.
Any key prefix (`module.`, `model.` ...) is accepted. The branch is built on the meta device and every tensor is read
straight into the target dtype and device.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint_io import StateDictReader
from ..errors import CheckpointError, format_keys
from ..pixart.convert import diffusers_block_sources
from ..pixart.detect import describe_non_pixart
from ..pixart.load import locate_weights
from .model import PixArtControlNet

log = logging.getLogger(__name__)

_OFFICIAL = re.compile(r"^(?P<prefix>(?:.*\.)?)controlnet\.(?P<index>\d+)\.(?P<rest>.+)$")
_DIFFUSERS = re.compile(r"^(?P<prefix>(?:.*\.)?)controlnet_blocks\.(?P<index>\d+)\.(?P<rest>.+)$")
_PROJECTIONS = ("before_proj.weight", "before_proj.bias", "after_proj.weight", "after_proj.bias")
_TRANSFORMER_ANCHORS = ("t_block.1.weight", "adaln_single.linear.weight")
_RELEASED_HEAD_DIM = 72  # every released XL/2 model: 1152 = 16 heads x 72
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass
class ControlNetPlan:
    """Where each official key of the branch comes from: {official key: file keys concatenated along dim 0}."""

    layout: str
    num_blocks: int
    sources: dict[str, tuple[str, ...]]
    ignored: list[str] = field(default_factory=list)


def _branch_keys(name: str, keys: list[str]) -> tuple[str, str, dict[int, dict[str, str]]]:
    """(layout, prefix, {block index: {key inside the block: file key}}) of the ControlNet branch in `keys`."""
    for layout, pattern in (("official", _OFFICIAL), ("diffusers", _DIFFUSERS)):
        matches = [(key, m) for key in keys if (m := pattern.match(key))]
        if matches:
            prefix = min((m.group("prefix") for _, m in matches), key=len)
            blocks: dict[int, dict[str, str]] = {}
            for key, m in matches:
                if m.group("prefix") == prefix:
                    blocks.setdefault(int(m.group("index")), {})[m.group("rest")] = key
            return layout, prefix, blocks
    if any(key.endswith(anchor) for key in keys for anchor in _TRANSFORMER_ANCHORS):
        raise CheckpointError(f"{name}: holds a PixArt transformer but no ControlNet branch (no 'controlnet.N.*' or "
                              "'controlnet_blocks.N.*' keys); load it as the base model and give the ControlNet "
                              "file (e.g. PixArt-XL-2-1024-ControlNet.pth) here.")
    hint = describe_non_pixart(keys)
    what = f"it looks like {hint}" if hint else f"its keys are {format_keys(keys) or 'none'}"
    raise CheckpointError(f"{name}: not a PixArt ControlNet ({what}).")


def _block_sources(name: str, layout: str, index: int, parts: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """{official key: file keys} for control block `index` from {key inside the block: file key}."""
    out = {f"controlnet.{index}.{rest}": (key,) for rest, key in parts.items() if rest in _PROJECTIONS}
    inner = "copied_block." if layout == "official" else "transformer_block."
    block = {rest[len(inner):]: key for rest, key in parts.items() if rest.startswith(inner)}
    stray = [key for rest, key in parts.items() if rest not in _PROJECTIONS and not rest.startswith(inner)]
    if stray:
        raise CheckpointError(f"{name}: unknown keys in ControlNet block {index}: {format_keys(stray)}; "
                              "not a PixArt-δ ControlNet file.")
    if layout == "official":
        out.update({f"controlnet.{index}.copied_block.{rest}": (key,) for rest, key in block.items()})
        return out
    try:
        sources = diffusers_block_sources(block)
    except ValueError as err:
        raise CheckpointError(f"{name}: ControlNet block {index} (diffusers layout): {err}; the file is damaged "
                              "or not a PixArt ControlNet.") from err
    out.update({f"controlnet.{index}.copied_block.{official}": tuple(block[p] for p in pieces)
                for official, pieces in sources.items()})
    return out


def plan_controlnet(name: str, keys: list[str], config: dict | None = None) -> ControlNetPlan:
    """Read the layout and block count from the key names (and config.json's `num_layers`, if given)."""
    layout, prefix, blocks = _branch_keys(name, keys)
    base = [k for k in keys if k.startswith(prefix + "base_model.")]
    matched = {key for parts in blocks.values() for key in parts.values()}
    unknown = [k for k in keys if k not in matched and not k.startswith(prefix + "base_model.")]
    if unknown:
        raise CheckpointError(f"{name}: unknown keys next to the ControlNet branch: {format_keys(unknown)}; "
                              "not a PixArt-δ ControlNet file.")
    num_blocks = max(blocks) + 1
    absent = sorted(set(range(num_blocks)) - set(blocks))
    if absent:
        raise CheckpointError(f"{name}: ControlNet blocks {absent} are missing (found {len(blocks)} of "
                              f"{num_blocks}); the file is truncated or damaged. Re-download it.")
    declared = (config or {}).get("num_layers")
    if declared is not None and int(declared) != num_blocks:
        raise CheckpointError(f"{name}: config.json says {declared} ControlNet blocks but the weights hold "
                              f"{num_blocks}; the file is truncated or damaged. Re-download it.")
    sources: dict[str, tuple[str, ...]] = {}
    for index in sorted(blocks):
        sources.update(_block_sources(name, layout, index, blocks[index]))
    if layout == "official" and base:
        layout = "official combined"
    return ControlNetPlan(layout, num_blocks, sources, base)


def _shape(reader: StateDictReader, parts: tuple[str, ...]) -> tuple[int, ...]:
    shapes = [reader.info(p).shape for p in parts]
    return (sum(s[0] for s in shapes), *shapes[0][1:]) if len(shapes) > 1 else tuple(shapes[0])


def _heads(hidden: int, config: dict | None) -> int:
    if config and "num_attention_heads" in config:
        return int(config["num_attention_heads"])
    return hidden // _RELEASED_HEAD_DIM if hidden % _RELEASED_HEAD_DIM == 0 else 1


def _build(name: str, plan: ControlNetPlan, reader: StateDictReader, config: dict | None,
           dtype: torch.dtype | None) -> PixArtControlNet:
    """The meta-device branch whose shapes the plan describes."""
    required = ("controlnet.0.after_proj.weight", "controlnet.0.copied_block.mlp.fc1.weight")
    missing = [k for k in required if k not in plan.sources]
    if missing:
        raise CheckpointError(f"{name}: the ControlNet weights are incomplete, missing {format_keys(missing)}; "
                              "the file is truncated or damaged. Re-download it.")
    hidden = _shape(reader, plan.sources[required[0]])[0]
    stored = reader.info(plan.sources[required[0]][0]).dtype
    dtype = dtype or (stored if stored in _FLOAT_DTYPES else torch.float32)
    try:
        return PixArtControlNet(hidden, _heads(hidden, config), plan.num_blocks,
                                _shape(reader, plan.sources[required[1]])[0] / hidden,
                                qk_norm="controlnet.0.copied_block.attn.q_norm.weight" in plan.sources,
                                source=name, layout=plan.layout, dtype=dtype, device="meta")
    except ValueError as err:
        raise CheckpointError(f"{name}: ControlNet weights with an impossible shape: {err}.") from err


def _check_keys(name: str, plan: ControlNetPlan, reader: StateDictReader, expected: dict[str, torch.Tensor]) -> None:
    missing, unexpected = expected.keys() - plan.sources.keys(), plan.sources.keys() - expected.keys()
    wrong = [f"{k!r} file {_shape(reader, plan.sources[k])} vs {tuple(expected[k].shape)}"
             for k in sorted(expected.keys() & plan.sources.keys())
             if _shape(reader, plan.sources[k]) != tuple(expected[k].shape)]
    problems = ([f"missing {format_keys(missing)}"] if missing else []) + \
               ([f"unexpected {format_keys(unexpected)}"] if unexpected else []) + \
               ([f"wrong shapes {'; '.join(wrong[:3])}"] if wrong else [])
    if problems:
        raise CheckpointError(f"{name}: the ControlNet weights do not fit a {plan.num_blocks}-block PixArt "
                              f"ControlNet ({plan.layout} layout): {'; '.join(problems)}. The file is truncated "
                              "or damaged; re-download it.")


def load_controlnet(path: str | Path, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> PixArtControlNet:
    """Load a PixArt-δ ControlNet branch from `path` (any layout above) as an eval `PixArtControlNet`.

    `dtype=None` keeps the file's float dtype; `device=None` is the CPU. Bad files raise `CheckpointError`
    naming the file: a transformer without a branch, missing or truncated blocks, unknown keys."""
    located = locate_weights(path)
    name = located.name
    device = torch.device(device or "cpu")
    with StateDictReader(located.files) as reader:
        plan = plan_controlnet(name, reader.keys(), located.diffusers_config)
        net = _build(name, plan, reader, located.diffusers_config, dtype)
        expected = net.state_dict()
        _check_keys(name, plan, reader, expected)
        state = {}
        for key, target in expected.items():
            tensor = torch.empty(target.shape, dtype=target.dtype, device=device)  # [sum of piece rows, ...]
            row = 0
            for part in plan.sources[key]:  # diffusers q/k/v pieces go straight into row slices
                rows = reader.info(part).shape[0]
                reader.read_into(part, tensor[row:row + rows])
                row += rows
            state[key] = tensor
        net.weights_note = reader.weights_note
    net.load_state_dict(state, strict=True, assign=True)
    log.info("%s: %s", name, net.summary)
    return net.eval().requires_grad_(False)
