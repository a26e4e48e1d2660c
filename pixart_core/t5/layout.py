"""Find the T5 encoder inside a path: which files, which keys, which config.

Accepted layouts:
1. Hugging Face T5EncoderModel / T5ForConditionalGeneration folder: config.json + model.safetensors,
   model-0000N-of-0000M.safetensors + index, pytorch_model.bin, or pytorch_model-0000N-of-0000M.bin + index
   (decoder.* and lm_head.* keys are ignored).
2. Diffusers pipeline root: its `text_encoder/` folder.
3. Single files (ComfyUI models/text_encoders: t5xxl_fp16/fp32/bf16/fp8_e4m3fn[_scaled].safetensors) with HF key
   names under any prefix (e.g. `text_encoders.t5xxl.transformer.`); the config is inferred from shapes
   (a T5 config.json beside the file is used when its shapes agree).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint_io import StateDictReader, read_json, weight_files
from ..errors import CheckpointError
from .config import T5Config

_PROBE = "block.0.layer.0.SelfAttention.q.weight"
_SHARD = re.compile(r"-\d{5}-of-\d{5}\.")
_SCALE_SUFFIXES = (".scale_weight", ".scale_input")


@dataclass
class T5Source:
    """Weight files of one T5 encoder, its config.json (when present) and a name for messages."""

    files: list[Path]
    config: dict | None
    name: str
    config_beside_file: bool = False  # config.json found next to a single weight file: used only if it fits


@dataclass
class T5KeyLayout:
    """Where our parameter names live in the source: `source_key(ours)` and the per-weight fp8 scales."""

    stack_prefix: str          # source prefix of our "encoder." (e.g. "encoder." or "te.encoder.")
    embedding_key: str         # source key of our "shared.weight"
    scale_keys: dict[str, str]  # our Linear weight name -> source key of its float8 scale_weight

    def source_key(self, ours: str) -> str:
        if ours == "shared.weight":
            return self.embedding_key
        return self.stack_prefix + ours[len("encoder."):]


def _is_t5_config(data: dict) -> bool:
    archs = " ".join(data.get("architectures") or [])
    return data.get("model_type") in ("t5", "mt5") or ("T5" in archs and "UMT5" not in archs)


def _read_config(path: Path) -> dict | None:
    if not path.is_file():
        return None
    data = read_json(path)
    return data if isinstance(data, dict) else None


def resolve_source(path: str | Path) -> T5Source:
    """The weight files and config of the T5 encoder at `path` (file, HF folder or diffusers root)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder.")
    if path.is_file():
        try:
            config = _read_config(path.parent / "config.json")
        except CheckpointError:  # an unrelated, broken config.json beside a single file
            config = None
        config = config if config and _is_t5_config(config) else None
        if _SHARD.search(path.name) and any(path.parent.glob("*.index.json")):
            return T5Source(weight_files(path.parent), config, str(path.parent))  # one shard given: load all
        return T5Source([path], config, str(path), config_beside_file=config is not None)
    config = _read_config(path / "config.json")
    if config is not None and _is_t5_config(config):
        return T5Source(_model_files(path), config, str(path))
    if (path / "text_encoder").is_dir():
        return resolve_source(path / "text_encoder")
    if (path / "model_index.json").is_file():
        raise CheckpointError(f"{path}: this diffusers pipeline has no text_encoder/ folder; load the T5 weights "
                              f"separately (e.g. models/text_encoders/t5xxl_fp16.safetensors).")
    if config is not None:
        kind = config.get("model_type") or config.get("_class_name") or (config.get("architectures") or ["?"])[0]
        raise CheckpointError(f"{path}: config.json describes {kind!r}, not a T5 encoder; choose the T5 text "
                              f"encoder folder (text_encoder/ of a PixArt pipeline, or t5-v1_1-xxl).")
    return T5Source(weight_files(path), None, str(path))


def _model_files(folder: Path) -> list[Path]:
    try:
        return weight_files(folder, ("model", "pytorch_model"))
    except CheckpointError:
        return weight_files(folder)


def _not_t5_hint(keys: list[str]) -> str:
    text = " ".join(keys[:200])
    if "blocks.0.attn.qkv" in text or "transformer_blocks.0" in text or "adaln_single" in text:
        return " It looks like a PixArt transformer (DiT); load it with the PixArt model loader."
    if "decoder.up" in text or "encoder.down" in text or "quant_conv" in text:
        return " It looks like a VAE; load it with the VAE loader."
    return ""


def find_layout(reader: StateDictReader, name: str) -> T5KeyLayout:
    """Locate the encoder stack and embedding in the reader's keys; CheckpointError when it is not a T5."""
    keys = reader.keys()
    stacks = [k[: -len(_PROBE)] for k in keys if k.endswith(_PROBE)]
    stacks = [s for s in stacks if "decoder" not in s]
    if not stacks:
        sample = ", ".join(keys[:3])
        raise CheckpointError(f"{name}: not a T5 text encoder (no '...encoder.{_PROBE}' key; first keys: {sample})."
                              f"{_not_t5_hint(keys)} Choose a T5-v1.1-XXL file such as t5xxl_fp16.safetensors.")
    stack = min(stacks, key=len)
    root = stack[: -len("encoder.")] if stack.endswith("encoder.") else stack
    for candidate in (root + "shared.weight", stack + "embed_tokens.weight"):
        if candidate in reader:
            embedding = candidate
            break
    else:
        raise CheckpointError(f"{name}: T5 encoder without a token embedding (neither {root}shared.weight nor "
                              f"{stack}embed_tokens.weight); the file is incomplete, re-download it.")
    scales = {}
    for key in keys:
        if key.startswith(stack) and key.endswith(".scale_weight"):
            scales["encoder." + key[len(stack): -len(".scale_weight")] + ".weight"] = key
    return T5KeyLayout(stack, embedding, scales)


def check_unexpected(reader: StateDictReader, layout: T5KeyLayout, expected: set[str], name: str) -> None:
    """Keys under the encoder prefix that the model does not have mean another architecture (e.g. UMT5)."""
    known = {layout.source_key(k) for k in expected} | {layout.embedding_key} | set(layout.scale_keys.values())
    extra = [k for k in reader.keys() if k.startswith(layout.stack_prefix) and k not in known
             and not k.endswith(_SCALE_SUFFIXES) and not k.endswith("embed_tokens.weight")]
    if extra:
        hint = (" Each block has its own relative_attention_bias: this is UMT5, which is not supported."
                if any("block.1.layer.0.SelfAttention.relative_attention_bias" in k for k in extra) else "")
        raise CheckpointError(f"{name}: unexpected T5 keys {extra[:4]}{' ...' if len(extra) > 4 else ''}.{hint}")


def infer_config(reader: StateDictReader, layout: T5KeyLayout, name: str) -> T5Config:
    """T5 hyper-parameters from tensor shapes (files without config.json).

    heads and buckets come from relative_attention_bias [buckets, heads]; d_kv = q rows / heads; the FF kind
    from wi_0 (gated GELU, v1.1) or wi (ReLU, v1.0). max_distance (128) and eps (1e-6) cannot be read from
    shapes and take the T5 values.
    """
    stack = layout.stack_prefix

    def shape(suffix: str) -> tuple[int, ...]:
        key = stack + suffix
        if key not in reader:
            raise CheckpointError(f"{name}: T5 key {key!r} is missing; the file is incomplete or not a T5 encoder.")
        return reader.info(key).shape

    vocab, d_model = reader.info(layout.embedding_key).shape
    buckets, heads = shape("block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    inner = shape("block.0.layer.0.SelfAttention.q.weight")[0]
    blocks = {int(m.group(1)) for k in reader.keys() if k.startswith(stack)
              for m in [re.match(r"block\.(\d+)\.", k[len(stack):])] if m}
    num_layers = max(blocks) + 1
    if blocks != set(range(num_layers)):
        raise CheckpointError(f"{name}: T5 blocks {sorted(set(range(num_layers)) - blocks)} are missing.")
    gated = stack + "block.0.layer.1.DenseReluDense.wi_0.weight" in reader
    d_ff = shape("block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight")[0]
    if inner % heads:
        raise CheckpointError(f"{name}: q projection rows {inner} are not a multiple of the {heads} heads.")
    return T5Config(vocab_size=vocab, d_model=d_model, d_kv=inner // heads, d_ff=d_ff, num_layers=num_layers,
                    num_heads=heads, relative_attention_num_buckets=buckets,
                    feed_forward_proj="gated-gelu" if gated else "relu")


def config_from_json(data: dict, name: str) -> T5Config:
    try:
        return T5Config.from_dict(data)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{name}: config.json is not a usable T5 config ({err}).") from err


_SHAPE_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets",
                 "is_gated_act")


def choose_config(reader: StateDictReader, layout: T5KeyLayout, source: T5Source) -> T5Config:
    """config.json of a folder; for a single file, shapes decide and a config.json beside it only adds the
    fields shapes cannot tell (max distance, epsilon, activation) when its shapes agree."""
    if source.config is not None and not source.config_beside_file:
        return config_from_json(source.config, source.name)
    inferred = infer_config(reader, layout, source.name)
    if source.config is None:
        return inferred
    try:
        declared = T5Config.from_dict(source.config)
    except (TypeError, ValueError):
        return inferred
    same = all(getattr(declared, f) == getattr(inferred, f) for f in _SHAPE_FIELDS)
    return declared if same else inferred
