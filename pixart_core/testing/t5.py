"""Tiny random T5 encoders (real 32128-token vocabulary, width 32) written in every layout the loader reads.

Seeded and deterministic, no transformers needed; key names and shapes are read from our `T5Encoder` built on
the meta device (its module names are the Hugging Face T5EncoderModel keys), and the config.json files carry
the fields transformers' T5Config reads, so T5EncoderModel can load the folders.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from .files import save_safetensors, save_torch, write_json
from ..t5.cast_linear import CastLinear, quantize_float8
from ..t5.config import T5Config
from ..t5.model import T5Encoder

TINY_T5_CONFIG = T5Config(vocab_size=32128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                          relative_attention_num_buckets=32, relative_attention_max_distance=128)
# T5 v1.0 style (ReLU feed-forward), with heads * d_kv (64) != d_model (32) as in T5 v1.0 11B.
TINY_T5_V1_0_CONFIG = TINY_T5_CONFIG.replace(d_kv=16, feed_forward_proj="relu")
# files of a tokenizer folder copied next to the tiny weights
TOKENIZER_FOLDER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json", "special_tokens_map.json",
                          "added_tokens.json")
COMFY_PREFIX = "text_encoders.t5xxl.transformer."


def _meta_encoder(config: T5Config) -> T5Encoder:
    return T5Encoder(config, device="meta")


def linear_weight_keys(config: T5Config) -> set[str]:
    """Keys of the Linear weights (q, k, v, o, wi*, wo): the tensors ComfyUI files store in fp8."""
    return {f"{name}.weight" for name, module in _meta_encoder(config).named_modules()
            if isinstance(module, CastLinear)}


def tiny_t5_state_dict(config: T5Config = TINY_T5_CONFIG, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 weights under Hugging Face T5EncoderModel names (`shared.weight`, `encoder.*`).

    Standard deviations: embedding 1, Linear weights 1/sqrt(fan_in), relative-position bias 0.5; norms 1 + 0.1 N(0, 1).
    """
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in _meta_encoder(config).state_dict().items():
        noise = torch.randn(value.shape, generator=gen)  # [*shape]
        if key.endswith("layer_norm.weight"):
            state[key] = 1.0 + 0.1 * noise
        elif key.endswith("relative_attention_bias.weight"):
            state[key] = 0.5 * noise
        elif key == "shared.weight":
            state[key] = noise
        else:
            state[key] = noise * value.shape[1] ** -0.5
    return state


def copy_tokenizer(tokenizer_dir: Path | None, folder: Path) -> None:
    """Copy the tokenizer files of `tokenizer_dir` (if given) into `folder`."""
    if tokenizer_dir is None:
        return
    for name in TOKENIZER_FOLDER_FILES:
        if (Path(tokenizer_dir) / name).is_file():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{name}.tmp{os.getpid()}"
            shutil.copyfile(Path(tokenizer_dir) / name, tmp)
            os.replace(tmp, folder / name)


def write_hf_folder(folder: Path, config: T5Config, state: dict[str, torch.Tensor]) -> Path:
    write_json(config.to_dict(), folder / "config.json")
    save_safetensors(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _write_sharded(folder: Path, config: T5Config, state: dict[str, torch.Tensor], bin_format: bool) -> Path:
    """Two shards plus index; the .bin form is a full T5ForConditionalGeneration (decoder keys too)."""
    stem, suffix = ("pytorch_model", "bin") if bin_format else ("model", "safetensors")
    keys = list(state)
    shards = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for n, shard in enumerate(shards, start=1):
        filename = f"{stem}-{n:05d}-of-{len(shards):05d}.{suffix}"
        tensors = {k: state[k].clone() for k in shard}
        if bin_format and n == len(shards):  # decoder and LM head: present in full checkpoints, ignored
            tensors["decoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(config.inner_dim, config.d_model)
            tensors["decoder.final_layer_norm.weight"] = torch.ones(config.d_model)
            tensors["lm_head.weight"] = torch.zeros(config.vocab_size, config.d_model)
        if bin_format:
            save_torch(tensors, folder / filename)
        else:
            save_safetensors(tensors, folder / filename, metadata={"format": "pt"})
        weight_map.update({k: filename for k in tensors})
    total = sum(t.numel() * t.element_size() for t in state.values())
    write_json({"metadata": {"total_size": total}, "weight_map": weight_map}, folder / f"{stem}.{suffix}.index.json")
    config_dict = config.to_dict()
    if bin_format:
        config_dict["architectures"] = ["T5ForConditionalGeneration"]
    write_json(config_dict, folder / "config.json")
    return folder


def _cast(state: dict[str, torch.Tensor], linears: set[str], dtype: torch.dtype,
          rest: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Linear weights to `dtype`, other tensors to `rest` (default: dtype)."""
    return {k: v.to(dtype if k in linears else (rest or dtype)) for k, v in state.items()}


def _scaled_fp8(state: dict[str, torch.Tensor], linears: set[str]) -> dict[str, torch.Tensor]:
    """ComfyUI "scaled fp8": W ≈ W_fp8 * scale_weight per Linear, a `scaled_fp8` marker, the rest in float16."""
    out: dict[str, torch.Tensor] = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, value in state.items():
        if key in linears:
            out[key], out[key[: -len("weight")] + "scale_weight"] = quantize_float8(value, torch.float8_e4m3fn)
            if ".SelfAttention.q." in key:  # input scales exist in some files; they do not change the result
                out[key[: -len("weight")] + "scale_input"] = torch.ones(())
        else:
            out[key] = value.half()
    return out


def write_tiny_t5(out_dir: str | Path, tokenizer_dir: str | Path | None = None, seed: int = 0) -> dict[str, Path]:
    """Write tiny T5 encoders in every supported layout under `out_dir`; returns {layout name: path}.

    Names: hf, hf_sharded, hf_sharded_bin, diffusers_root, comfy_fp32, comfy_fp16, comfy_bf16,
    comfy_fp8_e4m3fn, comfy_fp8_e4m3fn_scaled, comfy_prefixed, hf_v1_0, comfy_v1_0. The tokenizer files
    (tokenizer.json / spiece.model ...) are copied into hf/ and diffusers_root/tokenizer/ when given.
    """
    out = Path(out_dir)
    state = tiny_t5_state_dict(TINY_T5_CONFIG, seed)
    linears = linear_weight_keys(TINY_T5_CONFIG)
    paths: dict[str, Path] = {}
    paths["hf"] = write_hf_folder(out / "t5_hf", TINY_T5_CONFIG, state)
    copy_tokenizer(tokenizer_dir, paths["hf"])
    paths["hf_sharded"] = _write_sharded(out / "t5_hf_sharded", TINY_T5_CONFIG, state, bin_format=False)
    paths["hf_sharded_bin"] = _write_sharded(out / "t5_hf_sharded_bin", TINY_T5_CONFIG, state, bin_format=True)

    root = out / "t5_pipeline"
    write_json({"_class_name": "PixArtSigmaPipeline", "text_encoder": ["transformers", "T5EncoderModel"],
                "tokenizer": ["transformers", "T5Tokenizer"]}, root / "model_index.json")
    write_hf_folder(root / "text_encoder", TINY_T5_CONFIG, state)
    copy_tokenizer(tokenizer_dir, root / "tokenizer")
    paths["diffusers_root"] = root

    files = out / "text_encoders"
    variants = {
        "comfy_fp32": ("t5xxl_tiny_fp32.safetensors", _cast(state, linears, torch.float32)),
        "comfy_fp16": ("t5xxl_tiny_fp16.safetensors", _cast(state, linears, torch.float16)),
        "comfy_bf16": ("t5xxl_tiny_bf16.safetensors", _cast(state, linears, torch.bfloat16)),
        "comfy_fp8_e4m3fn": ("t5xxl_tiny_fp8_e4m3fn.safetensors",
                             _cast(state, linears, torch.float8_e4m3fn, torch.float16)),
        "comfy_fp8_e4m3fn_scaled": ("t5xxl_tiny_fp8_e4m3fn_scaled.safetensors", _scaled_fp8(state, linears)),
    }
    prefixed = {COMFY_PREFIX + ("encoder.embed_tokens.weight" if k == "shared.weight" else k): v.half()
                for k, v in state.items()}
    prefixed["text_encoders.clip_l.transformer.text_model.final_layer_norm.weight"] = torch.ones(8)  # another model
    variants["comfy_prefixed"] = ("t5xxl_tiny_prefixed_fp16.safetensors", prefixed)
    for name, (filename, tensors) in variants.items():
        save_safetensors(tensors, files / filename)
        paths[name] = files / filename

    state_v1_0 = tiny_t5_state_dict(TINY_T5_V1_0_CONFIG, seed + 1)
    paths["hf_v1_0"] = write_hf_folder(out / "t5_hf_v1_0", TINY_T5_V1_0_CONFIG, state_v1_0)
    save_safetensors(state_v1_0, files / "t5_tiny_v1_0_fp32.safetensors")
    paths["comfy_v1_0"] = files / "t5_tiny_v1_0_fp32.safetensors"
    return paths
