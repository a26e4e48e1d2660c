"""Tiny random T5 encoders (real 32128-token vocabulary, width 32) written in every layout the loader reads.

For tests and `python -m pixart_core make-tiny`: seeded and deterministic, no transformers needed; the
config.json files carry the fields transformers' T5Config reads, so T5EncoderModel can load the folders.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..checkpoint_io import save_safetensors, save_torch, write_json
from .cast_linear import quantize_float8
from .config import T5Config

TINY_T5_CONFIG = T5Config(vocab_size=32128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                          relative_attention_num_buckets=32, relative_attention_max_distance=128)
# T5 v1.0 style (ReLU feed-forward), with heads * d_kv (64) != d_model (32) as in T5 v1.0 11B.
TINY_T5_V1_0_CONFIG = TINY_T5_CONFIG.replace(d_kv=16, feed_forward_proj="relu")
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
COMFY_PREFIX = "text_encoders.t5xxl.transformer."


def tiny_t5_state_dict(config: T5Config = TINY_T5_CONFIG, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 weights under Hugging Face T5EncoderModel names (`shared.weight`, `encoder.*`)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    d, inner, ff = config.d_model, config.inner_dim, config.d_ff
    state = {"shared.weight": randn(config.vocab_size, d, std=1.0)}
    for i in range(config.num_layers):
        attn = f"encoder.block.{i}.layer.0."
        for name, shape in (("q", (inner, d)), ("k", (inner, d)), ("v", (inner, d)), ("o", (d, inner))):
            state[f"{attn}SelfAttention.{name}.weight"] = randn(*shape, std=shape[1] ** -0.5)
        if i == 0:
            state[f"{attn}SelfAttention.relative_attention_bias.weight"] = randn(
                config.relative_attention_num_buckets, config.num_heads, std=0.5)
        state[f"{attn}layer_norm.weight"] = 1.0 + randn(d, std=0.1)
        mlp = f"encoder.block.{i}.layer.1."
        for name in (("wi_0", "wi_1") if config.is_gated_act else ("wi",)):
            state[f"{mlp}DenseReluDense.{name}.weight"] = randn(ff, d, std=d ** -0.5)
        state[f"{mlp}DenseReluDense.wo.weight"] = randn(d, ff, std=ff ** -0.5)
        state[f"{mlp}layer_norm.weight"] = 1.0 + randn(d, std=0.1)
    state["encoder.final_layer_norm.weight"] = 1.0 + randn(d, std=0.1)
    return state


def _is_linear(key: str) -> bool:
    return key.endswith(("q.weight", "k.weight", "v.weight", "o.weight", "wi.weight", "wi_0.weight",
                         "wi_1.weight", "wo.weight"))


def copy_tokenizer(tokenizer_dir: Path | None, folder: Path) -> None:
    if tokenizer_dir is None:
        return
    for name in TOKENIZER_FILES:
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


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype, rest: torch.dtype | None = None) -> dict:
    """Linear weights to `dtype`, other tensors to `rest` (default: dtype)."""
    return {k: v.to(dtype if _is_linear(k) else (rest or dtype)) for k, v in state.items()}


def _scaled_fp8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI "scaled fp8": W ≈ W_fp8 * scale_weight per Linear, a `scaled_fp8` marker, the rest in float16."""
    out: dict[str, torch.Tensor] = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, value in state.items():
        if _is_linear(key):
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
        "comfy_fp32": ("t5xxl_tiny_fp32.safetensors", _cast(state, torch.float32)),
        "comfy_fp16": ("t5xxl_tiny_fp16.safetensors", _cast(state, torch.float16)),
        "comfy_bf16": ("t5xxl_tiny_bf16.safetensors", _cast(state, torch.bfloat16)),
        "comfy_fp8_e4m3fn": ("t5xxl_tiny_fp8_e4m3fn.safetensors", _cast(state, torch.float8_e4m3fn, torch.float16)),
        "comfy_fp8_e4m3fn_scaled": ("t5xxl_tiny_fp8_e4m3fn_scaled.safetensors", _scaled_fp8(state)),
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
